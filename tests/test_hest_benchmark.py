"""The ``hest-benchmark`` preset is HEST-Benchmark's protocol (issue 19): on a small spot store
with patient groups its per-gene and mean Pearson equal an independent sklearn implementation
of HEST's code (StandardScaler -> PCA -> Ridge(alpha = 100 / (d * n_genes), lsqr, no
intercept), scipy's pearsonr per gene over each test split) to 1e-6. Also: HEST's
``var_50genes.json`` gene lists, ``group_column: auto`` and the ``expect_transform`` warning."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import write_tiny_store

from tabst.compare import run_compare
from tabst.config import load_config
from tabst.errors import TabstError
from tabst.genes import read_gene_list
from tabst.run_inputs import resolve_group_column
from tabst.store import put, read_strings

PATIENT = {"S0": "P0", "S1": "P0", "S2": "P1", "S3": "P1", "S4": "P2", "S5": "P2"}
LIST_GENES = ["GENE1", "GENE2", "GENE4", "GENE5", "GENE7", "GENE9"]


def _spot_store(path, *, transform="log1p(count)", groups=PATIENT, seed=0, column="patient"):
    """Six sections of 50 spots, two per patient; X = log1p(raw counts) whose rate depends on
    an embedding with columns of very different scales (so the StandardScaler matters)."""
    write_tiny_store(path, n_samples=6, cells_per_sample=50, n_genes=10, emb_dim=24,
                     with_features=False, seed=seed)
    rng = np.random.default_rng(seed + 1)
    with h5py.File(path, "a") as f:
        E = f["embeddings/test"][()].astype(np.float64)
        W = rng.normal(size=(E.shape[1], 10)) / np.sqrt(E.shape[1])
        counts = rng.poisson(np.exp(1.0 + E @ W))
        f["embeddings/test"][...] = (E * np.geomspace(0.05, 50, E.shape[1]) + 3.0).astype(
            np.float32)
        f["expression/X"][...] = np.log1p(counts).astype(np.float32)
        f["expression/X"].attrs["transform"] = transform
        for g in f["images"].values():
            g.attrs["spot_diameter_px"] = 9.0
        if groups:  # spot ingest's --patient writes /cells/patient
            s = read_strings(f["cells/sample"])
            put(f["cells"], column, np.asarray([groups[x] for x in s], dtype=object),
                description="patient of the section")
    return path


def _hest_reference(E, Y, groups, n_pc):
    """HEST's predict_single_split + train_test_reg + merge_fold_results (method 'ridge',
    dimreduce 'PCA'), one split per held-out patient; written from HEST's code, not tabst's."""
    from scipy.stats import pearsonr
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    per_split = []
    for p in np.unique(groups):
        tr, te = groups != p, groups == p
        k = min(n_pc, tr.sum(), E.shape[1])
        pipe = Pipeline([("scaler", StandardScaler()), ("PCA", PCA(n_components=k,
                                                                   random_state=1))])
        X_train, X_test = pipe.fit_transform(E[tr]), pipe.transform(E[te])
        alpha = 100 / (X_train.shape[1] * Y.shape[1])
        reg = Ridge(solver="lsqr", alpha=alpha, random_state=1, fit_intercept=False,
                    max_iter=1000).fit(X_train, Y[tr])
        preds = reg.predict(X_test)
        per_split.append([pearsonr(Y[te][:, g], preds[:, g])[0] for g in range(Y.shape[1])])
    per_split = np.asarray(per_split)
    return per_split, float(np.mean(per_split.mean(axis=1)))


@pytest.mark.parametrize("n_pc", [256, 10])
def test_hest_benchmark_equals_independent_implementation(tmp_path, n_pc):
    store = _spot_store(tmp_path / "spots.h5")
    genes_file = tmp_path / "var_50genes.json"
    genes_file.write_text(json.dumps({"genes": LIST_GENES[::-1]}))  # file order is not kept
    sets = [] if n_pc == 256 else [f"features.embedding.pca={n_pc}"]
    out = run_compare(store, "hest-benchmark", tmp_path / "run", genes=str(genes_file),
                      overrides=sets, show_progress=False, render=False)

    with h5py.File(store, "r") as f:
        E = f["embeddings/test"][()].astype(np.float64)
        genes = list(read_strings(f["expression/genes"]))
        Y = f["expression/X"][()][:, [genes.index(g) for g in LIST_GENES]].astype(np.float64)
        groups = read_strings(f["cells/patient"]).astype(str)
    ref_gene, ref_mean = _hest_reference(E, Y, groups, n_pc)

    run = json.loads((out / "run.json").read_text())
    assert run["group_column"] == "patient" and "/cells/patient" in run["fold_unit"]
    assert [f_["test_samples"] for f_ in run["folds"]] == [["S0", "S1"], ["S2", "S3"],
                                                           ["S4", "S5"]]
    assert run["features"]["used_groups"] == ["embedding"]
    assert run["features"]["n_features"] == min(n_pc, 24)
    assert run["warnings"] == [] and run["primary_metric"] == "genewise_pearson"
    pg = pd.read_csv(out / "per_gene.csv").set_index(["model", "gene"])
    got = np.asarray([[pg.loc[("ridge-hest", g), f"pearson_fold_{k}"] for g in LIST_GENES]
                      for k in range(3)])
    np.testing.assert_allclose(got, ref_gene, rtol=0, atol=1e-6)
    lb = pd.read_csv(out / "leaderboard.csv").set_index("model")
    assert lb.loc["ridge-hest", "genewise_pearson_mean"] == pytest.approx(ref_mean, abs=1e-6)
    assert ref_mean > 0.3  # the fixture has signal: the comparison is not of two zeros
    assert set(lb.index) == {"mean", "ridge-hest", "ridge"} and (lb["status"] == "ok").all()
    # the predictions themselves recompute the number (predictions.h5 -> per gene Pearson)
    with h5py.File(out / "predictions.h5", "r") as f:
        assert list(f["genes"].asstr()[()]) == LIST_GENES
        t, p = f["fold_0/truth"][()], f["fold_0/pred/ridge-hest"][()]
    r0 = [np.corrcoef(t[:, g], p[:, g])[0, 1] for g in range(t.shape[1])]
    np.testing.assert_allclose(r0, ref_gene[0], atol=1e-6)


def test_ridge_hest_alpha_and_fit_equal_sklearn():
    from sklearn.linear_model import Ridge

    from tabst.models import make_model

    rng = np.random.default_rng(4)
    X = rng.normal(size=(120, 16)).astype(np.float32)
    Y = (X @ rng.normal(size=(16, 5)) + rng.normal(size=(120, 5))).astype(np.float32)
    m = make_model("ridge-hest").fit(X, Y)
    assert m.alpha_ == pytest.approx(100 / (16 * 5))
    ref = Ridge(alpha=100 / 80, solver="lsqr", fit_intercept=False, max_iter=1000).fit(
        X.astype(np.float64), Y.astype(np.float64))
    np.testing.assert_allclose(m.predict(X), ref.predict(X.astype(np.float64)), rtol=1e-5,
                               atol=1e-5)
    assert make_model("ridge-hest", {"alpha": 3.0}).fit(X, Y).alpha_ == 3.0
    assert load_config("hest-benchmark")["params"]["ridge-hest"]["alpha"] is None


# --- var_50genes.json ---------------------------------------------------------------------------
def test_gene_list_reads_hest_json_and_text(tmp_path):
    store_genes = [f"GENE{i}" for i in range(10)]
    (tmp_path / "var_50genes.json").write_text(json.dumps({"genes": ["GENE7", "GENE2"]}))
    (tmp_path / "list.json").write_text('["GENE3", "GENE1"]')
    (tmp_path / "genes.txt").write_text("# comment\nGENE5\n\nGENE0  # why\n")
    assert read_gene_list(tmp_path / "var_50genes.json", store_genes).tolist() == [2, 7]
    assert read_gene_list(tmp_path / "list.json", store_genes).tolist() == [1, 3]
    assert read_gene_list(tmp_path / "genes.txt", store_genes).tolist() == [0, 5]
    bad = {"broken.json": ('{"genes": [', "not valid JSON"),
           "nokey.json": ('{"gene_list": ["GENE1"]}', "no 'genes' key"),
           "notlist.json": ('{"genes": "GENE1"}', "must be a list"),
           "number.json": ('{"genes": ["GENE1", 5]}', "entry 2"),
           "empty.json": ('{"genes": []}', "names no gene"),
           "unknown.json": ('{"genes": ["GENE1", "ERBB2"]}', "ERBB2")}
    for name, (text, msg) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(TabstError, match=msg):
            read_gene_list(tmp_path / name, store_genes)


# --- group_column: auto -------------------------------------------------------------------------
@pytest.mark.parametrize("column, values, expect", [
    ("patient", PATIENT, "patient"),
    ("group", PATIENT, "group"),  # a /cells/group of patients (e.g. a table store) is used too
    (None, None, "the store has no /cells/patient or /cells/group"),
    ("group", {s: "train" for s in PATIENT}, "/cells/group holds split labels"),
    ("patient", {s: "P0" for s in PATIENT}, "'P0' for every row: nothing to fold by"),
    ("patient", {**PATIENT, "S5": ""}, "empty /cells/patient"),
])
def test_group_column_auto(tmp_path, column, values, expect):
    store = _spot_store(tmp_path / "s.h5", groups=values, column=column)
    with h5py.File(store, "r") as f:
        rows = np.arange(f["cells/sample"].shape[0])
        samples = read_strings(f["cells/sample"])
        col, why = resolve_group_column(f, {"group_column": "auto"}, rows, samples)
        if expect in ("patient", "group"):
            assert col == expect and why.startswith(f"/cells/{expect} (group_column auto: 3 "
                                                    "groups over 6 samples)")
        else:
            assert col is None and why.startswith("sample (group_column auto: ") and expect in why
        # an explicit choice is kept as given; null folds by sample
        assert resolve_group_column(f, {"group_column": None}, rows, samples)[0] is None
        assert resolve_group_column(f, {"group_column": "tissue"}, rows, samples)[0] == "tissue"


def test_group_auto_prefers_patient_and_skips_a_split_group(tmp_path):
    store = _spot_store(tmp_path / "s.h5")
    with h5py.File(store, "a") as f:  # Crunch-like split in /cells/group: one sample in two
        g = np.asarray(["train"] * 300, dtype=object)
        g[:10] = "P9"
        put(f["cells"], "group", g, description="split")
    with h5py.File(store, "r") as f:
        samples = read_strings(f["cells/sample"])
        assert resolve_group_column(f, {"group_column": "auto"}, np.arange(300),
                                    samples)[0] == "patient"
    with h5py.File(store, "a") as f:  # without /cells/patient the split is no fold unit
        del f["cells/patient"]
    with h5py.File(store, "r") as f:
        col, why = resolve_group_column(f, {"group_column": "auto"}, np.arange(300), samples)
    assert col is None and "holds split labels (P9, train)" in why
    with h5py.File(store, "a") as f:  # one sample in two groups, no split word: still refused
        g = np.asarray(["PA"] * 300, dtype=object)
        g[:10] = "P9"
        f["cells/group"][...] = g
    with h5py.File(store, "r") as f:
        col, why = resolve_group_column(f, {"group_column": "auto"}, np.arange(300), samples)
    assert col is None and "sample 'S0' in both 'P9' and 'PA'" in why
    with h5py.File(store, "a") as f:  # a per-sample split with any split word is a split
        f["cells/group"][...] = np.where(samples == "S0", "holdout", "P1").astype(object)
    with h5py.File(store, "r") as f:
        col, why = resolve_group_column(f, {"group_column": "auto"}, np.arange(300), samples)
    assert col is None and "split labels" in why


def test_every_preset_folds_by_group_auto():
    from tabst.config import preset_names

    for name in preset_names():
        assert load_config(name)["group_column"] == "auto", name
    assert load_config("default")["features"]["metadata"]["position"] == "auto"
    with pytest.raises(TabstError, match="expect_transform"):
        load_config("default", ["expect_transform=''"])


# --- expect_transform ---------------------------------------------------------------------------
def test_hest_benchmark_warns_on_other_transform(tmp_path, capsys):
    store = _spot_store(tmp_path / "cp10k.h5", transform="log1p(count/total*10000)",
                        groups=None)
    out = run_compare(store, "hest-benchmark", tmp_path / "run", show_progress=False,
                      render=False, overrides=["ridge.cv=2"])
    err = capsys.readouterr().err
    assert "WARNING: the hest-benchmark preset expects /expression/X = log1p(count)" in err
    assert "log1p(count/total*10000)" in err and "--normalize log1p" in err
    assert ("folds by sample (group_column auto: the store has no /cells/patient or "
            "/cells/group)") in err
    run = json.loads((out / "run.json").read_text())
    assert len(run["warnings"]) == 1 and run["leaderboard_notes"][0].startswith("WARNING: ")
    assert run["group_column"] is None and len(run["folds"]) == 6
    # the default preset expects nothing: no warning on the same store
    run_compare(store, "hest", tmp_path / "run2", show_progress=False, render=False,
                models="ridge", overrides=["ridge.cv=2"])
    assert "WARNING" not in capsys.readouterr().err
