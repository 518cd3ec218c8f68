"""`tabst explain --store` refuses a store other than the run's (issue 13, hardening): other
genes, fewer cells or the cells in other rows give one clear message and exit 1, no traceback
(before, the rows of predictions.h5 were read from whatever store was given)."""
from __future__ import annotations

import shutil

import h5py
import pytest
from conftest import write_tiny_store
from tabst_cli.app import app
from typer.testing import CliRunner

from tabst.compare import run_compare
from tabst.errors import TabstError
from tabst.explain.runfolder import Run, check_store

CFG = {"features": {"embedding": {"name": "auto", "pca": 4}}, "models": ["mean", "ridge"],
       "params": {"ridge": {"alphas": [0.1, 1.0, 10.0]}}, "refit_all": False}
TINY = dict(n_samples=3, cells_per_sample=30, n_genes=5, emb_dim=6)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("xs")
    (d / "run_store").mkdir()  # alone in its folder: the copies below take its images along
    store = write_tiny_store(d / "run_store" / "tiny.h5", **TINY)
    return run_compare(store, CFG, d / "run", show_progress=False, render=False)


def _store(tmp_path, name, **changes):
    (tmp_path / name).mkdir()
    return write_tiny_store(tmp_path / name / "tiny.h5", **{**TINY, **changes})


def _explain(run, store):
    return CliRunner().invoke(app, ["explain", str(run), "--store", str(store), "--cells", "10",
                                    "--top-genes", "1", "--gallery", "0"])


def _refused(r) -> str:
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert "Traceback" not in r.output
    assert "is not the store this run was computed on" in r.output
    return r.output


def test_fewer_genes_named(run, tmp_path):
    out = _refused(_explain(run, _store(tmp_path, "g4", n_genes=4)))
    assert "lacks 1 of the run's 5 genes (GENE4)" in out


def test_more_genes_named(run, tmp_path):
    out = _refused(_explain(run, _store(tmp_path, "g7", n_genes=7)))
    assert "it has 7 genes, the run's store had 5 (GENE5, GENE6 not in the run)" in out


def test_fewer_cells_counted(run, tmp_path):
    out = _refused(_explain(run, _store(tmp_path, "c20", cells_per_sample=20)))
    assert "30 of the run's 90 evaluated cells are not in it" in out
    assert "it has 60 cells, the run's store had 90" in out


def test_cells_in_other_rows(run, tmp_path):
    store = tmp_path / "rev" / "tiny.h5"
    shutil.copytree(Run(run).store_path().parent, store.parent)
    with h5py.File(store, "r+") as f:
        ids = f["cells/cell_id"][()]
        f["cells/cell_id"][...] = ids[::-1]
    out = _refused(_explain(run, store))
    assert "it holds 90 of the run's 90 evaluated cells in other rows" in out
    with h5py.File(store, "r") as f, pytest.raises(TabstError, match="has changed since the run"):
        check_store(Run(run), f, given=False)  # the run's own store, re-ingested in place


def test_a_copy_of_the_runs_store_is_accepted(run, tmp_path):
    store = tmp_path / "copy" / "tiny.h5"
    shutil.copytree(Run(run).store_path().parent, store.parent)
    r = _explain(run, store)
    assert r.exit_code == 0, r.output
    assert (run / "attributions.h5").is_file()
