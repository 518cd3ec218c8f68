"""Run folders never run code: models and feature builders are JSON + arrays, and a pickle
(legacy ``tree.pkl`` / ``*.joblib``, or pickled data where arrays are expected) is refused with
one clear message before a byte of it is unpickled (a crafted payload's marker file stays absent).
"""
from __future__ import annotations

import io
import json
import pickle
import shutil
import zipfile

import numpy as np
import pytest
from conftest import write_tiny_store
from typer.testing import CliRunner

from tabst.dataset import FeatureBuilder
from tabst.models import TabstModel, make_model
from tabst.safeio import PICKLE_SUFFIXES, UnsafeFileError

TREE = {"max_depth": 4, "min_samples_leaf": 5}
RUN_CFG = {"models": ["ridge", "tree"], "features": {"embedding": {"name": "auto", "pca": 4}},
           "params": {"ridge": {"alphas": [1.0, 10.0]},
                      "tree": {"max_depth": 3, "min_samples_leaf": 5, "codec_k": 3}}}


class _Boom:
    """Unpickling this creates ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def payload(marker) -> bytes:
    return pickle.dumps(_Boom(marker), protocol=pickle.HIGHEST_PROTOCOL)


def assert_refused(excinfo, name: str, marker):
    msg = str(excinfo.value)
    assert name in msg and "pickle" in msg and "run arbitrary code" in msg, msg
    assert "tabst compare" in msg, msg
    assert not marker.exists(), "the loader ran code from the pickle"


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(240, 6)).astype(np.float32)
    X[::11, 4] = np.nan
    Y = (np.nan_to_num(X[:, :3]) @ rng.normal(size=(3, 5)) + 0.2 * rng.normal(size=(240, 5)))
    return X, Y.astype(np.float32)


@pytest.fixture(scope="module")
def saved_tree(xy, tmp_path_factory):
    X, Y = xy
    m = make_model("tree", dict(TREE, codec_k=3)).fit(X, Y)
    return m, m.save(tmp_path_factory.mktemp("tree") / "model")


def test_payload_is_live(tmp_path):
    """The crafted pickle really runs code when unpickled, so the tests below mean something."""
    marker = tmp_path / "ran"
    pickle.loads(payload(marker))
    assert marker.exists()


# ------------------------------------------------------------------------------ tree round trip
@pytest.mark.parametrize("codec", ["pca", "identity"])
def test_tree_round_trip_bit_identical_without_pickle(codec, xy, tmp_path):
    X, Y = xy
    m = make_model("tree", dict(TREE, codec=codec, codec_k=3)).fit(X, Y)
    path = m.save(tmp_path / "model")
    files = sorted(p.name for p in path.iterdir())
    assert files == ["model.json", "state.npz"]
    with np.load(path / "state.npz", allow_pickle=False) as z:  # arrays only, no objects
        assert "m_tree_threshold" in z.files and all(z[k].dtype != object for k in z.files)
    m2 = TabstModel.load(path)
    assert np.array_equal(m.predict(X), m2.predict(X))  # bit-identical
    a, b = m.tree_model_.tree_, m2.tree_model_.tree_
    for field in ("children_left", "children_right", "feature", "threshold", "value",
                  "impurity", "n_node_samples", "weighted_n_node_samples"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    e1, e2 = m.explain(X[:25]), m2.explain(X[:25])  # shap TreeExplainer on the rebuilt tree
    assert np.array_equal(e1.values, e2.values) and np.array_equal(e1.base, e2.base)
    assert m2.rules_text(1) == m.rules_text(1)


def test_corrupt_tree_links_refused(saved_tree, tmp_path):
    from tabst.errors import TabstError

    _, path = saved_tree
    bad = shutil.copytree(path, tmp_path / "bad")
    with np.load(bad / "state.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["m_tree_left_child"] = arrays["m_tree_left_child"].copy()
    arrays["m_tree_left_child"][0] = 10 ** 6  # would read far outside the node array
    np.savez(bad / "state.npz", **arrays)
    with pytest.raises(TabstError, match="inconsistent node links"):
        TabstModel.load(bad)


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("name", ["tree.pkl", "booster.joblib"])
def test_pickle_in_model_folder_refused(name, saved_tree, tmp_path):
    _, path = saved_tree
    legacy = shutil.copytree(path, tmp_path / "legacy")
    marker = tmp_path / "ran"
    (legacy / name).write_bytes(payload(marker))
    with pytest.raises(UnsafeFileError) as ei:
        TabstModel.load(legacy)
    assert_refused(ei, name, marker)


def test_pickle_as_state_npz_refused(saved_tree, tmp_path):
    _, path = saved_tree
    bad = shutil.copytree(path, tmp_path / "bad")
    marker = tmp_path / "ran"
    (bad / "state.npz").write_bytes(payload(marker))
    with pytest.raises(UnsafeFileError) as ei:
        TabstModel.load(bad)
    assert_refused(ei, "state.npz", marker)


def test_object_array_in_npz_refused(saved_tree, tmp_path):
    _, path = saved_tree
    bad = shutil.copytree(path, tmp_path / "bad")
    marker = tmp_path / "ran"
    boom = np.empty(1, dtype=object)
    boom[0] = _Boom(marker)
    np.savez(bad / "state.npz", impute_values=boom)
    with pytest.raises(UnsafeFileError) as ei:
        TabstModel.load(bad)
    assert_refused(ei, "state.npz", marker)


@pytest.mark.parametrize("how", ["raw", "torch.save"])
def test_tabnet_network_pickle_refused(how, tmp_path):
    import torch

    marker = tmp_path / "ran"
    if how == "raw":
        blob = payload(marker)
    else:
        buf = io.BytesIO()
        torch.save({"w": _Boom(marker)}, buf)
        blob = buf.getvalue()
    with zipfile.ZipFile(tmp_path / "tabnet.zip", "w") as z:
        z.writestr("model_params.json", json.dumps({"init_params": {}, "class_attrs": {}}))
        z.writestr("network.pt", blob)
    m = make_model("tabnet", {"device": "cpu"})
    m.device_ = "cpu"
    with pytest.raises(UnsafeFileError) as ei:
        m._load_files(tmp_path)
    msg = str(ei.value)
    assert "network.pt" in msg and "run arbitrary code" in msg and not marker.exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A compare run (ridge + tree, LOSO over 3 samples, refit) on the conftest tiny store."""
    from tabst.compare import run_compare

    d = tmp_path_factory.mktemp("sec")
    store = write_tiny_store(d / "tiny.h5", n_samples=3, cells_per_sample=30, n_genes=5,
                             emb_dim=8)
    return {"store": store, "run": run_compare(store, RUN_CFG, d / "run", show_progress=False,
                                                render=False)}


def test_run_folder_holds_no_pickle(tiny_run):
    run = tiny_run["run"]
    for p in run.rglob("*"):
        assert p.suffix.lower() not in PICKLE_SUFFIXES, p
        if p.is_file() and p.suffix in (".npz", ".npy"):
            np.load(p, allow_pickle=False)  # opens as plain arrays


@pytest.mark.parametrize("fold", ["fold_0", "all"])
def test_legacy_joblib_feature_builder_refused(fold, tiny_run, tmp_path):
    from tabst.explain.run import Run

    run = shutil.copytree(tiny_run["run"], tmp_path / "run")
    shutil.rmtree(run / "features" / fold)
    marker = tmp_path / "ran"
    (run / "features" / f"{fold}.joblib").write_bytes(payload(marker))
    with pytest.raises(UnsafeFileError) as ei:
        Run(run).feature_builder(None if fold == "all" else 0)
    assert_refused(ei, f"{fold}.joblib", marker)
    with pytest.raises(UnsafeFileError) as ei:
        FeatureBuilder.load(run / "features" / fold)
    assert_refused(ei, f"{fold}.joblib", marker)
    if fold == "all":  # predict names the pickle too, not "no features/all"
        from tabst.predict import predict_submission

        with pytest.raises(UnsafeFileError) as ei:
            predict_submission(run, tiny_run["store"], tmp_path / "s.csv", group="all",
                               show_progress=False)
        assert_refused(ei, "all.joblib", marker)


def test_pickle_as_features_npz_refused(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run["run"], tmp_path / "run")
    marker = tmp_path / "ran"
    (run / "features" / "fold_1" / "features.npz").write_bytes(payload(marker))
    with pytest.raises(UnsafeFileError) as ei:
        FeatureBuilder.load(run / "features" / "fold_1")
    assert_refused(ei, "features.npz", marker)


# ------------------------------------------------------------------------------ CLI
def _cli_refuses(args, name, marker):
    from tabst_cli.app import app

    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    assert name in r.output and "run arbitrary code" in r.output, r.output
    assert "Traceback" not in r.output and not marker.exists()


def test_cli_explain_refuses_pickles(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run["run"], tmp_path / "run")
    marker = tmp_path / "ran"
    (run / "models" / "tree" / "fold_0" / "tree.pkl").write_bytes(payload(marker))
    args = ["explain", str(run), "--genes", "GENE1", "--top-genes", "0", "--cells", "12",
            "--gallery", "0", "--out", str(tmp_path / "e.html")]
    _cli_refuses(args + ["--models", "tree"], "tree.pkl", marker)
    shutil.rmtree(run / "features" / "fold_0")
    (run / "features" / "fold_0.joblib").write_bytes(payload(marker))
    _cli_refuses(args + ["--models", "ridge"], "fold_0.joblib", marker)
    assert not (tmp_path / "e.html").exists()


def test_cli_predict_refuses_pickled_model(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run["run"], tmp_path / "run")
    marker = tmp_path / "ran"
    (run / "models" / "tree" / "all" / "tree.pkl").write_bytes(payload(marker))
    out = tmp_path / "p.csv"
    _cli_refuses(["predict", str(run), "--store", str(tiny_run["store"]), "--out", str(out),
                  "--model", "tree", "--group", "all"], "tree.pkl", marker)
    assert not out.exists()
