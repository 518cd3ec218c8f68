"""`tabst compare`: config validation, outputs, failure isolation, and no leakage across folds."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import write_tiny_store
from tabst_cli.app import app
from typer.testing import CliRunner

from tabst.compare import run_compare
from tabst.config import load_config, parse_override
from tabst.errors import TabstError
from tabst.evaluate import cellwise_spearman, genewise_pearson, mse
from tabst.models import REGISTRY

# tiny, fast parameters for every model of the registry
FAST = {
    "features": {"embedding": {"name": "auto", "pca": 6}},
    "params": {
        "ridge": {"alphas": [0.1, 1.0, 10.0, 100.0]},
        "tree": {"max_depth": 3, "codec_k": 3, "min_samples_leaf": 5},
        "xgboost": {"n_estimators": 6, "n_jobs": 1, "codec_k": 3, "early_stopping_rounds": 3},
        "tabnet": {"max_epochs": 2, "pretrain": False, "batch_size": 32, "virtual_batch_size": 16,
                   "n_d": 4, "n_a": 4, "n_steps": 1, "codec_k": 3, "patience": 2},
    },
    "report": {"n_map_genes": 2, "dpi": 60},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    return write_tiny_store(d / "tiny.h5", n_samples=3, cells_per_sample=40, n_genes=8, emb_dim=10)


def _cfg(tmp_path, **extra) -> str:
    cfg = {**FAST, **extra}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


# ------------------------------------------------------------------------------ config
def test_config_presets_and_overrides():
    c = load_config("crunch1", ["ridge.alphas=[0.1,1,10]", "folds=group-kfold:2",
                                "report.dpi=80"])
    assert c["params"]["ridge"]["alphas"] == [0.1, 1, 10]
    assert c["folds"] == "group-kfold:2" and c["report"]["dpi"] == 80
    assert c["primary_metric"] == "cellwise_spearman"
    assert c["embed"]["patch_size"] == 32 and c["embed"]["layer"] == "layer3"
    h = load_config("hest")
    assert h["primary_metric"] == "genewise_pearson"
    assert h["embed"]["patch_size"] == 224 and h["features"]["embedding"]["pca"] == 256
    assert load_config("default", models="ridge")["models"] == ["mean", "ridge"]  # mean always
    assert parse_override("xgboost.n_estimators=5", REGISTRY) == (
        ["params", "xgboost", "n_estimators"], 5)
    # an "auto" default takes "auto" or a number
    assert load_config("default", ["tabnet.batch_size=512"])["params"]["tabnet"]["batch_size"] == 512
    assert load_config("default", ["tabnet.batch_size=auto"])["params"]["tabnet"][
        "batch_size"] == "auto"


@pytest.mark.parametrize("overrides, key", [
    (["colour=red"], "'colour'"),
    (["seed=abc"], "'seed'"),
    (["ridge.nonsense=1"], "params.ridge.nonsense"),
    (["xgboost.n_estimators=many"], "params.xgboost.n_estimators"),
    (["tabnet.batch_size=[1]"], "params.tabnet.batch_size"),
    (["tabnet.batch_size=big"], "params.tabnet"),
    (["ridge.precision=float16"], "params.ridge"),
    (["report.dpi=high"], "report.dpi"),
    (["report.fontsize=3"], "report.fontsize"),
    (["folds=kfold"], "'folds'"),
    (["folds=random:3"], "'folds'"),
    (["primary_metric=r2"], "'primary_metric'"),
    (["features.colours=1"], "'features'"),
    (["nope"], "KEY=VALUE"),
])
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(TabstError) as e:
        load_config("default", overrides)
    assert key in str(e.value)


def test_unknown_model_lists_the_registry(tmp_path, store):
    with pytest.raises(TabstError) as e:
        load_config("default", models="ridge,lasso")
    assert "'models'" in str(e.value) and "lasso" in str(e.value)
    for name in REGISTRY:
        assert name in str(e.value)
    r = CliRunner().invoke(app, ["compare", store, "--models", "lasso", "--out",
                                 str(tmp_path / "r")])
    assert r.exit_code == 1 and "lasso" in r.output and "xgboost" in r.output
    assert not (tmp_path / "r").exists()


def test_unknown_config_file_and_preset(tmp_path):
    with pytest.raises(TabstError, match="Presets: .*crunch1"):
        load_config("nosuchpreset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: ridge\n")
    with pytest.raises(TabstError, match="'models' must be a list"):
        load_config(str(bad))


# ------------------------------------------------------------------------------ full CLI run
def test_cli_compare_all_models_produces_all_outputs(tmp_path, store):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["compare", store, "--config", _cfg(tmp_path), "--models",
                                 "ridge,tree,xgboost,tabnet", "--out", str(out),
                                 "--set", "seed=3"])
    assert r.exit_code == 0, r.output
    assert "report:" in r.output and "ridge" in r.output
    for name in ("leaderboard.csv", "per_gene.csv", "per_sample.csv", "per_fold.csv",
                 "predictions.h5", "config.yaml", "run.json", "report.html"):
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".run.tmp*"))
    lb = pd.read_csv(out / "leaderboard.csv")
    assert set(lb["model"]) == {"mean", "ridge", "tree", "xgboost", "tabnet"}
    assert (lb["status"] == "ok").all(), lb[["model", "error"]]
    for col in ("cellwise_spearman_mean", "cellwise_spearman_sd", "genewise_pearson_mean",
                "genewise_pearson_sd", "mse_mean", "mse_sd", "fit_seconds", "predict_seconds",
                "peak_mem_mb", "n_features", "codec"):
        assert col in lb.columns
    assert list(lb["rank"]) == [1, 2, 3, 4, 5]
    v = lb["cellwise_spearman_mean"].to_numpy()
    assert (np.diff(v) <= 1e-12).all()  # sorted by the primary metric, higher first
    assert lb.set_index("model").loc["xgboost", "codec"] == "pca3"
    assert lb.set_index("model").loc["xgboost", "label"] == "xgboost+pca3"
    # the tiny data is linear: ridge must beat the mean baseline on gene-wise Pearson
    g = lb.set_index("model")["genewise_pearson_mean"]
    assert g["ridge"] > 0.5 and g["mean"] == 0.0

    # predictions.h5: every number can be recomputed from it
    run = json.loads((out / "run.json").read_text())
    with h5py.File(out / "predictions.h5") as f:
        genes = f["genes"].asstr()[()]
        assert len(genes) == 8
        folds = sorted(k for k in f if k.startswith("fold_"))
        assert len(folds) == 3
        cs = []
        for k in folds:
            g_ = f[k]
            n = g_["cell_id"].shape[0]
            assert g_["truth"].shape == (n, 8) and g_["x"].shape == (n,)
            assert set(g_["pred"]) == {"mean", "ridge", "tree", "xgboost", "tabnet"}
            assert len(set(g_["sample"].asstr()[()])) == 1  # leave-one-sample-out
            t, p, s = g_["truth"][()], g_["pred/ridge"][()], g_["sample"].asstr()[()]
            cs.append((cellwise_spearman(t, p, s), genewise_pearson(t, p), mse(t, p, s)))
    ridge = lb.set_index("model").loc["ridge"]
    cs = np.asarray(cs)
    assert ridge["cellwise_spearman_mean"] == pytest.approx(cs[:, 0].mean())
    assert ridge["cellwise_spearman_sd"] == pytest.approx(cs[:, 0].std(ddof=1))
    assert ridge["genewise_pearson_mean"] == pytest.approx(cs[:, 1].mean())
    assert ridge["mse_mean"] == pytest.approx(cs[:, 2].mean())

    pg = pd.read_csv(out / "per_gene.csv")
    assert len(pg) == 5 * 8 and {"pearson_fold_0", "pearson_mean"} <= set(pg.columns)
    ps = pd.read_csv(out / "per_sample.csv")
    assert len(ps) == 5 * 3 and set(ps["sample"]) == {"S0", "S1", "S2"}

    # fitted models per fold + a refit on all rows with its feature builder
    from tabst.dataset import FeatureBuilder
    from tabst.models.base import TabstModel

    for m in ("mean", "ridge", "tree", "xgboost", "tabnet"):
        for k in ("fold_0", "fold_1", "fold_2", "all"):
            assert (out / "models" / m / k / "model.json").is_file(), (m, k)
    fb = FeatureBuilder.load(out / "features" / "all")
    model = TabstModel.load(out / "models" / "ridge" / "all")
    P = model.predict(fb.transform(store, np.arange(5)))
    assert P.shape == (5, 8) and np.isfinite(P).all()

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["seed"] == 3 and cfg["models"][0] == "mean"
    assert run["seeds"]["seed"] == 3 and run["unsafe_random_split"] is False
    assert run["embedding"]["name"] == "test" and run["embedding"]["attrs"]["weights"] == "random"
    assert run["versions"]["numpy"] and run["store"]["n_genes"] == 8
    assert [f_["test_samples"] for f_ in run["folds"]] == [["S0"], ["S1"], ["S2"]]
    # which features fed the models and which column the folds kept together (for the report)
    assert run["features"]["used_groups"] == ["embedding", "tissue", "position", "morphology",
                                              "stain"]
    assert run["features"]["position"]["used"] is True  # auto on a cell store
    # fold 1 trains on S0 + S2, both tissueA: that one-hot column is constant there, dropped
    assert run["features"]["dropped_constant"] == {
        "0": [], "1": [{"name": "tissue=tissueA", "group": "tissue", "value": 1.0}], "2": []}
    assert run["group_column"] is None and run["group_column_config"] == "auto"
    assert "no /cells/patient" in run["fold_unit"] and "no /cells/patient" in r.output


def test_existing_out_needs_force(tmp_path, store):
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = CliRunner().invoke(app, ["compare", store, "--models", "ridge", "--out", str(out)])
    assert r.exit_code == 1 and "--force" in r.output
    assert (out / "keep.txt").exists()


def test_failure_leaves_nothing_half_written(tmp_path, store):
    out = tmp_path / "r"
    with pytest.raises(TabstError, match="nosuch"):
        run_compare(store, {**FAST, "models": ["ridge"], "embedding": "nosuch"}, out,
                    show_progress=False)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_failing_model_is_recorded_and_others_go_on(tmp_path, store, monkeypatch):
    from tabst.models.tree import TreeModel

    def boom(self, X, Z, groups):
        raise RuntimeError("synthetic tree failure")

    monkeypatch.setattr(TreeModel, "_fit", boom)
    out = run_compare(store, {**FAST, "models": ["ridge", "tree"]}, tmp_path / "r",
                      show_progress=False)
    lb = pd.read_csv(out / "leaderboard.csv").set_index("model")
    assert lb.loc["tree", "status"] == "failed"
    assert "synthetic tree failure" in lb.loc["tree", "error"]
    assert lb.loc["ridge", "status"] == "ok" and lb.loc["mean", "status"] == "ok"
    assert lb.loc["tree", "rank"] == 3  # failed models sort last
    log = (out / "logs" / "tree.log").read_text()
    assert "Traceback" in log and "synthetic tree failure" in log
    run = json.loads((out / "run.json").read_text())
    assert run["refit"]["tree"]["status"] == "skipped"
    html = (out / "report.html").read_text()
    assert "synthetic tree failure" in html


def test_group_kfold_and_unsafe_random_split(tmp_path):
    st = write_tiny_store(tmp_path / "four.h5", n_samples=4, cells_per_sample=20, n_genes=5,
                          emb_dim=6)
    out = run_compare(st, {**FAST, "models": ["ridge"]}, tmp_path / "gk", folds="group-kfold:2",
                      show_progress=False)
    run = json.loads((out / "run.json").read_text())
    assert len(run["folds"]) == 2
    assert sorted(s for f in run["folds"] for s in f["test_samples"]) == ["S0", "S1", "S2", "S3"]

    r = CliRunner().invoke(app, ["compare", st, "--config", _cfg(tmp_path), "--models", "ridge",
                                 "--unsafe-random-split", "--out", str(tmp_path / "un")])
    assert r.exit_code == 0, r.output
    assert "UNSAFE" in r.output
    run = json.loads((tmp_path / "un" / "run.json").read_text())
    assert run["unsafe_random_split"] is True and run["folds_scheme"].startswith("random:")
    with h5py.File(tmp_path / "un" / "predictions.h5") as f:
        assert bool(f.attrs["unsafe_random_split"])
        assert len(set(f["fold_0/sample"].asstr()[()])) > 1  # cells of several samples
    assert 'id="banner-unsafe"' in (tmp_path / "un" / "report.html").read_text()


# ------------------------------------------------------------------------------ leakage
def test_everything_learned_sees_training_rows_only(tmp_path, store, monkeypatch):
    """Spy on every fit: the feature builder and the models only ever see training rows."""
    from tabst.dataset import FeatureBuilder
    from tabst.models.base import TabstModel

    samples = np.repeat(["S0", "S1", "S2"], 40)
    fb_rows, model_groups = [], []
    orig_fb_fit, orig_m_fit = FeatureBuilder.fit, TabstModel.fit

    def fb_fit(self, store_, rows):
        fb_rows.append(np.asarray(rows).copy())
        return orig_fb_fit(self, store_, rows)

    def m_fit(self, X, Y, groups=None, **kw):
        model_groups.append((type(self).name, len(X), np.asarray(groups).copy()))
        return orig_m_fit(self, X, Y, groups, **kw)

    monkeypatch.setattr(FeatureBuilder, "fit", fb_fit)
    monkeypatch.setattr(TabstModel, "fit", m_fit)
    out = run_compare(store, {**FAST, "models": ["ridge"]}, tmp_path / "r", show_progress=False)
    run = json.loads((out / "run.json").read_text())
    assert len(fb_rows) == 4  # 3 folds + the refit on all rows
    for f, rows in zip(run["folds"], fb_rows[:3]):
        held = f["test_samples"]
        assert not set(samples[rows]) & set(held)
        assert len(rows) == f["n_train"]
    assert len(fb_rows[3]) == 120  # refit: all rows, by design
    fold_fits = [g for g in model_groups if g[1] == 80]
    assert len(fold_fits) == 6  # mean + ridge per fold
    for (_, _n, groups), f in zip(fold_fits[::2], run["folds"]):
        assert not set(groups) & set(f["test_samples"])


def test_perturbing_test_sample_does_not_change_fold_fit(tmp_path, store):
    """Scramble the held-out sample's embedding, features and expression: the fold's fitted
    transforms and model must not change (they would if test rows leaked into any fit)."""
    st2 = tmp_path / "perturbed.h5"
    shutil.copy(store, st2)
    rng = np.random.default_rng(7)
    with h5py.File(st2, "r+") as f:
        s0 = np.flatnonzero(f["cells/sample"].asstr()[()] == "S0")
        for key in ("embeddings/test", "features/morphology", "expression/X"):
            ds = f[key]
            a = ds[()]
            a[s0] = rng.normal(5, 3, size=a[s0].shape).astype(a.dtype)
            if key == "expression/X":
                a[s0] = np.abs(a[s0])
            ds[...] = a
    cfg = {**FAST, "models": ["ridge"], "refit_all": False}
    a = run_compare(store, cfg, tmp_path / "a", show_progress=False, render=False)
    b = run_compare(st2, cfg, tmp_path / "b", show_progress=False, render=False)
    fold0 = json.loads((a / "run.json").read_text())["folds"][0]
    assert fold0["test_samples"] == ["S0"]
    with np.load(a / "features/fold_0/features.npz") as za, \
            np.load(b / "features/fold_0/features.npz") as zb:
        np.testing.assert_array_equal(za["pca_mean"], zb["pca_mean"])
        np.testing.assert_array_equal(za["pca_components"], zb["pca_components"])
    with np.load(a / "models/ridge/fold_0/state.npz") as za, \
            np.load(b / "models/ridge/fold_0/state.npz") as zb:
        assert set(za.files) == set(zb.files)
        for k in za.files:
            np.testing.assert_array_equal(za[k], zb[k], err_msg=k)
    # ... whereas the folds that train on S0 do change (the test above is not vacuous)
    with np.load(a / "features/fold_1/features.npz") as za, \
            np.load(b / "features/fold_1/features.npz") as zb:
        assert not np.array_equal(za["pca_mean"], zb["pca_mean"])


# ------------------------------------------------------------------------------ gene selection
def _scramble(src, dst, sample, gene=None, seed=3):
    """Copy the store; give ``sample`` random expression (all genes, or one gene with a large
    spread)."""
    shutil.copy(src, dst)
    rng = np.random.default_rng(seed)
    with h5py.File(dst, "r+") as f:
        rows = np.flatnonzero(f["cells/sample"].asstr()[()] == sample)
        a = f["expression/X"][()]
        if gene is None:
            a[rows] = np.abs(rng.normal(2, 3, size=a[rows].shape))
        else:
            a[rows, gene] = np.abs(rng.normal(0, 20, size=len(rows)))
        f["expression/X"][...] = a
    return dst


def _fold_genes(run_dir):
    with h5py.File(run_dir / "predictions.h5") as f:
        return {k: list(f[k]["genes"].asstr()[()]) for k in sorted(f) if k.startswith("fold_")}


def test_hvg_is_chosen_on_training_rows_only(tmp_path, store):
    """The HVG set of fold 0 (S0 held out) ignores S0's expression, but follows S1's."""
    from tabst.genes import gene_moments, select_genes

    sel = {"select": "hvg", "k": 3, "flavor": "variance", "file": None}
    genes = [f"GENE{i}" for i in range(8)]
    with h5py.File(store) as f:
        samples = f["cells/sample"].asstr()[()]
        X = f["expression/X"][()].astype(np.float64)
    train0 = np.flatnonzero(samples != "S0")
    # exactly the top-3 sample variance (ddof 1) of the stored values over the training rows
    n, mu, var = gene_moments(store, train0, batch_size=7)
    np.testing.assert_allclose(var, X[train0].var(axis=0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(mu, X[train0].mean(axis=0), rtol=1e-10)
    want = np.sort(np.argsort(-X[train0].var(axis=0, ddof=1))[:3])
    np.testing.assert_array_equal(select_genes(store, train0, sel, genes), want)
    low = int(np.argsort(X[train0].var(axis=0))[0])  # least variable gene: not selected

    cfg = {**FAST, "models": ["ridge"], "refit_all": False, "genes": {"select": "hvg", "k": 3}}
    a = run_compare(store, cfg, tmp_path / "a", show_progress=False, render=False)
    held = _scramble(store, tmp_path / "held.h5", "S0")
    b = run_compare(held, cfg, tmp_path / "b", show_progress=False, render=False)
    train = _scramble(store, tmp_path / "train.h5", "S1", gene=low)
    c = run_compare(train, cfg, tmp_path / "c", show_progress=False, render=False)
    ga, gb, gc = _fold_genes(a), _fold_genes(b), _fold_genes(c)
    assert ga["fold_0"] == [genes[i] for i in want]
    assert gb["fold_0"] == ga["fold_0"]  # held-out expression cannot choose the genes
    assert gb["fold_1"] != ga["fold_1"] or gb["fold_2"] != ga["fold_2"]  # S0 trains these
    assert genes[low] in gc["fold_0"] and gc["fold_0"] != ga["fold_0"]  # a training sample does
    with np.load(a / "models/ridge/fold_0/state.npz") as za, \
            np.load(b / "models/ridge/fold_0/state.npz") as zb:
        for k in za.files:
            np.testing.assert_array_equal(za[k], zb[k], err_msg=k)


def test_hvg_outputs_recompute_the_leaderboard_and_feed_explain_and_predict(tmp_path, store):
    from tabst.explain.run import explain_run
    from tabst.predict import predict_submission

    out = run_compare(store, {**FAST, "models": ["ridge", "tree"],
                              "genes": {"select": "hvg", "k": 4, "flavor": "seurat"}},
                      tmp_path / "r", show_progress=False)
    lb = pd.read_csv(out / "leaderboard.csv").set_index("model")
    pg = pd.read_csv(out / "per_gene.csv")
    pf = pd.read_csv(out / "per_fold.csv")
    run = json.loads((out / "run.json").read_text())
    gs = run["gene_selection"]
    assert gs["select"] == "hvg" and gs["flavor"] == "seurat" and gs["n_store_genes"] == 8
    assert set(gs["n_per_fold"].values()) == {4} and gs["n_refit"] == 4
    assert (pf["n_genes"] == 4).all() and lb.loc["ridge", "genes"].startswith("hvg:4 seurat")
    with h5py.File(out / "predictions.h5") as f:
        root = list(f["genes"].asstr()[()])
        assert len(root) == gs["n_union"] and 4 <= len(root) <= 8
        cs, per_gene = [], {}
        for k in sorted(x for x in f if x.startswith("fold_")):
            g_ = f[k]
            fg = list(g_["genes"].asstr()[()])
            assert [root[i] for i in g_["gene_index"][()]] == fg
            t, p, s = g_["truth"][()], g_["pred/ridge"][()], g_["sample"].asstr()[()]
            assert t.shape[1] == p.shape[1] == 4
            cs.append((cellwise_spearman(t, p, s), genewise_pearson(t, p), mse(t, p, s)))
            for j, gene in enumerate(fg):
                per_gene.setdefault(gene, []).append(np.corrcoef(t[:, j], p[:, j])[0, 1])
    cs = np.asarray(cs)
    assert lb.loc["ridge", "cellwise_spearman_mean"] == pytest.approx(cs[:, 0].mean())
    assert lb.loc["ridge", "genewise_pearson_mean"] == pytest.approx(cs[:, 1].mean())
    assert lb.loc["ridge", "mse_mean"] == pytest.approx(cs[:, 2].mean())
    r = pg[pg["model"] == "ridge"].set_index("gene")
    assert set(r.index) == set(per_gene)  # rows only for genes some fold selected
    for gene, v in per_gene.items():
        assert r.loc[gene, "n_folds"] == len(v)
        assert r.loc[gene, "pearson_mean"] == pytest.approx(np.mean(v), abs=1e-6)
    html = (out / "report.html").read_text()
    assert "highly variable" in html and "training rows only" in html

    # explain: fold models, genes selected in every fold only
    res, info = explain_run(out, cells=20, top_genes=2, models=["ridge"], show_progress=False)
    common = set.intersection(*(set(v) for v in _fold_genes(out).values()))
    assert info["genes"] and set(info["genes"]) <= common
    assert not [w for w in info["warnings"] if "differ" in w]  # reloaded models reproduce
    res, info = explain_run(out, cells=10, top_genes=1, models=["ridge"], refit=True,
                            show_progress=False)
    assert res["ridge"].values.shape[-1] == len(info["genes"])
    # predict: the refit model's genes only
    sub = predict_submission(out, store, tmp_path / "sub.csv", model="ridge", group="all",
                             show_progress=False)
    assert sub.n_genes == 4
    got = pd.read_csv(tmp_path / "sub.csv")
    assert got["gene"].nunique() == 4 and set(got["gene"]) <= set(f"GENE{i}" for i in range(8))


def test_gene_list_selection_and_unknown_genes(tmp_path, store):
    lst = tmp_path / "genes.txt"
    lst.write_text("# my panel\nGENE5\nGENE1\n\nGENE6  # trailing comment\n")
    out = run_compare(store, {**FAST, "models": ["ridge"],
                              "genes": {"select": "list", "file": str(lst)}},
                      tmp_path / "r", show_progress=False, render=False)
    assert all(v == ["GENE1", "GENE5", "GENE6"] for v in _fold_genes(out).values())
    with h5py.File(out / "predictions.h5") as f:
        assert list(f["genes"].asstr()[()]) == ["GENE1", "GENE5", "GENE6"]
        assert f["fold_0/pred/ridge"].shape[1] == 3
    run = json.loads((out / "run.json").read_text())
    assert run["gene_selection"]["file_sha256"] and run["store"]["n_genes"] == 8
    from tabst.models.base import TabstModel

    assert TabstModel.load(out / "models/ridge/all").target_names_ == ["GENE1", "GENE5", "GENE6"]
    assert set(pd.read_csv(out / "per_gene.csv")["gene"]) == {"GENE1", "GENE5", "GENE6"}

    bad = tmp_path / "bad.txt"
    bad.write_text("GENE1\nACTB\ngene2\n")
    with pytest.raises(TabstError) as e:
        run_compare(store, {**FAST, "models": ["ridge"],
                            "genes": {"select": "list", "file": str(bad)}},
                    tmp_path / "bad", show_progress=False)
    assert str(bad) in str(e.value) and "ACTB" in str(e.value) and "gene2" in str(e.value)
    assert "GENE1," not in str(e.value) and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("genes, key", [
    ({"select": "top"}, "genes.select"), ({"select": "hvg", "k": 0}, "genes.k"),
    ({"select": "hvg", "flavor": "cellranger"}, "genes.flavor"),
    ({"select": "list"}, "genes.file"), ({"select": "list", "file": "/no/such.txt"}, "genes.file"),
    ({"n": 3}, "genes.n"),
])
def test_gene_selection_config_errors(genes, key):
    with pytest.raises(TabstError) as e:
        load_config({**FAST, "genes": genes})
    assert key in str(e.value)


def test_cli_genes_sugar(tmp_path, store):
    from tabst.genes import parse_genes_option

    assert parse_genes_option("all") == {"select": "all"}
    assert parse_genes_option("hvg:50") == {"select": "hvg", "k": 50}
    assert parse_genes_option("hvg:50:seurat") == {"select": "hvg", "k": 50, "flavor": "seurat"}
    assert parse_genes_option("panel.txt") == {"select": "list", "file": "panel.txt"}
    with pytest.raises(TabstError, match="hvg:K"):
        parse_genes_option("hvg:many")
    assert load_config("default", ["genes.flavor=seurat"], genes="hvg:7")["genes"] == {
        "select": "hvg", "file": None, "k": 7, "flavor": "seurat"}
    out = tmp_path / "r"
    r = CliRunner().invoke(app, ["compare", store, "--config", _cfg(tmp_path), "--models", "ridge",
                                 "--genes", "hvg:2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "hvg:2" in r.output
    assert all(len(v) == 2 for v in _fold_genes(out).values())
    assert yaml.safe_load((out / "config.yaml").read_text())["genes"]["k"] == 2
    r = CliRunner().invoke(app, ["compare", store, "--models", "ridge", "--genes",
                                 str(tmp_path / "missing.txt"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 1 and "missing.txt" in r.output


def test_predictions_are_clipped_at_zero_before_scoring_as_predict_writes_them(tmp_path, store):
    """clip_predictions auto on a non-negative store: predictions.h5 holds the clipped values
    and the leaderboard MSE is the MSE of those (what `tabst predict` submits); false keeps
    the raw output, whose MSE differs."""
    import h5py

    from tabst.evaluate import mse

    with h5py.File(store) as f:
        assert float(f["expression/X"][()].min()) >= 0
    cfg = {**FAST, "models": ["ridge"], "refit_all": False, "save_fold_models": False,
           "params": {"ridge": {"alphas": [1e-6]}}}  # no shrinkage: some predictions < 0
    runs = {c: run_compare(store, {**cfg, "clip_predictions": c}, tmp_path / str(c),
                           show_progress=False, render=False) for c in ("auto", False)}
    for c, out in runs.items():
        run = json.loads((out / "run.json").read_text())
        assert run["clipped_at_zero"] is (c == "auto")
        lb = pd.read_csv(out / "leaderboard.csv").set_index("model")
        pf = pd.read_csv(out / "per_fold.csv")
        with h5py.File(out / "predictions.h5") as ph:
            assert bool(ph.attrs["clipped_at_zero"]) is (c == "auto")
            preds = [ph[f"fold_{k}/pred/ridge"][()] for k in range(3)]
            folds = [mse(ph[f"fold_{k}/truth"][()], preds[k],
                         ph[f"fold_{k}/sample"].asstr()[()]) for k in range(3)]
        negative = sum(int((p < 0).sum()) for p in preds)
        assert (negative == 0) if c == "auto" else (negative > 0)
        np.testing.assert_allclose(pf[pf.model == "ridge"].sort_values("fold")["mse"], folds,
                                   rtol=1e-5)
        np.testing.assert_allclose(lb.loc["ridge", "mse_mean"], np.mean(folds), rtol=1e-5)
    mse_of = {c: pd.read_csv(o / "leaderboard.csv").set_index("model").loc["ridge", "mse_mean"]
              for c, o in runs.items()}
    assert mse_of["auto"] < mse_of[False]
    with pytest.raises(TabstError, match="clip_predictions"):
        load_config({**cfg, "clip_predictions": "yes"})
