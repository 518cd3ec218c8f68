"""The compare cost estimate (tabst.cost): calibration, the printed estimate, max_hours."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from conftest import write_tiny_store
from typer.testing import CliRunner

from tabst.compare import run_compare
from tabst.cost import Guard, RunEstimate, calibrate, fit_rows, refuse_if_too_long
from tabst.errors import TabstError
from tabst.models import make_model

FAST = {"models": ["ridge", "xgboost"], "refit_all": True, "save_fold_models": False,
        "features": {"embedding": {"name": "auto", "pca": 4}, "metadata": {"tissue": False},
                     "features": []},
        "params": {"xgboost": {"n_estimators": 30, "max_depth": 2, "codec_k": 2,
                               "max_train_cells_per_group": 25}}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_tiny_store(tmp_path_factory.mktemp("cost") / "s.h5", n_samples=3,
                            cells_per_sample=40, n_genes=6, emb_dim=8)


class _Linear:
    """A fake model whose fit takes 0.5 s + 2e-3 s per unit (units = rows x rounds)."""

    def __init__(self, rounds):
        self.rounds, self.params = rounds, {}

    def calibration_params(self, n_rows=None):
        return {"rounds": 5}

    def calibration_rows(self, n_rows):
        return 1000

    def cost_units(self, n, F, G):
        return n * self.rounds

    def fit(self, X, Y, groups=None, **kw):
        self.n_fit_rows_ = len(X)
        self.fit_seconds_ = 0.5 + 2e-3 * self.cost_units(len(X), 0, 0)
        return self


def test_calibration_recovers_fixed_and_per_unit_seconds_and_extrapolates():
    def make(name, overrides):
        return _Linear(overrides.get("rounds", 100))
    X, Y = np.zeros((5000, 3)), np.zeros((5000, 2))
    a, b = calibrate(make, "fake", X, Y, None, {})
    assert a == pytest.approx(0.5) and b == pytest.approx(2e-3)
    full = make("fake", {})  # 100 rounds on 1M rows: estimated from 5-round fits of 1k / 4k
    assert a + b * full.cost_units(1_000_000, 3, 2) == pytest.approx(0.5 + 2e-3 * 1e8)


def test_fit_rows_follows_max_train_cells_per_group():
    groups = np.repeat(["a", "b", "c"], [100, 10, 40])
    assert fit_rows(make_model("ridge"), groups) == 150
    assert fit_rows(make_model("xgboost", {"max_train_cells_per_group": 20}), groups) == 50


def test_compare_prints_and_records_the_estimate(tmp_path, store, capsys):
    out = run_compare(store, {**FAST, "estimate": True}, tmp_path / "r", show_progress=False,
                      render=False)
    err = capsys.readouterr().err
    assert "estimate (calibrated" in err and "whole run: about" in err
    est = json.loads((out / "run.json").read_text())["estimate"]
    assert set(est["models"]) == {"mean", "ridge", "xgboost"}  # the baseline is always run
    for m in est["models"].values():
        assert len(m["folds"]) == 3 and all(t > 0 for t in m["folds"]) and m["refit"] > 0
    assert est["models"]["xgboost"]["rows"] == [50, 50, 50]  # 25 per training sample
    assert est["models"]["ridge"]["rows"] == [80, 80, 80]
    assert est["total_seconds"] > 0
    # auto on a tiny store: no calibration, no estimate
    out = run_compare(store, FAST, tmp_path / "auto", show_progress=False, render=False)
    assert json.loads((out / "run.json").read_text())["estimate"] is None


def test_max_hours_refuses_a_run_estimated_over_it_before_fitting(tmp_path, store):
    from tabst_cli.app import app

    out = tmp_path / "r"
    cfg = tmp_path / "c.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(FAST))
    r = CliRunner().invoke(app, ["compare", str(store), "--config", str(cfg), "--out", str(out),
                                 "--max-hours", "1e-7"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "over --max-hours" in r.output and "Nothing was fitted" in r.output
    assert not out.exists()
    with pytest.raises(TabstError, match="max_hours"):
        run_compare(store, {**FAST, "max_hours": -1}, tmp_path / "x")


def test_guard_stops_a_run_that_passes_max_hours():
    Guard(None, 0.0).check("anything")
    Guard(1.0, time.perf_counter()).check("ridge")
    with pytest.raises(TabstError, match="stopped after .* after xgboost on fold 2"):
        Guard(1.0, time.perf_counter() - 3601).check("xgboost on fold 2 of 3")
    est = RunEstimate(models={"ridge": {"folds": [10.0, 10.0], "refit": 10.0}}, n_folds=2)
    refuse_if_too_long(est, 1.0)
    with pytest.raises(TabstError, match="slowest: ridge"):
        refuse_if_too_long(est, 0.001)
