"""Dask scale-out (``--cluster``): parsing, embed shards on a LocalCluster of 2 worker processes
bit-identical to one process, a killed worker then a resumed rerun, a scheduler that is not
there."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import write_tiny_store

from tabst import embed_dask
from tabst.cluster import parse_cluster
from tabst.embed import embed_store
from tabst.errors import TabstError
from tabst.morphology import compute_features


def test_parse_cluster():
    assert parse_cluster(None) is None and parse_cluster("none") is None
    assert parse_cluster("local")[0] == "local" and parse_cluster("local")[1] >= 1
    assert parse_cluster("local:3") == ("local", 3)
    assert parse_cluster("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")
    assert parse_cluster("node1:8786") == ("address", "tcp://node1:8786")
    for bad in ("locl", "local:0", "local:x", "http//x"):
        with pytest.raises(TabstError, match="local|>= 1"):
            parse_cluster(bad)


def test_shards_and_done_bits(tmp_path):
    assert embed_dask.shard_batches(range(3, 10), 8, 16) == [[3, 4], [5, 6], [7, 8], [9]]
    with h5py.File(tmp_path / "b.h5", "w") as f:
        ds = f.create_dataset("d", (1,))
        ds.attrs["batch_size"] = 10
        ds.attrs["rows_done"] = 20  # a single-process run stopped after 2 batches
        done = np.zeros(6, dtype=bool)
        done[[0, 1, 4]] = True
        embed_dask._mark(ds, done, 10, 55)
        assert int(ds.attrs["rows_done"]) == 20  # the contiguous prefix
        assert embed_dask.done_bits(ds, 6).tolist() == [1, 1, 0, 0, 1, 0]


def _store(tmp_path, name):
    return write_tiny_store(tmp_path / name, n_samples=2, cells_per_sample=30,
                            with_embedding=False, with_features=False, with_masks=True)


KW = dict(encoder="resnet18", layer="layer3", weights="random", batch_size=8, workers=0,
          show_progress=False)


def _same(a, b, name):
    with h5py.File(a) as fa, h5py.File(b) as fb:
        for key in (f"embeddings/{name}", "features/morphology"):
            assert bool(fb[key].attrs["complete"])
            assert np.array_equal(fa[key][()], fb[key][()], equal_nan=True), key


def test_embed_on_local_cluster_is_bit_identical_and_resumes_after_a_killed_worker(
        tmp_path, monkeypatch):
    import dask

    ref, a, b = (_store(tmp_path, f"{k}.h5") for k in ("ref", "a", "b"))
    name = embed_store(ref, **KW)
    monkeypatch.setattr(embed_dask, "SHARD_ROWS", 16)  # 60 rows, batches of 8: 4 shards
    assert embed_store(a, cluster="local:2", **KW) == name
    _same(ref, a, name)
    c = _store(tmp_path, "c.h5")  # the features pass alone, on the cluster
    compute_features(c, batch_size=8, show_progress=False, cluster="local:2")
    with h5py.File(ref) as fa, h5py.File(c) as fc:
        assert np.array_equal(fa["features/morphology"][()], fc["features/morphology"][()],
                              equal_nan=True)

    # the worker of shard 3 (rows 32-47) dies; the run stops with a clear error, finished shards
    # are kept
    monkeypatch.setenv(embed_dask.KILL_SHARD_ENV, "2")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with pytest.raises(TabstError, match="rerun the same command to resume"):
            embed_store(b, cluster="local:2", **KW)
    with h5py.File(b) as f:  # tasks queued on the dead worker fail too (no retries here)
        ds = f[f"embeddings/{name}"]
        done = embed_dask.done_bits(ds, 8)
        assert not bool(ds.attrs["complete"]) and not done[4:6].any() and done.any()
        assert np.isnan(ds[32:48]).all()
        assert all(np.isfinite(ds[k * 8:(k + 1) * 8]).all() for k in np.flatnonzero(done))
        lost = 60 - sum(min(60, (k + 1) * 8) - k * 8 for k in np.flatnonzero(done))
    monkeypatch.delenv(embed_dask.KILL_SHARD_ENV)
    embed_store(b, cluster="local:2", **KW)
    with h5py.File(b) as f:  # only the lost shards are recomputed
        assert int(f[f"embeddings/{name}"].attrs["last_run_rows"]) == lost
    _same(ref, b, name)


def test_cluster_address_with_no_scheduler_is_a_clear_error(tmp_path, monkeypatch):
    from tabst_cli.app import app
    from typer.testing import CliRunner

    import tabst.cluster

    monkeypatch.setattr(tabst.cluster, "CONNECT_TIMEOUT_S", 2)
    p = _store(tmp_path, "c.h5")
    r = CliRunner().invoke(app, ["embed", str(p), "--encoder", "resnet18", "--weights", "random",
                                 "--cluster", "tcp://127.0.0.1:9"])
    assert r.exit_code == 1, r.output
    assert "no Dask scheduler answered" in r.output and "Traceback" not in r.output
    with h5py.File(p) as f:
        assert "embeddings" not in f  # nothing half-written
    r = CliRunner().invoke(app, ["embed", str(p), "--cluster", "lcal"])
    assert r.exit_code == 1 and "expected local, local:N" in r.output


def test_compare_on_local_cluster_equals_one_process(tmp_path):
    import pandas as pd
    from test_compare import FAST

    from tabst.compare import run_compare

    store = write_tiny_store(tmp_path / "s.h5", n_samples=3, cells_per_sample=50)
    cfg = {**FAST, "models": ["ridge", "tree", "xgboost", "tabnet", "context-k0"],
           "params": {**FAST["params"], "context-k0": {"hidden": 8, "width": 8, "epochs": 2,
                                                       "n_models": 1}}}
    a = run_compare(store, cfg, tmp_path / "a", show_progress=False, render=False)
    b = run_compare(store, cfg, tmp_path / "b", cluster="local:2", show_progress=False,
                    render=False)
    la, lb = (pd.read_csv(d / "leaderboard.csv").set_index("model") for d in (a, b))
    assert set(la.index) == {"mean", "ridge", "tree", "xgboost", "tabnet", "context-k0"}
    assert (lb["status"] == "ok").all()
    for m in ("cellwise_spearman_mean", "genewise_pearson_mean", "mse_mean"):
        np.testing.assert_allclose(lb.loc[la.index, m], la[m], rtol=0, atol=1e-6, err_msg=m)
    with h5py.File(a / "predictions.h5") as pa, h5py.File(b / "predictions.h5") as pb:
        for k in pa:
            if k.startswith("fold_"):
                for m in pa[f"{k}/pred"]:
                    np.testing.assert_allclose(pb[f"{k}/pred/{m}"][()], pa[f"{k}/pred/{m}"][()],
                                               atol=1e-5, err_msg=f"{k} {m}")
    run = json.loads((b / "run.json").read_text())
    assert run["cluster"]["workers"].startswith("2 workers at tcp://")
    assert run["cluster"]["fits_on_workers"] == 3 * 6 + 6  # every model: 3 folds + the refit
    assert (b / "models" / "xgboost" / "all").is_dir()  # refit on a worker, saved by the client


def test_compare_cluster_errors(tmp_path, monkeypatch):
    from tabst_cli.app import app
    from typer.testing import CliRunner

    import tabst.cluster

    monkeypatch.setattr(tabst.cluster, "CONNECT_TIMEOUT_S", 2)
    store = write_tiny_store(tmp_path / "s.h5", n_samples=2, cells_per_sample=20)
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["compare", str(store), "--models", "ridge", "--out", str(out),
                                 "--cluster", "tcp://127.0.0.1:9"])
    assert r.exit_code == 1 and "no Dask scheduler answered" in r.output, r.output
    assert not out.exists()  # nothing half-written
    r = CliRunner().invoke(app, ["compare", str(store), "--set", "cluster=lcal"])
    assert r.exit_code == 1 and "key 'cluster'" in r.output, r.output
