"""One contract test over the model registry, plus model-specific checks."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import write_tiny_store

from tabst.dataset import FeatureBuilder, load_targets, rows_with_expression
from tabst.errors import TabstError
from tabst.models import REGISTRY, RidgeModel, TabstModel, make_model, model_defaults

# small, fast settings for every model (the contract must hold for any parameters)
FAST = {
    "mean": {},
    "ridge": {"alphas": list(np.logspace(-2, 4, 13))},
    "ridge-hest": {},
    "tree": {"max_depth": 4, "min_samples_leaf": 5},
    "xgboost": {"n_estimators": 40, "max_depth": 3, "learning_rate": 0.2, "n_jobs": 1,
                "early_stopping_rounds": 10, "device": "cpu"},
    "tabnet": {"n_d": 8, "n_a": 8, "n_steps": 2, "max_epochs": 3, "pretrain_epochs": 2,
               "batch_size": 64, "virtual_batch_size": 32, "explain_steps": 8, "device": "cpu"},
    "context": {"hidden": 16, "width": 8, "epochs": 3, "n_models": 2, "explain_steps": 8,
                "batch_size": 32, "device": "cpu"},
    "context-k0": {"hidden": 16, "width": 8, "epochs": 3, "n_models": 1, "explain_steps": 8,
                   "batch_size": 32, "device": "cpu"},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Features from the real builder on a tiny store: samples S0, S1 train, S2 test."""
    path = write_tiny_store(tmp_path_factory.mktemp("m") / "tiny.h5", n_samples=4,
                            cells_per_sample=50, n_genes=10, emb_dim=12)
    rows = rows_with_expression(path)
    from tabst.store import cells_frame

    samples = cells_frame(path, ["sample"])["sample"].to_numpy()
    train, test = rows[samples[rows] != "S3"], rows[samples[rows] == "S3"]
    fb = FeatureBuilder({"embedding": {"pca": 6}, "neighbourhood": {"k": 3, "components": 2}})
    fb.fit(path, train)
    Xtr, Xte = fb.transform(path, train), fb.transform(path, test)
    Xtr[::17, 9] = np.nan  # some missing morphology values
    Xte[::7, 9] = np.nan
    Ytr, genes = load_targets(path, train)
    Yte, _ = load_targets(path, test)
    return dict(Xtr=Xtr, Ytr=Ytr, gtr=samples[train], Xte=Xte, Yte=Yte, genes=genes,
                names=fb.feature_names_, groups=fb.feature_groups_)


CASES = [(name, codec) for name in REGISTRY for codec in ("identity", "pca")]


@pytest.mark.parametrize("name,codec", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_contract(name, codec, data, tmp_path):
    params = dict(FAST[name], codec=codec, codec_k=3)
    m = make_model(name, params)
    assert isinstance(m, TabstModel) and m.name == name
    assert m.display_name == (f"{name}+pca3" if codec == "pca" else name)
    assert not [a for a in vars(m) if a.endswith("_")], "learned attributes before fit"
    with pytest.raises(TabstError, match="not fitted"):
        m.predict(data["Xte"])

    out = m.fit(data["Xtr"], data["Ytr"], data["gtr"], feature_names=data["names"],
                feature_groups=data["groups"], target_names=data["genes"])
    assert out is m
    assert m.fit_seconds_ > 0 and np.isfinite(m.peak_mem_mb_)
    n, F, G = data["Xte"].shape[0], data["Xte"].shape[1], data["Ytr"].shape[1]
    pred = m.predict(data["Xte"])
    assert pred.shape == (n, G) and pred.dtype == np.float32 and np.isfinite(pred).all()

    # additivity: base + Σ_F values = prediction
    e = m.explain(data["Xte"])
    assert e.values.shape == (n, F, G) and e.base.shape == (G,)
    assert e.feature_names == data["names"] and e.feature_groups == data["groups"]
    assert e.output_names == data["genes"] and e.method
    tol = 1e-4 * (1 + np.abs(pred))
    assert np.all(np.abs(e.prediction - pred) <= tol), np.abs(e.prediction - pred).max()
    groups, gv = e.by_group()
    np.testing.assert_allclose(gv.sum(1), e.values.sum(1), rtol=1e-4, atol=1e-4)
    assert "embedding" in groups

    # save / load round trip (through the registry-dispatching base loader)
    m.save(tmp_path / "model")
    m2 = TabstModel.load(tmp_path / "model")
    assert type(m2) is type(m) and m2.display_name == m.display_name
    np.testing.assert_allclose(m2.predict(data["Xte"]), pred, rtol=1e-6, atol=1e-6)
    assert m2.feature_names_ == data["names"]
    if name != "mean":  # a constant model explains nothing; others attribute something
        assert np.abs(e.values).sum() > 0


@pytest.mark.parametrize("name", ["ridge", "tree", "xgboost"])
def test_models_learn(name, data):
    """Held-out MSE beats the mean-profile baseline on data with real signal."""
    def mse(model):
        model.fit(data["Xtr"], data["Ytr"], data["gtr"])
        return float(((model.predict(data["Xte"]) - data["Yte"]) ** 2).mean())

    assert mse(make_model(name, FAST[name])) < mse(make_model("mean"))


def test_params_and_defaults():
    assert set(REGISTRY) == {"mean", "ridge", "ridge-hest", "tree", "xgboost", "tabnet",
                             "context", "context-k0"}
    with pytest.raises(TabstError, match="unknown parameter"):
        make_model("ridge", {"alpha": 1.0})
    with pytest.raises(TabstError, match="unknown model"):
        make_model("svm")
    assert model_defaults("xgboost")["codec"] == "pca"
    assert model_defaults("tabnet")["codec"] == "pca" and model_defaults("tree")["codec"] == "pca"
    assert model_defaults("ridge")["codec"] == "identity"
    assert model_defaults("ridge-hest")["codec"] == "identity"
    assert model_defaults("mean")["codec"] == "identity"
    assert make_model("xgboost").display_name == "xgboost+pca32"


# --- ridge -------------------------------------------------------------------------------------
def _brute_force(X, Y, groups, fold_groups, alphas):
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    X = X.astype(np.float64)
    Y = Y.astype(np.float64)
    out = np.zeros((len(fold_groups), len(alphas), Y.shape[1]))
    for f, gs in enumerate(fold_groups):
        te = np.isin(groups, gs)
        sc = StandardScaler().fit(X[~te])
        for i, a in enumerate(alphas):
            r = Ridge(alpha=a).fit(sc.transform(X[~te]), Y[~te])
            out[f, i] = ((r.predict(sc.transform(X[te])) - Y[te]) ** 2).mean(axis=0)
    return out


def test_ridge_matches_brute_force():
    rng = np.random.default_rng(3)
    n, F, G = 240, 9, 6
    X = (rng.normal(size=(n, F)) * rng.uniform(0.5, 20, F) + rng.uniform(-50, 50, F))
    X = X.astype(np.float32)
    groups = np.repeat(["a", "b", "c", "d", "e"], [60, 40, 50, 40, 50])
    X[groups == "a", 2] = 7.0  # constant inside one sample
    W = rng.normal(size=(F, G)) * np.array([0.0, 0.01, 0.1, 1, 3, 0.5])  # genes need different α
    Y = (X @ (W / X.std(0)[:, None]) + rng.normal(size=(n, G)) * rng.uniform(0.3, 3, G))
    Y = Y.astype(np.float32)
    alphas = np.logspace(-3, 5, 13)
    m = RidgeModel(alphas=list(alphas), precision="float64").fit(X, Y, groups)
    assert m.cv_kind_ == "grouped" and len(m.cv_fold_groups_) == 5
    ref = _brute_force(X, Y, groups, m.cv_fold_groups_, alphas)
    np.testing.assert_allclose(m.cv_fold_mse_, ref, rtol=1e-6)
    counts = np.array([np.isin(groups, gs).sum() for gs in m.cv_fold_groups_])
    pooled = (ref * counts[:, None, None]).sum(0) / counts.sum()
    np.testing.assert_allclose(m.cv_mse_, pooled, rtol=1e-6)
    np.testing.assert_array_equal(m.alpha_, alphas[pooled.argmin(0)])
    assert len(np.unique(m.alpha_)) > 1, "test data should need different α per gene"

    # final refit = sklearn refit on all rows with each gene's α
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(X.astype(np.float64))
    for j in range(G):
        r = Ridge(alpha=m.alpha_[j]).fit(sc.transform(X.astype(np.float64)), Y[:, j])
        np.testing.assert_allclose(m.predict(X[:20])[:, j], r.predict(sc.transform(X[:20])),
                                   rtol=1e-5, atol=1e-4)

    # more samples than cv folds → balanced grouped folds, still exact
    m8 = RidgeModel(alphas=list(alphas), cv=3, precision="float64").fit(X, Y, groups)
    assert len(m8.cv_fold_groups_) == 3
    np.testing.assert_allclose(m8.cv_fold_mse_,
                               _brute_force(X, Y, groups, m8.cv_fold_groups_, alphas), rtol=1e-6)

    # streaming from batches gives the same answer as the in-memory fit
    def batches():
        for s in range(0, n, 37):
            yield X[s:s + 37], Y[s:s + 37], groups[s:s + 37]

    ms = RidgeModel(alphas=list(alphas), precision="float64").fit_batches(batches())
    np.testing.assert_allclose(ms.cv_fold_mse_, m.cv_fold_mse_, rtol=1e-9)
    np.testing.assert_allclose(ms.predict(X), m.predict(X), rtol=1e-6, atol=1e-6)


def test_ridge_float32_accumulation_close_to_exact():
    """Default precision: XᵀX / XᵀY summed by single-precision BLAS on shifted data."""
    rng = np.random.default_rng(5)
    n, F, G = 400, 12, 8
    X = (rng.normal(size=(n, F)) * rng.uniform(0.5, 20, F) + rng.uniform(-500, 500, F))
    X = X.astype(np.float32)
    groups = np.repeat(list("abcdef"), [80, 60, 70, 50, 70, 70])
    W = rng.normal(size=(F, G)) * rng.uniform(0.0, 2.0, G)
    Y = (X @ (W / X.std(0)[:, None]) + rng.normal(size=(n, G)) * rng.uniform(0.3, 3, G) + 40)
    Y = Y.astype(np.float32)
    alphas = list(np.logspace(-3, 5, 13))
    m32 = RidgeModel(alphas=alphas, cv=4, precision="float32").fit(X, Y, groups)
    m64 = RidgeModel(alphas=alphas, cv=4, precision="float64").fit(X, Y, groups)
    assert m32.precision_used_ == "float32" and m64.precision_used_ == "float64"
    # well-conditioned: the default ("auto") keeps the float32 sums
    auto = RidgeModel(alphas=alphas, cv=4).fit(X, Y, groups)
    assert auto.params["precision"] == "auto" and auto.precision_used_ == "float32"
    np.testing.assert_array_equal(auto.cv_fold_mse_, m32.cv_fold_mse_)
    ref = _brute_force(X, Y, groups, m32.cv_fold_groups_, alphas)
    np.testing.assert_allclose(m64.cv_fold_mse_, ref, rtol=1e-6)
    # float32 sums: errors of order eps32 × the gene's variance (not × its held-out error)
    scale = 1e-5 * Y.astype(np.float64).var(axis=0)
    assert np.all(np.abs(m32.cv_fold_mse_ - ref) <= scale)
    # a different α only where the two were tied to that round-off
    i32 = np.searchsorted(alphas, m32.alpha_)
    i64 = np.searchsorted(alphas, m64.alpha_)
    cols = np.arange(G)
    assert np.all(m64.cv_mse_[i32, cols] - m64.cv_mse_[i64, cols] <= scale)
    np.testing.assert_allclose(m32.predict(X), m64.predict(X), rtol=1e-4, atol=1e-3)
    with pytest.raises(TabstError, match="precision"):
        RidgeModel(precision="float16")  # refused at construction


def test_ridge_auto_precision_redoes_ill_conditioned_data_in_float64(tmp_path):
    """Near-collinear features + small α: float32 sums give wrong held-out errors and α; the
    default ("auto") notices from the folds' conditioning and recomputes in float64."""
    rng = np.random.default_rng(1)
    n, F, G = 2400, 40, 12
    Z = rng.normal(size=(n, 6))
    X = Z @ rng.normal(size=(6, F)) + 1e-3 * rng.normal(size=(n, F)) + 5.0
    X[:, :4] = X[:, 4:8] * 1.0001                     # near-duplicate columns
    X = X.astype(np.float32)
    Y = (Z[:, :3] @ rng.normal(size=(3, G)) + rng.normal(size=(n, G)) * rng.uniform(0.1, 3, G))
    Y = Y.astype(np.float32)
    groups = np.repeat(list("abcdefgh"), n // 8)
    alphas = list(np.logspace(-5, 4, 13))
    m32 = RidgeModel(alphas=alphas, precision="float32").fit(X, Y, groups)
    m64 = RidgeModel(alphas=alphas, precision="float64").fit(X, Y, groups)
    auto = RidgeModel(alphas=alphas).fit(X, Y, groups)
    var = Y.astype(np.float64).var(axis=0)
    ref = _brute_force(X, Y, groups, m64.cv_fold_groups_, alphas)
    np.testing.assert_allclose(m64.cv_fold_mse_, ref, rtol=1e-6)
    # plain float32 really is off here (so the test can tell the two apart) ...
    assert np.max(np.abs(m32.cv_fold_mse_ - ref) / var) > 1e-3
    # ... and "auto" gives the exact answer
    assert auto.precision_used_ == "float64"
    np.testing.assert_allclose(auto.cv_fold_mse_, ref, rtol=1e-6)
    np.testing.assert_array_equal(auto.alpha_, m64.alpha_)
    auto.save(tmp_path / "r")
    assert type(auto).load(tmp_path / "r").precision_used_ == "float64"


def test_ridge_quad_forms_partial_fractions_exact():
    """All-α quadratic forms by partial fractions == direct evaluation, also for (near-)equal λ."""
    from tabst.models.ridge import _band, _dense_quad, _pf_quad, _quad_forms

    rng = np.random.default_rng(1)
    F, G = 40, 7
    lam = np.sort(np.concatenate([np.zeros(3), [5.0, 5.0, 5.0 + 1e-9, 5.0 + 1e-4],
                                  rng.uniform(0, 1e4, F - 7)]))
    Z = rng.normal(size=(60, F)) * rng.uniform(0.1, 3, F)
    Q = Z.T @ Z
    Bt = rng.normal(size=(F, G)) * 10.0 ** rng.uniform(-2, 2, (F, 1))
    alphas = np.logspace(-3, 7, 11)
    D = 1.0 / (lam[None, :] + alphas[:, None])
    ref = np.einsum("af,fg,fh,ah,hg->ag", D, Bt, Q, D, Bt)
    np.testing.assert_allclose(_dense_quad(Q, D, Bt), ref, rtol=1e-10)
    bw = _band(lam, alphas[-1])
    assert 1 <= bw < F - 1       # the equal / close eigenvalues are summed directly
    np.testing.assert_allclose(_pf_quad(Q, lam, D, Bt, bw), ref, rtol=1e-8)
    np.testing.assert_allclose(_quad_forms(Q, lam, alphas, Bt), ref, rtol=1e-8)


def test_ridge_single_group_falls_back_to_row_folds():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 4)).astype(np.float32)
    Y = (X @ rng.normal(size=(4, 2))).astype(np.float32)
    m = RidgeModel(cv=4).fit(X, Y, groups=np.zeros(80))
    assert m.cv_kind_ == "rows" and m.cv_fold_mse_.shape[0] == 4
    assert len(m.alphas_) >= 13 and m.alpha_.shape == (2,)


# --- tree ---------------------------------------------------------------------------------
def test_tree_rules_text(data):
    m = make_model("tree", {"max_depth": 3, "min_samples_leaf": 5, "codec_k": 3})
    m.fit(data["Xtr"], data["Ytr"], data["gtr"], feature_names=data["names"],
          target_names=data["genes"])
    txt = m.rules_text("GENE2")
    assert "GENE2" in txt and "value:" in txt
    assert any(nm in txt for nm in data["names"])
    # the one-gene tree reproduces that gene's decoded prediction exactly
    one = m.single_output_tree("GENE2")
    Xi = m._impute(data["Xte"])
    np.testing.assert_allclose(one.predict(Xi), m.predict(data["Xte"])[:, 2], rtol=1e-5, atol=1e-5)
    comp = m.single_output_tree(0, component=True)
    np.testing.assert_allclose(comp.predict(Xi), m.tree_model_.predict(Xi)[:, 0], rtol=1e-6)
    assert "component 1" in m.rules_text(1, component=True)


# --- xgboost -----------------------------------------------------------------------------------
def test_xgboost_inner_split(data):
    m = make_model("xgboost", FAST["xgboost"]).fit(data["Xtr"], data["Ytr"], data["gtr"])
    assert m.inner_split_.startswith("by sample")
    assert m.best_iteration_ < FAST["xgboost"]["n_estimators"]
    m1 = make_model("xgboost", FAST["xgboost"]).fit(data["Xtr"], data["Ytr"])
    assert m1.inner_split_.startswith("random 10%")


# --- tabnet -------------------------------------------------------------------------------
def test_tabnet_masks_groups_and_clamping(data):
    p = dict(FAST["tabnet"], batch_size=1024, virtual_batch_size=256, pretrain=True,
             grouped_features=["embedding"])
    m = make_model("tabnet", p).fit(data["Xtr"][:90], data["Ytr"][:90], data["gtr"][:90],
                                    feature_names=data["names"], feature_groups=data["groups"])
    # batch sizes clamped to the inner training rows (drop_last=True would otherwise train nothing)
    assert m.batch_size_ <= 90 and m.batch_size_ % m.virtual_batch_size_ == 0
    assert len(m.history_) >= 1 and len(m.pretrain_history_) >= 1
    agg, steps = m.masks(data["Xte"])
    assert agg.shape == data["Xte"].shape and len(steps) == p["n_steps"]
    emb = [i for i, g in enumerate(data["groups"]) if g == "embedding"]
    # grouped features share one attention weight per row
    for s in steps:
        np.testing.assert_allclose(s[:, emb], np.repeat(s[:, emb[:1]], len(emb), axis=1),
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(TabstError, match="grouped_features"):
        make_model("tabnet", dict(FAST["tabnet"], grouped_features=["nope"])).fit(
            data["Xtr"], data["Ytr"], data["gtr"], feature_groups=data["groups"])


def test_tabnet_auto_batch_size_and_common_target_scale(data):
    """"auto" batch size keeps ≥ ~16 steps per epoch; codes share one scale (loss ∝ gene MSE)."""
    from tabst.models.tabnet import TabNetModel

    assert TabNetModel._clamp("auto", 128, 6000) == (256, 128)       # 6000/16 = 375 → 256
    assert TabNetModel._clamp("auto", 128, 500_000) == (1024, 128)
    assert TabNetModel._clamp("auto", 128, 1000) == (128, 128)       # floor 128
    assert TabNetModel._clamp("auto", 128, 90) == (90, 90)           # never above the rows
    assert TabNetModel._clamp("auto", 128, 6000, cap=200) == (128, 128)
    for bad in ("big", 0, True):
        with pytest.raises(TabstError, match="batch_size"):  # refused at construction
            make_model("tabnet", {"batch_size": bad})
    m = make_model("tabnet", dict(FAST["tabnet"], codec="pca", codec_k=4)).fit(
        data["Xtr"], data["Ytr"], data["gtr"])
    Z = m.codec_.encode(data["Ytr"])
    rms = np.sqrt(np.mean(Z[:, :4].astype(np.float64).std(axis=0) ** 2))
    assert np.ptp(m.z_scale_) == 0                      # one scale for every code ...
    np.testing.assert_allclose(m.z_scale_[0], rms, rtol=0.3)   # ... ≈ their RMS std (train rows)


def test_ridge_parallel_folds_equal_serial():
    """Folds solved side by side (one BLAS thread each) give the serial results exactly."""
    from threadpoolctl import threadpool_limits

    from tabst.models import ridge as ridge_mod

    rng = np.random.default_rng(5)
    X = rng.normal(size=(240, 9))
    Y = X @ rng.normal(size=(9, 4)) + rng.normal(size=(240, 4))
    groups = np.repeat(["a", "b", "c", "d"], 60)
    with threadpool_limits(limits=1):
        assert ridge_mod._blas_threads() == 1
        serial = make_model("ridge", {"precision": "float64"}).fit(X, Y, groups)
    with threadpool_limits(limits=2):
        assert ridge_mod._blas_threads() == 2  # the parallel path runs
        par = make_model("ridge", {"precision": "float64"}).fit(X, Y, groups)
    np.testing.assert_array_equal(par.alpha_, serial.alpha_)
    np.testing.assert_allclose(par.cv_fold_mse_, serial.cv_fold_mse_, rtol=1e-10)
    np.testing.assert_allclose(par.coef_, serial.coef_, rtol=1e-10, atol=1e-12)


def test_eigh_f32_matches_scipy_and_runs_on_threads():
    """The GIL-free float32 eigensolver gives scipy's ssyevd results bit for bit, also when
    called from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    from scipy.linalg import eigh

    from tabst._lapack import eigh_f32

    rng = np.random.default_rng(3)
    mats = []
    for k in range(4):
        A = rng.normal(size=(300, 60 + k))
        mats.append((A.T @ A).astype(np.float32))
    with ThreadPoolExecutor(2) as ex:
        got = list(ex.map(eigh_f32, mats))
    for C, (w, V) in zip(mats, got):
        w_ref, V_ref = eigh(C, driver="evd", check_finite=False)
        assert w.dtype == np.float32 and V.shape == C.shape
        np.testing.assert_array_equal(w, w_ref)
        np.testing.assert_array_equal(V, V_ref)
        np.testing.assert_allclose(V @ np.diag(w) @ V.T, C, atol=1e-4 * np.abs(C).max())


def test_ridge_float32_check_rule():
    """The "auto" rule: float32 is kept unless a gene's best α is unreliable or at the edge."""
    from tabst.models.ridge import _float32_too_coarse

    alphas = np.logspace(-2, 4, 7)                     # 0.01 ... 1e4
    well = [(1e3, 1e2), (2e3, 50.0)]                   # κ ≤ 40: every α reliable
    ill = [(1e6, 0.0)]                                 # eps32·κ ≤ 0.05 only for α ≥ ~2.4
    inside = np.array([[5.0], [4.0], [3.0], [2.0], [1.0], [1.5], [2.5]])  # min at α = 100
    assert not _float32_too_coarse(alphas, inside, well)
    assert not _float32_too_coarse(alphas, inside, ill)          # min well inside the reliable α
    edge = np.array([[5.0], [4.0], [3.0], [1.0], [2.0], [2.5], [3.0]])    # min at α = 10 (edge)
    assert _float32_too_coarse(alphas, edge, ill)
    low = np.array([[0.5], [4.0], [3.0], [2.0], [1.0], [1.5], [2.5]])     # min at α = 0.01
    assert _float32_too_coarse(alphas, low, ill)
    assert not _float32_too_coarse(alphas, low, well)


def test_eigh_f32_falls_back_to_scipy(monkeypatch):
    """Without a usable LAPACK capsule (e.g. an ILP64 scipy) the scipy wrapper is used."""
    from scipy.linalg import eigh

    from tabst import _lapack

    def unusable(name):
        raise RuntimeError("unexpected LAPACK signature")

    monkeypatch.setattr(_lapack, "_cython_lapack", unusable)
    A = np.random.default_rng(0).normal(size=(50, 8))
    C = (A.T @ A).astype(np.float32)
    w, V = _lapack.eigh_f32(C)
    w_ref, V_ref = eigh(C, driver="evd", check_finite=False)
    np.testing.assert_array_equal(w, w_ref)
    np.testing.assert_array_equal(V, V_ref)


def test_max_train_cells_per_group_fits_on_a_seeded_subsample_of_each_group(tmp_path):
    from tabst.models import make_model
    from tabst.models.base import subsample_per_group

    groups = np.repeat(["a", "b", "c"], [50, 8, 30])
    keep = subsample_per_group(groups, len(groups), 10, seed=3)
    assert dict(zip(*np.unique(groups[keep], return_counts=True))) == {"a": 10, "b": 8, "c": 10}
    assert np.array_equal(keep, np.sort(keep)) and len(set(keep)) == len(keep)
    assert np.array_equal(keep, subsample_per_group(groups, len(groups), 10, seed=3))
    assert not np.array_equal(keep, subsample_per_group(groups, len(groups), 10, seed=4))
    assert subsample_per_group(groups, len(groups), 50, seed=0) is None
    assert subsample_per_group(None, 88, None) is None
    assert len(subsample_per_group(None, 88, 20)) == 20

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(88, 4)), rng.normal(size=(88, 3))
    full = make_model("ridge").fit(X, Y, groups=groups)
    sub = make_model("ridge", {"max_train_cells_per_group": 10}).fit(X, Y, groups=groups)
    keep = subsample_per_group(groups, len(groups), 10, seed=0)  # the model's seed
    ref = make_model("ridge").fit(X[keep], Y[keep], groups=groups[keep])
    assert (full.n_fit_rows_, sub.n_fit_rows_, sub.n_train_rows_) == (88, 28, 88)
    np.testing.assert_allclose(sub.predict(X), ref.predict(X), rtol=1e-6, atol=1e-6)
    assert not np.allclose(sub.predict(X), full.predict(X))
    sub.save(tmp_path / "m")
    assert type(sub).load(tmp_path / "m").n_fit_rows_ == 28
