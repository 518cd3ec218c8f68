"""Issue 13 parts 2 and 6: no lost results when two runs write one output; no tracebacks.

Races are simulated by creating the output while the writer is working (inside the body of the
atomic writer, or from a monkeypatched step of ``tabst compare``); other processes (a live lock
holder, live / dead pids of temp files) are real subprocesses. Tests may run as root, where
``chmod`` does not block writes, so "unwritable" is a path under a regular file or under /proc,
and a full disk is a monkeypatched ``OSError(ENOSPC)``.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import typer
from conftest import write_tiny_store
from tabst_cli._common import user_errors
from tabst_cli.app import app
from typer.testing import CliRunner

from tabst.errors import TabstError
from tabst.outputs import atomic_output, lock_path, output_lock, prepare_output
from tabst.store import create_store, open_store
from tabst.util import atomic_dir

RACE = "was created by another process while this run was working"
ENOSPC_H5 = ("Can't write data (file write failed: time = Mon, filename = '{}', file descriptor "
             "= 7, errno = 28, error message = 'No space left on device', buf = 0x1, total write "
             "size = 4096, bytes this sub-write = 4096, offset = 0)")


def cli(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def no_traceback(r):
    text = r.output  # stdout and stderr
    assert "Traceback" not in text, text
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return " ".join(text.split())


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def sleeper():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("hard")
    return write_tiny_store(d / "tiny.h5", n_samples=2, cells_per_sample=20, n_genes=4, emb_dim=6)


def hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------ two writers, one output
@pytest.fixture(params=["renameat2", "fallback"])
def rename_kind(request, monkeypatch):
    """Run a race test with renameat2(RENAME_NOREPLACE) and with the link / rename fallback."""
    if request.param == "fallback":
        import tabst.outputs as outputs

        monkeypatch.setattr(outputs, "_renameat2_noreplace", lambda src, dst: False)
    return request.param


def test_file_created_meanwhile_is_not_replaced_and_results_are_kept(tmp_path, rename_kind):
    out = tmp_path / "sub.csv"
    with pytest.raises(TabstError, match=RACE) as e:
        with atomic_output(out, "file") as tmp:
            tmp.write_text("mine")
            out.write_text("theirs")  # the other writer finished first
    assert out.read_text() == "theirs"
    kept = tmp_path / f"sub.conflict-{os.getpid()}.csv"
    assert kept.read_text() == "mine" and str(kept) in str(e.value)
    assert "--force" in str(e.value) and hidden(tmp_path) == []


@pytest.mark.parametrize("theirs", ["empty", "full"])
def test_folder_created_meanwhile_is_not_replaced(tmp_path, theirs, rename_kind):
    out = tmp_path / "run"
    with pytest.raises(TabstError, match=RACE):
        with atomic_dir(out, force=False) as tmp:
            (tmp / "leaderboard.csv").write_text("mine")
            out.mkdir()  # an empty folder is refused too (plain rename would replace it)
            if theirs == "full":
                (out / "leaderboard.csv").write_text("theirs")
    assert sorted(os.listdir(out)) == ([] if theirs == "empty" else ["leaderboard.csv"])
    assert (tmp_path / f"run.conflict-{os.getpid()}" / "leaderboard.csv").read_text() == "mine"
    assert hidden(tmp_path) == []


def test_store_created_meanwhile_survives_and_force_replaces(tmp_path, rename_kind):
    out = tmp_path / "s.h5"
    with pytest.raises(TabstError, match=RACE):
        with create_store(out) as f:
            f.attrs["who"] = "second"
            with h5py.File(out, "w") as g:
                g.attrs["who"] = "first"
    with h5py.File(out, "r") as g:
        assert g.attrs["who"] == "first"
    with create_store(out, force=True) as f:  # --force keeps its meaning
        f.attrs["who"] = "forced"
    with open_store(out) as f:
        assert f.attrs["who"] == "forced"
    with atomic_output(tmp_path / "x.txt", force=True) as tmp:  # appeared meanwhile + force
        tmp.write_text("new")
        (tmp_path / "x.txt").write_text("old")
    assert (tmp_path / "x.txt").read_text() == "new"


def test_compare_race_keeps_first_run(tmp_path, store, monkeypatch):
    import tabst.compare as cmp

    out = tmp_path / "run"
    real = cmp._run_record

    def other_run_finishes_first(*a, **k):
        out.mkdir()
        (out / "leaderboard.csv").write_text("first run")
        return real(*a, **k)

    monkeypatch.setattr(cmp, "_run_record", other_run_finishes_first)
    cfg = {"models": ["mean"], "refit_all": False, "save_fold_models": False}
    with pytest.raises(TabstError, match=RACE):
        cmp.run_compare(store, cfg, out, render=False, show_progress=False)
    assert os.listdir(out) == ["leaderboard.csv"]
    assert (out / "leaderboard.csv").read_text() == "first run"
    assert (tmp_path / f"run.conflict-{os.getpid()}" / "run.json").is_file()


def test_second_writer_of_a_locked_output_stops_at_once(tmp_path, sleeper):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tabst.outputs import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)",
         str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TabstError, match=f"being written by another tabst process \\(pid "
                                             f"{holder.pid}"):
            with atomic_dir(out, force=True):
                pass
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------------ leftovers of killed runs
def test_stale_temp_files_are_cleaned_and_reported_live_ones_kept(tmp_path, sleeper, capsys):
    out = tmp_path / "s.h5"
    dead = dead_pid()
    stale_file = tmp_path / f".s.h5.tmp-{dead}"
    stale_file.write_bytes(b"half")
    legacy = tmp_path / ".s.h5.tmp"
    legacy.write_text("old version")
    live = tmp_path / f".s.h5.tmp-{sleeper.pid}"
    live.write_bytes(b"in progress")
    run_dir = tmp_path / "run"
    stale_dir = tmp_path / f".run.tmp-{dead}"
    (stale_dir / "models").mkdir(parents=True)
    other = tmp_path / f".other.h5.tmp-{dead}"  # another output's leftover: not ours to touch
    other.write_bytes(b"x")
    prepare_output(out, "file")
    prepare_output(run_dir, "dir")
    err = capsys.readouterr().err
    assert not stale_file.exists() and not legacy.exists() and not stale_dir.exists()
    assert live.exists() and other.exists()
    assert f"removed {stale_file} (process {dead} is not running)" in " ".join(err.split())
    assert str(stale_dir) in err and str(live) not in err


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    out = tmp_path / "s.h5"
    lp = lock_path(out)
    lp.write_text(json.dumps({"pid": dead_pid(), "host": "here"}))
    with output_lock(out) as held:
        assert json.loads(held.read_text())["pid"] == os.getpid()
    assert "stale lock" in capsys.readouterr().err and not lp.exists()


# ------------------------------------------------------------------------ embed lock
def test_embed_on_a_store_being_written_names_the_other_pid(tmp_path):
    st = write_tiny_store(tmp_path / "s.h5", n_samples=1, cells_per_sample=8, n_genes=2)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nimport h5py\n"
         "from tabst.outputs import output_lock\n"
         "with output_lock(sys.argv[1], 'store'), h5py.File(sys.argv[1], 'r+'):\n"
         "    print('held', flush=True)\n    time.sleep(60)", str(st)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = cli(["embed", st, "--encoder", "resnet18", "--weights", "random"])
        text = no_traceback(r)
        assert r.exit_code == 1
        assert f"the store is being written by another tabst process (pid {holder.pid}" in text
        assert "not a readable HDF5 file" not in text
        with pytest.raises(TabstError, match="being written by another tabst process"):
            open_store(st)  # a reader (compare, info) gets the same message, not an HDF5 error
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------------ bad --out, no traceback
@pytest.fixture
def table_inputs(tmp_path):
    from test_ingest_table import make_inputs

    inp = make_inputs(tmp_path)
    inp["expr"].to_csv(tmp_path / "expr.csv", index=False)
    return ["ingest", "table", inp["labels"], "--images", inp["images"], "--expression",
            tmp_path / "expr.csv"]


def test_ingest_table_unwritable_out(tmp_path, table_inputs):
    (tmp_path / "file.txt").write_text("x")
    r = cli(table_inputs + ["--out", tmp_path / "file.txt" / "s.h5"])
    assert r.exit_code == 1 and "file.txt is a file, not a folder" in no_traceback(r)
    r = cli(table_inputs + ["--out", "/proc/tabst-no-such-dir/s.h5"])
    assert r.exit_code == 1 and "cannot write to /proc" in no_traceback(r)
    (tmp_path / "adir").mkdir()
    r = cli(table_inputs + ["--out", tmp_path / "adir", "--force"])  # a folder where a file goes
    assert r.exit_code == 1 and "adir is a folder" in no_traceback(r)
    assert (tmp_path / "adir").is_dir()


def test_ingest_table_disk_full(tmp_path, table_inputs, monkeypatch):
    import tabst.store as store_mod

    def full(*a, **k):
        raise OSError(ENOSPC_H5.format(tmp_path / ".s.h5.tmp-1"))

    monkeypatch.setattr(store_mod, "put", full)
    monkeypatch.setattr(h5py.Group, "create_dataset", full)
    r = cli(table_inputs + ["--out", tmp_path / "s.h5"])
    assert r.exit_code == 1
    assert f"disk full: {tmp_path / 's.h5'}" in no_traceback(r)
    assert not (tmp_path / "s.h5").exists() and hidden(tmp_path) == []


def test_compare_bad_out_disk_full_and_bad_set(tmp_path, store, monkeypatch):
    (tmp_path / "file.txt").write_text("x")
    base = ["compare", store, "--models", "mean"]
    r = cli(base + ["--out", tmp_path / "file.txt" / "run"])
    assert r.exit_code == 1 and "is a file, not a folder" in no_traceback(r)
    r = cli(base + ["--out", tmp_path / "file.txt", "--force"])  # a file where a folder goes
    assert r.exit_code == 1 and "must be a folder" in no_traceback(r)
    assert (tmp_path / "file.txt").read_text() == "x"
    r = cli(base + ["--out", tmp_path / "r", "--set", "features.embedding.pca=abc"])
    text = no_traceback(r)
    assert r.exit_code == 1 and "features.embedding.pca" in text and "an integer" in text
    import tabst.config as cfg_mod  # the run files are written through it (write_run_files)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cfg_mod, "dump_config", full)
    r = cli(base + ["--out", tmp_path / "run"])
    assert r.exit_code == 1 and "disk full" in no_traceback(r)
    assert not (tmp_path / "run").exists() and hidden(tmp_path) == []
    monkeypatch.undo()
    from tabst.models.base import TabstModel

    monkeypatch.setattr(TabstModel, "save", full)  # inside the per-model failure isolation
    r = cli(base + ["--out", tmp_path / "run"])
    assert r.exit_code == 1 and "disk full" in no_traceback(r)  # the run stops, not "failed"
    assert not (tmp_path / "run").exists() and hidden(tmp_path) == []


def test_predict_unwritable_out(tmp_path, store):
    (tmp_path / "file.txt").write_text("x")
    r = cli(["predict", tmp_path / "run", "--store", store, "--out",
             tmp_path / "file.txt" / "p.csv"])
    assert r.exit_code == 1 and "is a file, not a folder" in no_traceback(r)


def test_embed_disk_full(tmp_path, monkeypatch):
    import tabst.embed as emb

    st = write_tiny_store(tmp_path / "s.h5", n_samples=1, cells_per_sample=8, n_genes=2,
                          with_embedding=False, with_features=False)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(emb, "_create_rows_dataset", full)
    r = cli(["embed", st, "--encoder", "resnet18", "--weights", "random", "--workers", "0"])
    assert r.exit_code == 1 and f"disk full: {st}" in no_traceback(r)
    assert hidden(tmp_path) == []  # the lock is gone


# ------------------------------------------------------------------------ corrupt run folders
def _fake_run(root):
    run = root / "run"
    run.mkdir()
    for n in ("leaderboard.csv", "per_sample.csv", "per_gene.csv"):
        (run / n).write_text("model\nmean\n")
    (run / "run.json").write_text("{}")
    (run / "config.yaml").write_text("name: x\n")
    with h5py.File(run / "predictions.h5", "w") as f:
        f["genes"] = np.array([b"G"])
        f["big"] = np.zeros(50_000)
    return run


@pytest.mark.parametrize("damage", ["run.json", "config.yaml", "predictions.h5"])
def test_report_on_a_corrupt_run_folder_names_the_file(tmp_path, damage):
    run = _fake_run(tmp_path)
    p = run / damage
    if damage == "predictions.h5":
        p.write_bytes(p.read_bytes()[:1000])  # truncated by an interrupted copy
    else:
        p.write_text('{"name": [1, ' if damage == "run.json" else "report: [1, 2\n")
    r = cli(["report", run])
    text = no_traceback(r)
    assert r.exit_code == 1 and f"{p}:" in text and "re-run `tabst compare`" in text


# ------------------------------------------------------------------------ the CLI decorator
def test_user_errors_turns_os_errors_into_one_line_and_keeps_bugs_visible():
    t = typer.Typer()

    @t.command()
    @user_errors
    def main(kind: str):
        if kind == "rofs":
            raise OSError(errno.EROFS, "Read-only file system", "/data/s.h5")
        if kind == "h5":
            raise OSError(ENOSPC_H5.format("/data/.run.tmp-12/predictions.h5"))
        raise KeyError("a bug")

    r = CliRunner().invoke(t, ["rofs"])
    assert r.exit_code == 1 and "read-only file system: /data/s.h5" in r.output
    r = CliRunner().invoke(t, ["h5"])
    assert r.exit_code == 1 and "disk full: /data/run/predictions.h5" in r.output
    r = CliRunner().invoke(t, ["bug"])
    assert isinstance(r.exception, KeyError)  # unexpected errors keep their traceback
    r = CliRunner().invoke(t, ["rofs"], env={"TABST_DEBUG": "1"})
    assert isinstance(r.exception, OSError)  # TABST_DEBUG=1 shows the traceback
