"""`tabst predict`: Crunch zarr -> ingest -> embed -> compare -> predict -> a valid submission."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("spatialdata")

from tabst_cli.app import app
from test_ingest_crunch import GENES, write_crunch_zarr
from typer.testing import CliRunner

from tabst.errors import TabstError
from tabst.ingest.crunch import ingest_crunch
from tabst.predict import predict_submission
from tabst.store import cells_frame

FAST = {"features": {"embedding": {"name": "auto", "pca": 4}},
        "params": {"ridge": {"alphas": [1.0, 10.0]}}, "report": {"n_map_genes": 1, "dpi": 50}}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Two small Crunch samples -> store -> real `tabst embed` (random ResNet18) -> compare."""
    from tabst.compare import run_compare

    d = tmp_path_factory.mktemp("pred")
    zarrs = [write_crunch_zarr(d / f"{s}.zarr", seed=i, size=400, n=70)["path"]
             for i, s in enumerate(("DC1", "UC9_I"))]
    store = d / "crunch.h5"
    ingest_crunch(zarrs, store, tile=128, show_progress=False)
    r = CliRunner().invoke(app, ["embed", str(store), "--encoder", "resnet18", "--weights",
                                 "random", "--patch-size", "32", "--batch-size", "64",
                                 "--workers", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    run = run_compare(store, {**FAST, "models": ["ridge"]}, d / "run", show_progress=False,
                      render=False)
    return {"dir": d, "store": store, "run": run}


def test_submission_valid_and_matches_the_refitted_model(pipeline, tmp_path):
    out = tmp_path / "sub.csv"
    res = predict_submission(pipeline["run"], pipeline["store"], out, show_progress=False)
    sub = pd.read_csv(out, dtype={"cell_id": str})
    assert list(sub.columns) == ["cell_id", "gene", "prediction"]
    cells = cells_frame(pipeline["store"])
    test = cells[cells["group"] == "test"]
    # two samples: store ids are <sample>:<id>, unique; the submission uses the Crunch ids
    # only when unique, else the store's cell_id
    assert res.n_cells == len(test) and res.n_genes == len(GENES)
    assert len(sub) == len(test) * len(GENES)
    assert sub.groupby("cell_id")["gene"].nunique().eq(len(GENES)).all()
    assert not sub.duplicated(["cell_id", "gene"]).any()
    assert set(sub["gene"]) == set(GENES)
    assert np.isfinite(sub["prediction"]).all() and (sub["prediction"] >= 0).all()
    assert set(sub["cell_id"]) == set(test[res.id_column].astype(str))
    # values equal the refitted model on the refit feature builder (clipped at 0)
    from tabst.dataset import FeatureBuilder
    from tabst.models.base import TabstModel

    fb = FeatureBuilder.load(pipeline["run"] / "features" / "all")
    m = TabstModel.load(pipeline["run"] / "models" / res.model / "all")
    rows = test.index.to_numpy()
    P = np.clip(m.predict(fb.transform(pipeline["store"], rows)), 0, None)
    got = sub.pivot(index="cell_id", columns="gene", values="prediction") \
        .loc[test[res.id_column].astype(str), list(m.target_names_)].to_numpy()
    np.testing.assert_allclose(got, P, rtol=1e-5, atol=1e-6)
    lb = pd.read_csv(pipeline["run"] / "leaderboard.csv")
    assert res.model == lb.sort_values("rank")["model"].iloc[0]  # default: best-ranked refit
    assert res.n_clipped >= 0


def test_sample_filter_uses_crunch_ids(pipeline, tmp_path):
    out = tmp_path / "uc9.csv"
    res = predict_submission(pipeline["run"], pipeline["store"], out, samples=["UC9_I"],
                             model="mean", show_progress=False)
    assert res.id_column == "source_cell_id" and res.model == "mean"
    sub = pd.read_csv(out, dtype={"cell_id": str})
    assert sub["cell_id"].str.fullmatch(r"\d+").all()  # the challenge's integer ids
    c = cells_frame(pipeline["store"])
    want = c[(c["group"] == "test") & (c["sample"] == "UC9_I")]["source_cell_id"]
    assert set(sub["cell_id"]) == set(want)


def test_errors_leave_nothing(pipeline, tmp_path, monkeypatch):
    out = tmp_path / "bad.csv"
    with pytest.raises(TabstError, match="no cell in group 'holdout'"):
        predict_submission(pipeline["run"], pipeline["store"], out, group="holdout",
                           show_progress=False)
    with pytest.raises(TabstError, match="no refitted model 'xgboost'"):
        predict_submission(pipeline["run"], pipeline["store"], out, model="xgboost",
                           show_progress=False)
    from tabst.models.base import TabstModel

    real = TabstModel.predict

    def nan_predict(self, X):
        P = real(self, X)
        P[0, 1] = np.nan
        return P

    monkeypatch.setattr(TabstModel, "predict", nan_predict)
    with pytest.raises(TabstError, match="NaN/inf"):
        predict_submission(pipeline["run"], pipeline["store"], out, show_progress=False)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".bad")]


def test_cli(pipeline, tmp_path):
    out = tmp_path / "cli.csv"
    args = ["predict", str(pipeline["run"]), "--store", str(pipeline["store"]), "--out", str(out),
            "--group", "validation"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "group validation" in r.output and out.exists()
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "already exists" in r.output
