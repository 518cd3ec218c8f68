"""`tabst predict`: Crunch zarr -> ingest -> embed -> compare -> predict -> a submission the
official scorer's ``check()`` accepts (re-implemented here from its public definition)."""
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
from tabst.submission import Expected, SubmissionError, check_submission

FAST = {"features": {"embedding": {"name": "auto", "pca": 4}},
        "params": {"ridge": {"alphas": [1.0, 10.0]}}, "report": {"n_map_genes": 1, "dpi": 50}}



def scorer_check(prediction: pd.DataFrame, data_dir, target_names) -> None:
    """The checks of the Crunch 1 scorer's ``check()`` (crunchdao/competitions,
    competitions/broad-1/scoring/scoring.py), written from its definition: raises AssertionError
    naming the first check that fails."""
    import spatialdata as sd

    assert set(prediction.columns) == {"cell_id", "gene", "prediction", "sample"}, "columns"
    prediction = prediction.set_index("sample", drop=True)
    assert set(target_names) == set(prediction.index.unique()), "samples"
    for name in target_names:
        part = prediction[prediction.index == name]
        sdata = sd.read_zarr(os.path.join(data_dir, f"{name}.zarr"), selection=("tables",))
        obs = sdata["cell_id-group"].obs
        cell_ids = set(obs.query("group == 'test' or group == 'validation'")["cell_id"])
        gene_names = set(sdata["anucleus"].var.index)
        assert not part.isnull().values.any(), f"NaN {name}"
        assert not part.replace([-np.inf, np.inf], np.nan).isnull().values.any(), f"inf {name}"
        assert gene_names == set(part["gene"]), f"genes {name}"
        assert cell_ids == set(part["cell_id"]), f"cell ids {name}"
        assert pd.api.types.is_numeric_dtype(part["prediction"]), f"numeric {name}"
        assert not (part["prediction"] < 0).any(), f"negative {name}"
        assert len(part) == len(cell_ids) * len(gene_names), f"row count {name}"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Two small Crunch samples in the challenge's layout -> store -> real `tabst embed`
    (random ResNet18) -> compare (regions on) -> the run to predict with."""
    from tabst.compare import run_compare

    d = tmp_path_factory.mktemp("pred")
    zarrs = [write_crunch_zarr(d / f"{s}.zarr", seed=i, size=400, n=70, ghosts=False)["path"]
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


def test_submission_passes_the_scorer_check_and_matches_the_refitted_model(pipeline, tmp_path):
    out = tmp_path / "sub.csv"
    res = predict_submission(pipeline["run"], pipeline["store"], out, show_progress=False)
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["cell_id", "gene", "prediction", "sample"]
    scorer_check(sub.copy(), pipeline["dir"], ["DC1", "UC9_I"])  # what the challenge runs
    cells = cells_frame(pipeline["store"])
    scored = cells[cells["group"].isin(["validation", "test"])]
    # two samples in one file: the challenge's integer ids, told apart by `sample`
    assert res.id_column == "source_cell_id" and res.group == "validation,test"
    assert sub["cell_id"].dtype.kind == "i"
    assert res.n_cells == len(scored) and res.n_genes == len(GENES)
    assert res.samples == scored.groupby("sample").size().to_dict()
    assert any("DC1:" in c and "each pair once" in c for c in res.checks)
    assert any("scored cells and 20 genes read from" in n for n in res.notes)
    # values equal the refitted model on the refit feature builder (clipped at 0)
    from tabst.dataset import FeatureBuilder
    from tabst.models.base import TabstModel

    fb = FeatureBuilder.load(pipeline["run"] / "features" / "all")
    m = TabstModel.load(pipeline["run"] / "models" / res.model / "all")
    P = np.clip(m.predict(fb.transform(pipeline["store"], scored.index.to_numpy())), 0, None)
    got = sub.pivot(index=["sample", "cell_id"], columns="gene", values="prediction")
    key = list(zip(scored["sample"], scored["source_cell_id"].astype(int)))
    np.testing.assert_allclose(got.loc[key, list(m.target_names_)].to_numpy(), P, rtol=1e-5,
                               atol=1e-6)
    lb = pd.read_csv(pipeline["run"] / "leaderboard.csv")
    assert res.model == lb.sort_values("rank")["model"].iloc[0]  # default: best-ranked refit


def test_decimals_per_sample_and_sample_filter(pipeline, tmp_path):
    out = tmp_path / "sub2.csv"
    predict_submission(pipeline["run"], pipeline["store"], out, decimals=2, show_progress=False)
    txt = out.read_text().splitlines()[1:50]
    assert all(len(line.split(",")[2].split(".")[1]) == 2 for line in txt)
    folder = tmp_path / "per"
    res = predict_submission(pipeline["run"], pipeline["store"], folder, per_sample=True,
                             show_progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["DC1.csv", "UC9_I.csv"]
    for s in ("DC1", "UC9_I"):
        scorer_check(pd.read_csv(folder / f"{s}.csv"), pipeline["dir"], [s])
    assert len(res.checks) == 2
    one = tmp_path / "uc9.csv"
    res = predict_submission(pipeline["run"], pipeline["store"], one, samples=["UC9_I"],
                             model="mean", group="test", show_progress=False)
    sub = pd.read_csv(one)
    c = cells_frame(pipeline["store"])
    want = c[(c["group"] == "test") & (c["sample"] == "UC9_I")]["source_cell_id"].astype(int)
    assert set(sub["cell_id"]) == set(want) and set(sub["sample"]) == {"UC9_I"}


def _frame(ids=("1", "2"), genes=("A", "B"), sample="S"):
    return pd.DataFrame([{"cell_id": c, "gene": g, "prediction": 0.5, "sample": sample}
                         for c in ids for g in genes])


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.drop(columns="sample"), "columns do not match"),
    (lambda d: d.assign(sample="T"), "sample 'T' is not requested"),
    (lambda d: d.assign(prediction=[np.nan, 1, 1, 1]), "NaN"),
    (lambda d: d.assign(prediction=[np.inf, 1, 1, 1]), "infinite"),
    (lambda d: d[d["gene"] != "B"], "gene names do not match.*missing B"),
    (lambda d: d[d["cell_id"] != "2"], "cell ids do not match.*missing 2"),
    (lambda d: pd.concat([d, d.assign(cell_id="9")]), "unexpected 9"),
    (lambda d: d.assign(prediction=[-0.1, 1, 1, 1]), "negative"),
    (lambda d: pd.concat([d, d.iloc[:1]]), "row count .* should be 4"),
    (lambda d: d.assign(prediction=["x", 1, 1, 1]), "numbers|non-numeric"),
])
def test_check_submission_refuses_what_the_scorer_refuses(tmp_path, edit, match):
    exp = Expected(["A", "B"], {"S": np.array(["1", "2"], dtype=object)})
    ok = tmp_path / "ok.csv"
    _frame().to_csv(ok, index=False)
    assert len(check_submission(ok, exp)) == 3
    bad = tmp_path / "bad.csv"
    edit(_frame()).to_csv(bad, index=False)
    with pytest.raises(SubmissionError, match=match):
        check_submission(bad, exp, chunk_rows=3)  # chunks smaller than the file


def test_cells_the_scorer_wants_but_the_store_lacks(tmp_path):
    """Table cells with no nucleus in the mask are dropped at ingest; the scorer still wants
    them: predict says so instead of writing a file the scorer refuses."""
    from tabst.compare import run_compare

    t = [write_crunch_zarr(tmp_path / f"{s}.zarr", seed=i, size=300, n=40)
         for i, s in enumerate(("A", "B"))]
    assert any(g in ("validation", "test") for g in t[0]["groups"][-5:])  # ghosts of A
    store = tmp_path / "s.h5"
    ingest_crunch([x["path"] for x in t], store, tile=128, show_progress=False)
    import h5py

    from tabst.store import put

    with h5py.File(store, "r+") as f:  # a stand-in embedding: this test is about the cell sets
        n = f["cells/cell_id"].shape[0]
        put(f.require_group("embeddings"), "test",
            np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32),
            description="random (test)", encoder="synthetic", layer="none", weights="random",
            patch_size=32, complete=True)
    cfg = {**FAST, "models": ["mean"], "features": {"embedding": {"name": "auto", "pca": 4},
                                                    "features": [], "neighbourhood": None}}
    run = run_compare(store, cfg, tmp_path / "run", show_progress=False, render=False)
    with pytest.raises(TabstError, match="not in the store .* no nucleus in the mask"):
        predict_submission(run, store, tmp_path / "x.csv", samples=["A"], show_progress=False)
    assert not (tmp_path / "x.csv").exists()


def test_errors_leave_nothing(pipeline, tmp_path, monkeypatch):
    out = tmp_path / "bad.csv"
    with pytest.raises(TabstError, match="no cell in group"):
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
            "--group", "validation,test", "--decimals", "3"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "group validation,test" in r.output and out.exists()
    assert "scorer check ok" in r.output and "each pair once" in r.output
    assert "scorer check: " in r.output and "-- done" in r.output  # the re-read shows progress
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "already exists" in r.output


def test_nan_embedding_cells_are_counted_and_warned(pipeline, tmp_path):
    import shutil

    import h5py

    store = pipeline["dir"] / "nan-emb.h5"  # beside the zarrs: the store's paths stay valid
    shutil.copy(pipeline["store"], store)
    cells = cells_frame(store)
    scored = np.flatnonzero(cells["group"].isin(["validation", "test"]).to_numpy())
    with h5py.File(store, "r+") as f:
        (name,) = list(f["embeddings"])
        ds = f[f"embeddings/{name}"]
        for i in scored[:3]:
            row = ds[i]
            row[0] = np.nan
            ds[i] = row
    res = predict_submission(pipeline["run"], store, tmp_path / "n.csv", show_progress=False)
    warn = [n for n in res.notes if n.startswith("WARNING")]
    assert warn and f"3 of {len(scored):,} cells have NaN in the embedding" in warn[0]
    clean = predict_submission(pipeline["run"], pipeline["store"], tmp_path / "c.csv",
                               show_progress=False)
    assert not [n for n in clean.notes if n.startswith("WARNING")]


def test_check_refuses_rows_without_sample_and_an_empty_file(tmp_path):
    exp = Expected(["A", "B"], {"S": np.array(["1", "2"], dtype=object)})
    p = tmp_path / "na.csv"
    _frame().to_csv(p, index=False)
    with open(p, "a") as fh:
        fh.write("1,A,0.1,\n")
    with pytest.raises(SubmissionError, match="empty or NA sample"):
        check_submission(p, exp)
    e = tmp_path / "empty.csv"
    e.write_text("cell_id,gene,prediction,sample\n")
    with pytest.raises(SubmissionError, match="holds no rows"):
        check_submission(e, exp)


def test_other_groups_say_the_scorer_wants_validation_and_test(pipeline, tmp_path):
    res = predict_submission(pipeline["run"], pipeline["store"], tmp_path / "t.csv",
                             group="test", show_progress=False)
    assert any("scores every validation + test cell" in n for n in res.notes)
