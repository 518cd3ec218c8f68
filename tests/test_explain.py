"""`tabst explain`: additivity for every model (and through the codec), exact ridge SHAP, grouping,
attributions.h5, the offline report (headless Chromium), the size budget and the CLI."""
from __future__ import annotations

import json
import re
import shutil
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
from chromium_probe import render_probe
from conftest import write_tiny_store
from typer.testing import CliRunner

from tabst.errors import TabstError
from tabst.explain import top_readable_feature
from tabst.explain.attribution import (
    AdditivityWarning,
    ModelAttributions,
    check_additivity,
    concat,
    explain_model,
    read_attributions,
    tabnet_masks,
    write_attributions,
)
from tabst.explain.grouping import (
    GROUP_ORDER,
    group_importance,
    group_sums,
    ordered_groups,
    readable_importance,
)
from tabst.explain.trust import (
    DOMINANCE_SHARE,
    IG_RESIDUAL_LIMIT,
    dominant_fold,
    fold_shares,
    residual_notes,
    residual_too_large,
)
from tabst.models import REGISTRY, make_model

FAST = {
    "mean": {},
    "ridge": {"alphas": [0.1, 1.0, 10.0, 100.0]},
    "tree": {"max_depth": 3, "min_samples_leaf": 5},
    "xgboost": {"n_estimators": 15, "max_depth": 3, "n_jobs": 1, "early_stopping_rounds": 5,
                "device": "cpu"},
    "tabnet": {"n_d": 4, "n_a": 4, "n_steps": 2, "max_epochs": 2, "pretrain": False,
               "batch_size": 32, "virtual_batch_size": 16, "explain_steps": 8, "device": "cpu"},
}
RUN_CFG = {
    "models": ["mean", "ridge", "tree", "xgboost", "tabnet"],
    "features": {"embedding": {"name": "auto", "pca": 4}},
    "params": {"ridge": FAST["ridge"], "tree": dict(FAST["tree"], codec_k=3),
               "xgboost": dict(FAST["xgboost"], codec_k=3),
               "tabnet": dict(FAST["tabnet"], codec_k=3)},
}


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(1)
    n, F, G = 120, 7, 5
    X = rng.normal(size=(n, F)).astype(np.float32) * rng.uniform(0.5, 20, F).astype(np.float32) \
        + rng.uniform(-5, 50, F).astype(np.float32)
    W = rng.normal(size=(F, G)) / X.std(0)[:, None]
    Y = (X @ W + 0.3 * rng.normal(size=(n, G))).astype(np.float32)
    groups = np.repeat(["A", "B", "C"], n // 3)
    names = [f"f{i}" for i in range(F)]
    fgroups = ["embedding", "embedding", "embedding", "morphology", "stain", "stain", "position"]
    return X, Y, groups, names, fgroups


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A compare run (all models, LOSO over 3 samples) on the conftest tiny store."""
    from tabst.compare import run_compare

    d = tmp_path_factory.mktemp("explain")
    store = write_tiny_store(d / "tiny.h5", n_samples=3, cells_per_sample=40, n_genes=6,
                             emb_dim=8)
    return run_compare(store, RUN_CFG, d / "run", show_progress=False, render=False)


@pytest.fixture(scope="module")
def explained(tiny_run):
    """run_explain on the tiny run (2 genes, 45 cells); returns the report path."""
    from tabst.explain import run_explain

    return run_explain(tiny_run, top_genes=2, cells=45, gallery=3, show_progress=False)


# ------------------------------------------------------------------------------ additivity
@pytest.mark.parametrize("codec", ["identity", "pca"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_additivity_every_model(name, codec, xy):
    X, Y, groups, names, fgroups = xy
    m = make_model(name, dict(FAST.get(name, {}), codec=codec, codec_k=3))
    m.fit(X, Y, groups, feature_names=names, feature_groups=fgroups)
    gidx = [0, 2, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("error", AdditivityWarning)
        values, base, pred, err, method, fn, fg = explain_model(m, X[:40], gidx)
    assert values.shape == (40, X.shape[1], 3) and values.dtype == np.float32
    assert fn == names and fg == fgroups
    np.testing.assert_allclose(pred, m.predict(X[:40])[:, gidx], rtol=1e-6)
    np.testing.assert_allclose(base + values.astype(np.float64).sum(1), pred, atol=2e-3,
                               rtol=1e-3)
    assert err < 2e-3
    if name != "mean":
        assert np.abs(values).max() > 0  # something is attributed


@pytest.mark.parametrize("name", ["ridge", "tree", "xgboost"])
def test_codec_attributions_are_loadings_weighted_sums(name, xy):
    """Per-gene attribution = Σ_k (component attribution) × loading_kg, base = mean + base_k·L."""
    X, Y, groups, names, fgroups = xy
    m = make_model(name, dict(FAST[name], codec="pca", codec_k=3)).fit(X, Y, groups)
    Xp = m._prepare(X[:30])
    v_codes, base_codes, _ = m._explain(Xp)
    L = m.codec_.components_                                        # [k, G]
    expect = np.einsum("nfk,kg->nfg", np.asarray(v_codes, dtype=np.float64), L)
    ex = m.explain(X[:30])
    np.testing.assert_allclose(ex.values, expect, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ex.base, m.codec_.mean_ + np.asarray(base_codes) @ L, rtol=1e-6)
    # and the decoded decomposition adds up to the gene predictions
    np.testing.assert_allclose(ex.prediction, m.predict(X[:30]), atol=2e-3, rtol=1e-3)


def test_ridge_attribution_equals_coef_times_centred_input(xy):
    """Exact linear SHAP, checked against sklearn's Ridge on StandardScaler-ed data."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    X, Y, groups, names, fgroups = xy
    m = make_model("ridge", FAST["ridge"]).fit(X, Y, groups)
    Xte = X[:25] + 0.5
    values, base, pred, err, *_ = explain_model(m, Xte, range(Y.shape[1]))
    sc = StandardScaler().fit(X.astype(np.float64))
    Xs_tr = sc.transform(X.astype(np.float64))
    for g in range(Y.shape[1]):
        sk = Ridge(alpha=float(m.alpha_[g])).fit(Xs_tr, Y[:, g].astype(np.float64))
        # coef on standardised data × (x − mean) / scale, computed without tabst
        expect = sk.coef_[None, :] * (Xte.astype(np.float64) - sc.mean_) / sc.scale_
        np.testing.assert_allclose(values[:, :, g], expect, rtol=1e-4, atol=1e-5)
        assert base[g] == pytest.approx(float(Y[:, g].astype(np.float64).mean()), abs=1e-5)
        np.testing.assert_allclose(pred[:, g], sk.predict(sc.transform(Xte.astype(np.float64))),
                                   rtol=1e-4, atol=1e-4)


def test_explain_in_row_chunks_matches_one_call(xy):
    X, Y, groups, names, fgroups = xy
    m = make_model("xgboost", dict(FAST["xgboost"], codec="pca", codec_k=3)).fit(X, Y, groups)
    one = explain_model(m, X[:23], [1, 3])
    chunked = explain_model(m, X[:23], [1, 3], chunk_rows=5)
    np.testing.assert_allclose(chunked[0], one[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(chunked[2], one[2])
    assert chunked[3] < 2e-3


def test_additivity_check_warns_and_records():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5, 3, 2))
    base = np.array([1.0, 2.0])
    pred = base + v.sum(1)
    assert check_additivity(v, base, pred) < 1e-12
    with pytest.warns(AdditivityWarning, match="not additive"):
        err = check_additivity(v, base, pred + 0.5)
    assert err == pytest.approx(0.5)


def test_tabnet_masks_normalised(xy):
    X, Y, groups, names, fgroups = xy
    m = make_model("tabnet", FAST["tabnet"]).fit(X, Y, groups)
    agg, steps = tabnet_masks(m, X[:20])
    assert agg.shape == (20, X.shape[1]) and steps.shape == (2, 20, X.shape[1])
    s = agg.sum(1)
    assert np.all((np.abs(s - 1) < 1e-5) | (s == 0))
    assert np.all(steps >= 0)


# ------------------------------------------------------------------------------ grouping
def test_group_sums_preserve_totals():
    rng = np.random.default_rng(3)
    fgroups = ["stain", "embedding", "weird", "morphology", "embedding", "position", "stain"]
    v = rng.normal(size=(11, len(fgroups), 4)).astype(np.float32)
    groups, sums = group_sums(v, fgroups)
    assert groups == ["embedding", "morphology", "stain", "position", "weird"]
    assert sums.shape == (11, 5, 4)
    np.testing.assert_allclose(sums.sum(1), v.astype(np.float64).sum(1), rtol=1e-10, atol=1e-10)
    # each group's sum is the sum of exactly its members
    np.testing.assert_allclose(sums[:, groups.index("stain")], v[:, 0] + v[:, 6], rtol=1e-6)
    gi, imp = group_importance(v, fgroups)
    np.testing.assert_allclose(imp, np.abs(sums).mean(0))
    assert ordered_groups(["tissue", "embedding"]) == ["embedding", "tissue"]
    assert GROUP_ORDER[0] == "embedding"


def test_readable_ranking_skips_embedding():
    v = np.zeros((4, 4, 1))
    v[:, 0, 0] = 10.0     # embedding: largest but anonymous
    v[:, 1, 0] = [1, -1, 1, -1]
    v[:, 2, 0] = 3.0
    r = readable_importance(v, ["emb_pc1", "nucleus_area", "hematoxylin_mean", "x_norm"],
                            ["embedding", "morphology", "stain", "position"], 0)
    assert [x["feature"] for x in r] == ["hematoxylin_mean", "nucleus_area", "x_norm"]
    assert r[1]["importance"] == 1.0 and r[1]["mean_attribution"] == 0.0


def _ma(model, features, groups, n=3, g=2, seed=0, fold=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, len(features), g)).astype(np.float32)
    base = rng.normal(size=g)
    return ModelAttributions(
        model=model, cell_id=np.array([f"c{seed}_{i}" for i in range(n)], dtype=object),
        sample=np.array(["S"] * n, dtype=object), fold=np.full(n, fold), genes=["A", "B"][:g],
        features=list(features), groups=list(groups), values=v,
        base=np.broadcast_to(base, (n, g)).copy(), prediction=(base + v.sum(1)).astype(np.float32),
        inputs=rng.normal(size=(n, len(features))).astype(np.float32))


def test_concat_aligns_fold_features_and_keeps_additivity():
    a = _ma("m", ["e1", "tissue=A", "x_norm"], ["embedding", "tissue", "position"], seed=1)
    b = _ma("m", ["e1", "tissue=B", "x_norm"], ["embedding", "tissue", "position"], seed=2, fold=1)
    c = concat([a, b])
    assert c.features == ["e1", "tissue=A", "x_norm", "tissue=B"]
    assert c.values.shape == (6, 4, 2)
    assert np.all(c.values[:3, 3] == 0) and np.all(c.values[3:, 1] == 0)
    assert np.isnan(c.inputs[:3, 3]).all()
    np.testing.assert_allclose(c.base + c.values.sum(1), c.prediction, atol=1e-5)


def test_attributions_h5_roundtrip(tmp_path):
    a = _ma("ridge", ["e1", "nucleus_area"], ["embedding", "morphology"], n=4)
    a.mask_aggregate = np.full((4, 2), 0.5, dtype=np.float32)
    a.mask_steps = np.full((3, 4, 2), 0.5, dtype=np.float32)
    p = write_attributions(tmp_path / "attributions.h5", [a], attrs={"best_model": "ridge"})
    with h5py.File(p, "r") as f:
        g = f["ridge"]
        for k in ("cell_id", "genes", "features", "groups", "values", "base", "prediction"):
            assert k in g and g[k].attrs["description"]
        assert g["values"].dtype == np.float32 and g["values"].shape == (4, 2, 2)
        assert g["mask_steps"].shape == (3, 4, 2)
    back = read_attributions(p)["ridge"]
    assert list(back.cell_id) == list(a.cell_id) and back.features == a.features
    np.testing.assert_allclose(back.values, a.values)
    assert not list(tmp_path.glob(".*tmp*"))


def _folds_ma(scale_per_fold, cells_per_fold=4):
    """Attributions of one model over folds 0..k-1, fold j's values scaled by scale_per_fold[j]."""
    parts = [_ma("m", ["e1", "x_norm"], ["embedding", "position"], n=cells_per_fold, seed=j,
                 fold=j) for j in range(len(scale_per_fold))]
    for p, sc in zip(parts, scale_per_fold):
        p.values = p.values * np.float32(sc)
    return concat(parts)


def test_fold_shares_and_dominance_flag():
    r = _folds_ma([1.0, 1.0, 1.0, 1.0])
    folds, shares, cells = fold_shares(r.values, r.fold)
    assert folds == [0, 1, 2, 3] and cells.tolist() == [4, 4, 4, 4]
    np.testing.assert_allclose(shares.sum(0), 1.0)
    mass = np.abs(r.values.astype(np.float64)).sum(1)
    np.testing.assert_allclose(shares[2], mass[r.fold == 2].sum(0) / mass.sum(0))
    assert dominant_fold(shares) == [None, None]            # no fold above 50 %
    r = _folds_ma([1.0, 1.0, 40.0])                         # fold 2's model attributes 40x more
    _, shares, _ = fold_shares(r.values, r.fold)
    assert (shares[2] > DOMINANCE_SHARE).all()
    assert dominant_fold(shares) == [2, 2]
    r = _folds_ma([1.0, 40.0])                              # 2 folds: one always holds >= 50 %
    _, shares, _ = fold_shares(r.values, r.fold)
    assert (shares[1] > DOMINANCE_SHARE).all() and dominant_fold(shares) == [None, None]
    r = _folds_ma([0.0, 0.0, 0.0])                          # a constant model: no mass, no flag
    _, shares, _ = fold_shares(r.values, r.fold)
    assert np.isnan(shares).all() and dominant_fold(shares) == [None, None]
    # a fold with most of the cells but the same mass per cell is not flagged for its size
    parts = [_ma("m", ["e1", "x_norm"], ["embedding", "position"], n=n, seed=0, fold=j)
             for j, n in enumerate([12, 2, 2])]
    for q in parts:
        q.values = np.ones_like(q.values)
    r = concat(parts)
    _, shares, cells = fold_shares(r.values, r.fold)
    assert cells.tolist() == [12, 2, 2] and (shares[0] > DOMINANCE_SHARE).all()
    assert dominant_fold(shares, cells) == [None, None]
    assert dominant_fold(shares) == [0, 0]                   # the raw share alone would flag it
    big = _folds_ma([1.0, 1.0, 40.0], cells_per_fold=2)
    _, shares, cells = fold_shares(big.values, big.fold)
    assert dominant_fold(shares, cells) == [2, 2]


def test_fold_dominance_in_h5_and_report(tmp_path):
    from tabst.explain.report import ReportInputs, render_report

    r = _folds_ma([1.0, 1.0, 40.0])
    r.sample = np.array([f"S{k}" for k in r.fold], dtype=object)
    p = write_attributions(tmp_path / "a.h5", [r], attrs={"unit": "spot"})
    with h5py.File(p, "r") as f:
        assert f["m/dominant_fold"][()].tolist() == [2, 2]
        assert f["m/fold_cells"][()].tolist() == [4, 4, 4]
        assert "more than 50%" in f.attrs["fold_dominance_rule"]
    html, _ = render_report({"m": r}, ["A", "B"], ReportInputs(best_model="m", unit="spot"))
    assert "from fold 2 (held-out S2), which holds 33% of the explained spots" in html
    assert html.count("⚠</b>") == 2                        # the dominant cell of each gene table


def test_ig_residual_rule_hides_model_from_headline_charts():
    from tabst.explain.report import ReportInputs, _context

    assert not residual_too_large(None) and not residual_too_large(float("nan"))
    assert not residual_too_large(IG_RESIDUAL_LIMIT) and residual_too_large(IG_RESIDUAL_LIMIT * 2)
    fe, gr = ["e1", "x_norm"], ["embedding", "position"]
    res = {"exact": _ma("exact", fe, gr), "ig_ok": _ma("ig_ok", fe, gr, seed=1),
           "ig_bad": _ma("ig_bad", fe, gr, seed=2)}
    res["ig_ok"].ig_residual, res["ig_bad"].ig_residual = 0.01, 950.0
    for r in res.values():
        r.fold = np.array([0, 1, 2])
    hidden = residual_notes(res)
    assert list(hidden) == ["ig_bad"] and "950" in hidden["ig_bad"]
    assert "residual before the correction: 0.01" in res["ig_ok"].method
    assert "residual" not in res["exact"].method             # exact methods: no residual
    ctx = _context(res, ["A", "B"], ReportInputs(best_model="exact", hidden=hidden), 3, "x")
    titles = [h["title"] for h in ctx["cross"]["heatmaps"]]
    assert titles == ["Share of |attribution| per group: exact",
                      "Share of |attribution| per group: ig_ok"]
    assert hidden["ig_bad"] in ctx["warnings"]
    assert [m["hidden"] for m in ctx["models"]] == [False, False, True]
    assert all(sec["folds"]["models"] == ["exact", "ig_ok"] for sec in ctx["genes"])


# ------------------------------------------------------------------------------ end to end
def test_run_explain_outputs(tiny_run, explained):
    run = tiny_run
    meta = json.loads((run / "run.json").read_text())
    test_samples = {f["fold"]: set(f["test_samples"]) for f in meta["folds"]}
    with h5py.File(run / "attributions.h5", "r") as f:
        assert f.attrs["best_model"] in f
        # mean is skipped (constant); every other model is there
        assert set(f.keys()) == {"ridge", "tree", "xgboost", "tabnet"}
        for _name, g in f.items():
            n = g["cell_id"].shape[0]
            genes = g["genes"].asstr()[()]
            F = g["features"].shape[0]
            assert g["values"].shape == (n, F, len(genes)) and len(genes) == 2
            assert g["groups"].shape == (F,)
            assert 40 <= n <= 50
            v, base, pred = g["values"][()], g["base"][()], g["prediction"][()]
            np.testing.assert_allclose(base + v.astype(np.float64).sum(1), pred,
                                       atol=2e-3, rtol=1e-3)
            assert g.attrs["max_additivity_error"] < 2e-3
            # honest: every cell was explained by the fold model that held its sample out
            for s, k in zip(g["sample"].asstr()[()], g["fold"][()]):
                assert s in test_samples[int(k)]
            groups = set(g["groups"].asstr()[()])
            assert {"embedding", "morphology", "stain", "position"} <= groups
        assert "mask_aggregate" in f["tabnet"] and "mask_steps" in f["tabnet"]
        # a model whose integrated-gradients correction is large is kept out of the charts
        hidden = json.loads(f.attrs["hidden_from_charts"])
        assert set(hidden) == {m for m in f if f[m].attrs["ig_total_residual"] > IG_RESIDUAL_LIMIT}
        assert np.isfinite(f["tabnet"].attrs["ig_total_residual"])
        assert all(np.isnan(f[m].attrs["ig_total_residual"]) for m in ("ridge", "tree", "xgboost"))
        # per-fold shares of every model: 3 folds, columns sum to 1
        for m in f:
            assert f[m]["fold_share"].shape == (3, 2)
            np.testing.assert_allclose(f[m]["fold_share"][()].sum(0), 1.0, atol=1e-9)
        # a cell store: cells, and the patch size the embedding recorded
        assert f.attrs["unit"] == "cell" and f.attrs["patch_size"] == "--patch-size 32"
        # each gene's panels use the shown model with the best gene-wise Pearson on it
        genes = [str(g) for g in f.attrs["genes"]]
        per_gene = [str(m) for m in f.attrs["best_model_per_gene"]]
        explained_models = [m for m in f.keys() if m not in hidden]
    pg = pd.read_csv(run / "per_gene.csv")
    for gene, model in zip(genes, per_gene):
        sc = pg[(pg.gene == gene) & pg.model.isin(explained_models)]
        assert sc.set_index("model").pearson_mean[model] == sc.pearson_mean.max()
        assert top_readable_feature(run, gene) == top_readable_feature(run, gene, model)
    html = explained.read_text()
    # the reloaded fold models reproduced predictions.h5 (else a warning is shown)
    assert "differ from predictions.h5" not in html
    assert "RANDOM encoder weights" in html  # the tiny store's embedding says weights=random
    assert "held-out cells drawn at random" in html and "spots" not in html
    assert "resolved per sample: S0 32 px, S1 32 px, S2 32 px" in html
    assert "Share of the |attribution| mass per fold" in html
    for note in hidden.values():
        assert note in html


def test_report_offline_and_under_budget(explained):
    html = explained.read_text()
    assert explained.stat().st_size <= 5 * 1024 * 1024
    assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I)
    assert not re.search(r"<(script|link)[^>]*src=", html, re.I)
    srcs = re.findall(r'src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for needle in ("Which feature groups drive", "Top named features", "Dependence",
                   "highest predicted", "Decision tree rules", "Cross-gene view",
                   "TabNet: attention masks vs", "Mask per decision step",
                   "Aggregate mask per sample", "Aggregate mask per tissue"):
        assert needle in html, needle


def test_report_renders_in_headless_chromium(explained, tmp_path):
    """No page errors, every image decodes, the page lays out (probe reports into the DOM)."""
    out = render_probe(explained.read_text(), tmp_path)
    assert out["errors"] == []
    assert out["n"] > 10 and out["decoded"] == out["n"], out


def test_size_budget_shrinks_report(tiny_run, explained):
    from tabst.explain.report import ReportInputs, render_report

    results = read_attributions(tiny_run / "attributions.h5", ["ridge"])
    genes = results["ridge"].genes[:1]
    patch = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    inp = ReportInputs(run_name="t", best_model="ridge", mode_text="x",
                       patches={str(c): patch for c in results["ridge"].cell_id})
    full, level = render_report(results, genes, inp, max_bytes=50 * 1024 * 1024)
    assert level == 0
    budget = len(full.encode()) - 20_000  # just under the full size: the gallery must shrink
    small, level = render_report(results, genes, inp, max_bytes=budget)
    assert level >= 1 and len(small.encode()) <= budget
    assert "size budget" in small


def test_top_readable_feature_finds_the_driver(tiny_run, explained):
    """The tiny store adds 0.02·(nucleus_area − 100) to every gene: the best model must say so."""
    from tabst.explain import readable_ranking, top_readable_feature

    with h5py.File(tiny_run / "attributions.h5", "r") as f:
        genes = list(f["ridge/genes"].asstr()[()])
    for g in genes:
        assert top_readable_feature(tiny_run, g, "ridge") == "nucleus_area"
    r = readable_ranking(tiny_run / "attributions.h5", genes[0], "ridge", top=3)
    assert len(r) == 3 and r[0]["group"] == "morphology"
    with pytest.raises(TabstError, match="was not explained"):
        top_readable_feature(tiny_run, "NOT_A_GENE", "ridge")


# ------------------------------------------------------------------------------ CLI
def test_cli_explain(tiny_run, tmp_path):
    from tabst_cli.app import app

    tiny_run = shutil.copytree(tiny_run, tmp_path / "run")  # keep the shared run untouched
    runner = CliRunner()
    out = tmp_path / "e.html"
    r = runner.invoke(app, ["explain", str(tiny_run), "--genes", "GENE1", "--top-genes", "0",
                            "--models", "ridge,tree", "--cells", "20", "--gallery", "2",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.exists() and "GENE1" in out.read_text()
    with h5py.File(tiny_run / "attributions.h5", "r") as f:
        assert set(f.keys()) == {"ridge", "tree"}
        assert list(f["ridge/genes"].asstr()[()]) == ["GENE1"]
        assert f["ridge/cell_id"].shape[0] <= 21

    r = runner.invoke(app, ["explain", str(tiny_run), "--genes", "NOPE", "--out", str(out)])
    assert r.exit_code == 1 and "NOPE" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["explain", str(tiny_run), "--models", "lasso", "--out", str(out)])
    assert r.exit_code == 1 and "lasso" in r.output
    r = runner.invoke(app, ["explain", str(tmp_path / "nope"), "--out", str(out)])
    assert r.exit_code == 1 and "no such run folder" in r.output


def test_refit_mode_is_flagged(tiny_run, tmp_path):
    from tabst.explain import run_explain

    tiny_run = shutil.copytree(tiny_run, tmp_path / "run")
    p = run_explain(tiny_run, genes=["GENE2"], top_genes=0, models=["ridge"], cells=15,
                    refit=True, gallery=0, out=tmp_path / "r.html", show_progress=False)
    html = p.read_text()
    assert "REFITTED ON ALL ROWS" in html and "in-sample" in html
    with h5py.File(tiny_run / "attributions.h5", "r") as f:
        assert set(f["ridge/fold"][()]) == {-1}
