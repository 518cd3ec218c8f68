"""Leaderboards that do not mislead (issue 13, hardening): a metric a fold cannot define is
refused and the ranking says what it used; a model that failed on some folds is not ranked
against the models that finished all of them."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import write_tiny_store
from rich.console import Console
from tabst_cli.app import app
from typer.testing import CliRunner

from tabst.compare import leaderboard_table, run_compare
from tabst.leaderboard import leaderboard_frame
from tabst.models import RidgeModel

CFG = {"features": {"embedding": {"name": "auto", "pca": 4}}, "models": ["mean", "ridge", "tree"],
       "params": {"ridge": {"alphas": [0.1, 1.0, 10.0]},
                  "tree": {"max_depth": 2, "min_samples_leaf": 5, "codec": "identity"}},
       "refit_all": False, "save_fold_models": False}
WHY = "a per-cell rank correlation needs at least 2 genes"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("lb")
    return write_tiny_store(d / "tiny.h5", n_samples=3, cells_per_sample=30, n_genes=5, emb_dim=6)


def _table_text(run_dir) -> str:
    con = Console(width=200, record=True, file=open("/dev/null", "w"))
    con.print(leaderboard_table(run_dir))
    return con.export_text()


# ------------------------------------------------------------------------------ one gene
def test_one_gene_refuses_cellwise_spearman_and_ranks_by_pearson(tmp_path, store):
    genes = tmp_path / "one_gene.txt"
    genes.write_text("GENE2\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["compare", store, "--config", str(cfg), "--genes", str(genes),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert WHY in r.output and "ranked by gene-wise Pearson" in r.output  # on the console
    pf = pd.read_csv(out / "per_fold.csv")
    assert (pf["n_genes"] == 1).all() and pf["cellwise_spearman"].isna().all()
    assert pd.read_csv(out / "per_sample.csv")["cellwise_spearman"].isna().all()
    lb = pd.read_csv(out / "leaderboard.csv")
    assert lb["cellwise_spearman_mean"].isna().all()
    assert (lb["ranked_by"] == "genewise_pearson").all()
    # ranked by gene-wise Pearson: the constant mean profile (Pearson 0) is not first any more
    assert lb["model"].iloc[0] != "mean" and lb.set_index("model").loc["mean", "rank"] == 3
    assert (np.diff(lb["genewise_pearson_mean"].to_numpy()) <= 1e-12).all()
    run = json.loads((out / "run.json").read_text())
    assert run["ranked_by"] == "genewise_pearson" and run["primary_metric"] == "cellwise_spearman"
    assert any(WHY in n for n in run["leaderboard_notes"])
    html = (out / "report.html").read_text()  # the report says it too, and stars Pearson
    assert WHY in html and "ranked by <b>gene-wise Pearson</b>" in html


def test_two_genes_keep_cellwise_spearman(tmp_path, store):
    genes = tmp_path / "two.txt"
    genes.write_text("GENE1\nGENE2\n")
    out = run_compare(store, dict(CFG, models=["mean", "ridge"]), tmp_path / "run",
                      genes=str(genes), show_progress=False, render=False)
    lb = pd.read_csv(out / "leaderboard.csv")
    assert (lb["ranked_by"] == "cellwise_spearman").all() and lb["cellwise_spearman_mean"].notna().all()
    notes = json.loads((out / "run.json").read_text())["leaderboard_notes"]
    assert [n for n in notes if "clipped at 0" not in n] == []  # no caveat on the ranking


# ------------------------------------------------------------------------------ partial models
def test_model_failing_on_one_fold_is_not_ranked(tmp_path, store, monkeypatch):
    real = RidgeModel._fit

    def flaky(self, X, Z, groups):  # fails on the fold that holds S1 out
        if "S1" not in set(groups):
            raise RuntimeError("injected failure")
        return real(self, X, Z, groups)

    monkeypatch.setattr(RidgeModel, "_fit", flaky)
    out = run_compare(store, CFG, tmp_path / "run", show_progress=False, render=False)
    lb = pd.read_csv(out / "leaderboard.csv").set_index("model")
    assert lb.loc["ridge", "status"] == "partial (2/3 folds)" and lb.loc["ridge", "n_folds_ok"] == 2
    assert not lb.loc["ridge", "ranked"] and lb.loc["mean", "ranked"] and lb.loc["tree", "ranked"]
    # ridge's mean over its two folds beats both, yet it is listed after the complete models
    assert lb.loc["ridge", "cellwise_spearman_mean"] > lb.loc[["mean", "tree"],
                                                              "cellwise_spearman_mean"].max()
    assert lb.loc["ridge", "rank"] == 3
    assert "not ranked" in lb.loc["ridge", "note"] and pd.isna(lb.loc["mean", "note"])
    notes = json.loads((out / "run.json").read_text())["leaderboard_notes"]
    assert any(n.startswith("ridge: failed on 1 of 3 folds: not ranked") for n in notes)
    text = _table_text(out)
    row = next(line for line in text.splitlines() if " ridge " in f" {line} ")
    assert row.strip().startswith("—") and "partial (2/3 folds)" in row
    assert "note: ridge: failed on 1 of 3 folds" in text
    from tabst.report.render import render_report

    html = render_report(out).read_text()
    assert "failed on 1 of 3 folds: not ranked" in html
    assert '<td>—</td><td class="l">ridge</td>' in html


def test_leaderboard_order_complete_partial_failed():
    rec = {"fold": 0, "n_genes": 5, "label": "", "error": "", "n_const_truth_genes": 0,
           "fit_seconds": 1.0, "predict_seconds": 0.1, "peak_mem_mb": 1.0, "n_features": 3,
           "genewise_pearson": 0.1, "mse": 1.0}
    rows = []
    for name, scores in {"a": [0.2, 0.2], "b": [0.9, None], "c": [0.5, 0.4], "d": [None, None]}.items():
        for k, s in enumerate(scores):
            rows.append(dict(rec, model=name, label=name, fold=k, cellwise_spearman=s,
                             status="ok" if s is not None else "failed"))
    lb = leaderboard_frame(pd.DataFrame(rows), "cellwise_spearman", {}, {})
    assert list(lb["model"]) == ["c", "a", "b", "d"] and list(lb["rank"]) == [1, 2, 3, 4]
    assert list(lb["ranked"]) == [True, True, False, False]
    assert lb["note"].iloc[3] == "failed on every fold: not ranked"
