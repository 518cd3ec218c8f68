"""The Crunch 1 workflow end to end, through the CLI, on three samples in the challenge's layout:
ingest -> embed -> compare --config crunch1 (LOSO, regions) -> report -> predict -> a file the
scorer's check() accepts, whose scored cells recompute the scorer's metric."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("spatialdata")

from tabst_cli.app import app
from test_ingest_crunch import GENES, write_crunch_zarr
from test_predict import scorer_check
from test_scorer_metrics import scorer_scores
from typer.testing import CliRunner

SAMPLES = ("UC1_I", "UC6_NI", "UC1_NI")  # UC1_NI: the sample whose validation/test cells count


def _ok(args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def test_crunch_workflow_end_to_end(tmp_path):
    data = tmp_path / "data"
    truth = {s: write_crunch_zarr(data / f"{s}.zarr", seed=i, size=360, n=60, ghosts=False)
             for i, s in enumerate(SAMPLES)}
    store = tmp_path / "crunch.h5"
    out = _ok(["ingest", "crunch", *[t["path"] for t in truth.values()], "--out", store,
               "--tile", 128])
    assert "region(s) from table 'cell_id-group'" in out
    _ok(["embed", store, "--encoder", "resnet18", "--weights", "random", "--patch-size", 32,
         "--batch-size", 64, "--workers", 0, "--device", "cpu"])
    run = tmp_path / "run"
    _ok(["compare", store, "--config", "crunch1", "--models", "ridge", "--out", run,
         "--set", "ridge.cv=2", "--set", "features.embedding.pca=8",
         "--set", "report.n_map_genes=1", "--set", "report.dpi=40"])
    info = json.loads((run / "run.json").read_text())
    assert info["region_column"] == "region" and info["config_name"] == "crunch1"
    assert [f["test_samples"] for f in info["folds"]] == [[s] for s in sorted(SAMPLES)]
    assert all(len(f["test_regions"]) >= 4 for f in info["folds"])
    html = (run / "report.html").read_text()
    assert "test regions (cells)" in html and "region_3" in html
    # the fold scores are the scorer's per-region metric on the held-out cells
    import h5py

    with h5py.File(run / "predictions.h5") as f:
        g = f["fold_0"]
        t, p = g["truth"][()], g["pred/ridge"][()]
        s, r = g["sample"].asstr()[()], g["region"].asstr()[()]
    sp, ms = scorer_scores(t, p, s, r)
    pf = pd.read_csv(run / "per_fold.csv")
    row = pf[(pf["model"] == "ridge") & (pf["fold"] == 0)].iloc[0]
    assert abs(row["cellwise_spearman"] - sp["ALL"]) < 1e-6 and abs(row["mse"] - ms["ALL"]) < 1e-6
    # the submission for the held-out sample's validation + test cells
    sub = tmp_path / "submission.csv"
    out = _ok(["predict", run, "--store", store, "--out", sub, "--sample", "UC1_NI",
               "--decimals", 2])
    assert "scorer check ok" in out
    frame = pd.read_csv(sub)
    scorer_check(frame.copy(), data, ["UC1_NI"])
    t = truth["UC1_NI"]
    vt = set(t["g_ids"][np.isin(t["groups"], ["validation", "test"])].tolist())
    assert set(frame["cell_id"]) == vt and set(frame["gene"]) == set(GENES)
