"""Feature builder, targets and the target codec."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import write_tiny_store

from tabst.codec import IdentityCodec, PCACodec, make_codec
from tabst.dataset import FeatureBuilder, load_targets, rows_with_expression, validate_spec
from tabst.errors import StoreError, TabstError
from tabst.store import read_strings

SPEC = {"embedding": {"name": "auto", "pca": 5}, "metadata": {"tissue": True, "position": True},
        "features": ["morphology"], "neighbourhood": {"k": 4, "components": 3}}


def _samples(path):
    with h5py.File(path, "r") as f:
        return read_strings(f["cells/sample"])


def test_names_groups_and_shapes(tiny_store):
    rows = rows_with_expression(tiny_store)
    fb = FeatureBuilder(SPEC).fit(tiny_store, rows)
    X = fb.transform(tiny_store, rows)
    assert X.shape == (180, 5 + 2 + 2 + 3 + 3) and X.dtype == np.float32
    assert fb.feature_names_[:5] == [f"emb_pc{i}" for i in range(1, 6)]
    assert fb.feature_names_[5:9] == ["tissue=tissueA", "tissue=tissueB", "x_norm", "y_norm"]
    assert fb.feature_names_[9:12] == ["nucleus_area", "hematoxylin_mean", "eosin_std"]
    assert fb.feature_groups_ == (["embedding"] * 5 + ["tissue"] * 2 + ["position"] * 2
                                  + ["morphology", "stain", "stain"] + ["neighbourhood"] * 3)
    samples = _samples(tiny_store)
    for s in np.unique(samples):  # min-max within each sample
        xs = X[samples == s, 7]
        assert xs.min() == pytest.approx(0.0) and xs.max() == pytest.approx(1.0)
    # tissue one-hot
    with h5py.File(tiny_store, "r") as f:
        tissue = read_strings(f["cells/tissue"])
    np.testing.assert_array_equal(X[:, 5], (tissue == "tissueA").astype(np.float32))
    # PCA projection equals an independent sklearn PCA of the training rows
    from sklearn.decomposition import PCA

    with h5py.File(tiny_store, "r") as f:
        E = f["embeddings/test"][()]
    ref = PCA(5).fit(E).transform(E)
    np.testing.assert_allclose(np.abs(X[:, :5]), np.abs(ref), rtol=1e-4, atol=1e-4)
    # raw embedding when pca is null
    fb2 = FeatureBuilder({"embedding": {"pca": None}, "metadata": {"tissue": False,
                          "position": False}, "features": []}).fit(tiny_store, rows)
    np.testing.assert_array_equal(fb2.transform(tiny_store, rows[:7]), E[:7])
    assert fb2.feature_names_[0] == "emb_0"


def test_pca_fitted_on_training_rows_only(tmp_path):
    """Altering the test sample's embedding must not change the transform of training rows."""
    a = write_tiny_store(tmp_path / "a.h5")
    b = write_tiny_store(tmp_path / "b.h5")
    samples = _samples(a)
    test = samples == "S2"
    with h5py.File(b, "r+") as f:
        E = f["embeddings/test"]
        e = E[()]
        e[test] = 50.0 + 10 * e[test] ** 2
        E[...] = e
        m = f["features/morphology"]
        v = m[()]
        v[test] = -v[test]
        m[...] = v
    train_rows = np.flatnonzero(~test)
    Xa = FeatureBuilder(SPEC).fit(a, train_rows).transform(a, train_rows)
    Xb = FeatureBuilder(SPEC).fit(b, train_rows).transform(b, train_rows)
    np.testing.assert_array_equal(Xa, Xb)
    # ... while fitting on all rows (leaky) would change them
    Xc = FeatureBuilder(SPEC).fit(b, np.arange(len(samples))).transform(b, train_rows)
    assert not np.allclose(Xa[:, :5], Xc[:, :5])


def test_neighbourhood_hand_example(tmp_path):
    """5 cells on a line in one sample, 1-d embedding: neighbour means are checkable by hand."""
    from tabst.store import build_provenance, create_store, put

    p = tmp_path / "line.h5"
    xs = np.array([0.0, 1.0, 3.0, 7.0, 12.0, 0.0])
    emb = np.array([[1.0, 0], [2, 0], [4, 0], [8, 0], [16, 0], [100, 0]], dtype=np.float32)
    with create_store(p, provenance=build_provenance([], command=["t"])) as f:
        c = f.create_group("cells")
        put(c, "cell_id", np.array([f"c{i}" for i in range(6)], dtype=object), description="id")
        put(c, "sample", np.array(["A"] * 5 + ["B"], dtype=object), description="s")
        put(c, "tissue", np.array(["t"] * 6, dtype=object), description="t")
        put(c, "x", xs, description="x")
        put(c, "y", np.zeros(6), description="y")
        g = f.create_group("embeddings")
        put(g, "e", emb, description="e", complete=True)
    spec = {"embedding": {"name": "e", "pca": 1}, "metadata": {"tissue": False, "position": False},
            "features": [], "neighbourhood": {"k": 2, "components": 1}}
    fb = FeatureBuilder(spec).fit(p, np.arange(5))
    X = fb.transform(p, np.arange(6))
    pc = X[:, 0]
    # nearest two OTHER cells of the same sample (cell 5 is in sample B, x=0, must be ignored)
    expected_nbrs = [[1, 2], [0, 2], [1, 0], [2, 4], [3, 2]]
    for i, nb in enumerate(expected_nbrs):
        assert X[i, 1] == pytest.approx(pc[nb].mean(), abs=1e-5)
    assert np.isnan(X[5, 1])  # a sample with a single cell has no neighbours
    assert fb.feature_names_ == ["emb_pc1", "nbr_pc1"]
    assert fb.feature_groups_ == ["embedding", "neighbourhood"]


def test_targets_and_rows(tiny_store):
    rows = rows_with_expression(tiny_store)
    assert len(rows) == 180
    Y, genes = load_targets(tiny_store, rows[[5, 2, 9]])
    with h5py.File(tiny_store, "r") as f:
        np.testing.assert_array_equal(Y, f["expression/X"][()][[5, 2, 9]])
    assert genes[:2] == ["GENE0", "GENE1"] and Y.dtype == np.float32
    with h5py.File(tiny_store, "r+") as f:
        X = f["expression/X"]
        v = X[()]
        v[3] = np.nan
        X[...] = v
        f["cells"].create_dataset("has_expression", data=np.arange(180) != 3)
    assert 3 not in rows_with_expression(tiny_store)
    with pytest.raises(StoreError, match="row 4"):
        load_targets(tiny_store, [1, 3])


def test_spec_errors_and_save_load(tiny_store, tmp_path):
    with pytest.raises(TabstError, match="unknown key"):
        validate_spec({"embeddings": {}})
    with pytest.raises(StoreError, match="no embedding 'nope'"):
        FeatureBuilder({"embedding": {"name": "nope"}}).fit(tiny_store, np.arange(50))
    with pytest.raises(StoreError, match="/features/stain"):
        FeatureBuilder({"features": ["stain"]}).fit(tiny_store, np.arange(50))
    fb = FeatureBuilder(SPEC).fit(tiny_store, np.arange(120))
    fb.save(tmp_path / "fb")
    fb2 = FeatureBuilder.load(tmp_path / "fb")
    np.testing.assert_array_equal(fb.transform(tiny_store, np.arange(180)),
                                  fb2.transform(tiny_store, np.arange(180)))
    assert fb2.feature_groups_ == fb.feature_groups_


# --- target codec ---------------------------------------------------------------------------------
def test_pca_codec_round_trip_and_attributions():
    rng = np.random.default_rng(1)
    n, G, k = 300, 20, 4
    Y = (rng.normal(size=(n, k)) @ rng.normal(size=(k, G)) + 3.0).astype(np.float32)
    c = PCACodec(k).fit(Y)
    assert c.k_ == k and c.label == "pca4"
    np.testing.assert_allclose(c.components_ @ c.components_.T, np.eye(k), atol=1e-10)
    Z = c.encode(Y)
    np.testing.assert_allclose(c.decode(Z), Y, atol=1e-4)  # rank-k data → exact round trip
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-4)
    # attributions: base_k + Σ v_k = z  ⇒  decode_base + Σ decode_attributions = decode(z)
    v = rng.normal(size=(5, 7, k))
    base = rng.normal(size=k)
    z = base + v.sum(1)
    np.testing.assert_allclose(c.decode_base(base) + c.decode_attributions(v).sum(1),
                               c.decode(z), rtol=1e-5, atol=1e-5)
    assert c.decode_attributions(v).shape == (5, 7, G)
    # a truncated codec loses variance; identity is exact
    Y2 = rng.normal(size=(100, 6)).astype(np.float32)
    assert np.abs(PCACodec(2).fit(Y2).decode(PCACodec(2).fit(Y2).encode(Y2)) - Y2).max() > 0.1
    ident = IdentityCodec().fit(Y2)
    np.testing.assert_array_equal(ident.decode(ident.encode(Y2)), Y2)
    assert isinstance(make_codec("pca", 8), PCACodec) and make_codec("pca16").k == 16
    with pytest.raises(TabstError):
        make_codec("svd")


# --- standardize, position auto, constant columns (issue 19) ------------------------------------
def _make_spot_store(path):
    """The tiny store marked as spot data (a finite spot_diameter_px), one tissue everywhere."""
    write_tiny_store(path)
    with h5py.File(path, "a") as f:
        for g in f["images"].values():
            g.attrs["spot_diameter_px"] = 9.0
        t = f["cells/tissue"]
        t[...] = np.full(t.shape, "unknown", dtype=object)
    return path


def test_standardize_then_pca_equals_sklearn_pipeline(tiny_store):
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    samples = _samples(tiny_store)
    train, test = np.flatnonzero(samples != "S2"), np.flatnonzero(samples == "S2")
    with h5py.File(tiny_store, "a") as f:  # columns of very different scales, one constant
        E = f["embeddings/test"][()].astype(np.float64)
        E *= np.geomspace(0.01, 100, E.shape[1])
        E[:, 3] = 7.0
        f["embeddings/test"][...] = E.astype(np.float32)
        E = f["embeddings/test"][()].astype(np.float64)
    spec = {"embedding": {"pca": 6, "standardize": True},
            "metadata": {"tissue": False, "position": False}, "features": []}
    fb = FeatureBuilder(spec).fit(tiny_store, train)
    pipe = make_pipeline(StandardScaler(), PCA(6, svd_solver="full")).fit(E[train])
    np.testing.assert_allclose(fb.transform(tiny_store, test), pipe.transform(E[test]),
                               rtol=1e-5, atol=1e-5)  # same signs too (sklearn's svd_flip)
    # plain PCA (no standardize) is dominated by the big columns: a different projection
    plain = FeatureBuilder({**spec, "embedding": {"pca": 6}}).fit(tiny_store, train)
    assert not np.allclose(plain.transform(tiny_store, test), pipe.transform(E[test]), atol=1e-2)
    # standardize without PCA = StandardScaler alone; both survive save / load
    raw = FeatureBuilder({**spec, "embedding": {"pca": None, "standardize": True}})
    raw.fit(tiny_store, train)
    sc = StandardScaler().fit(E[train])
    np.testing.assert_allclose(raw.transform(tiny_store, test), sc.transform(E[test]),
                               rtol=1e-5, atol=1e-5)
    for i, b in enumerate((fb, raw)):
        again = FeatureBuilder.load(b.save(tiny_store.rsplit("/", 1)[0] + f"/fb{i}"))
        np.testing.assert_array_equal(again.transform(tiny_store, test),
                                      b.transform(tiny_store, test))
    with pytest.raises(TabstError, match="embedding.standardize"):
        validate_spec({"embedding": {"standardize": "yes"}})


def test_position_auto_and_constant_columns_dropped(tmp_path):
    cell = write_tiny_store(tmp_path / "cell.h5")
    spot = _make_spot_store(tmp_path / "spot.h5")
    spec = {"embedding": {"pca": 3}, "metadata": {"tissue": True, "position": "auto"},
            "features": ["morphology"]}
    rows = np.arange(120)
    fc = FeatureBuilder(spec).fit(cell, rows)
    assert fc.position_ is True and "x_norm" in fc.feature_names_
    assert fc.dropped_constant_ == []
    fs = FeatureBuilder(spec).fit(spot, rows)
    assert fs.position_ is False and "spot store" in fs.position_reason_
    assert "x_norm" not in fs.feature_names_ and "position" not in fs.feature_groups_
    # tissue=unknown on every spot is constant: dropped and recorded
    assert fs.dropped_constant_ == [{"name": "tissue=unknown", "group": "tissue", "value": 1.0}]
    assert "tissue" not in fs.feature_groups_
    X = fs.transform(spot, np.arange(180))
    assert X.shape == (180, 3 + 3) and fs.feature_names_[3:] == [
        "nucleus_area", "hematoxylin_mean", "eosin_std"]
    # position asked for explicitly is kept on spots; a constant /features column is dropped
    with h5py.File(spot, "a") as f:
        m = f["features/morphology"]
        v = m[()]
        v[:, 1] = 0.25
        m[...] = v
    fe = FeatureBuilder({**spec, "metadata": {"tissue": False, "position": True}}).fit(spot, rows)
    assert fe.position_ is True and fe.feature_names_[3:5] == ["x_norm", "y_norm"]
    assert fe.dropped_constant_ == [{"name": "hematoxylin_mean", "group": "stain",
                                     "value": 0.25}]
    Xe = fe.transform(spot, np.arange(180))
    with h5py.File(spot, "r") as f:
        np.testing.assert_array_equal(Xe[:, 5:], f["features/morphology"][()][:, [0, 2]])
    fe.save(tmp_path / "fb")
    fe2 = FeatureBuilder.load(tmp_path / "fb")
    assert fe2.feature_names_ == fe.feature_names_ and fe2.dropped_constant_ == fe.dropped_constant_
    np.testing.assert_array_equal(fe2.transform(spot, np.arange(180)), Xe)
    with pytest.raises(TabstError, match="metadata.position"):
        validate_spec({"metadata": {"position": "maybe"}})


def test_null_components_are_left_out(tmp_path):
    """An embedding column constant on the training rows (a dead unit that fires only in the
    test sample) spans no training variance: asking for every component must not hand the
    models a round-off direction whose test values a standardising ridge blows up."""
    from tabst.models import make_model

    path = write_tiny_store(tmp_path / "t.h5", emb_dim=16)
    samples = _samples(path)
    train, test = np.flatnonzero(samples != "S2"), np.flatnonzero(samples == "S2")
    with h5py.File(path, "a") as f:
        E = f["embeddings/test"][()]
        E[train, 3] = 0.0
        E[test, 3] = np.abs(E[test, 3]) + 1.0
        f["embeddings/test"][...] = E
    for standardize in (False, True):
        spec = {"embedding": {"pca": 16, "standardize": standardize},
                "metadata": {"tissue": False, "position": False}, "features": []}
        fb = FeatureBuilder(spec).fit(path, train)
        assert fb.pca_null_dropped_ == 1 and len(fb.feature_names_) == 15
        assert fb.summary()["pca_null_dropped"] == 1
        Xtr, Xte = fb.transform(path, train), fb.transform(path, test)
        Ytr, _ = load_targets(path, train)
        Yte, _ = load_targets(path, test)
        g = samples[train]
        err = {m: float(((make_model(m).fit(Xtr, Ytr, g).predict(Xte) - Yte) ** 2).mean())
               for m in ("mean", "ridge")}
        assert err["ridge"] < err["mean"], err  # no explosion (it was ~1e20 with the null PC)
        again = FeatureBuilder.load(fb.save(tmp_path / f"fb{standardize}"))
        assert again.pca_null_dropped_ == 1
