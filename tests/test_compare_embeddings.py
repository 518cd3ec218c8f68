"""Several embeddings in one `tabst compare` (--features a,b / embedding: [a, b]): one ordinary
sub-run per embedding with the same folds, the stacked leaderboard and encoder table at the top,
and `tabst predict` / `tabst explain` / `tabst report` on such a run folder."""
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
from tabst.compare_multi import check_folds, resolve_run_dir
from tabst.config import load_config
from tabst.errors import StoreError, TabstError
from tabst.store import put

FAST = {"models": ["ridge"], "features": {"embedding": {"name": "auto", "pca": 4}},
        "params": {"ridge": {"alphas": [0.1, 10.0]}}, "report": {"n_map_genes": 1, "dpi": 40}}
CELLS = {"a": "ResNet50 cut at layer3", "b": "random-weights control"}


def _add_embedding(path, name, emb, random_weights: bool) -> None:
    """/embeddings/<name> with the attrs layout `tabst embed` writes."""
    with h5py.File(path, "r+") as f:
        put(f["embeddings"], name, emb.astype(np.float32), description=CELLS[name],
            encoder="resnet50", layer="layer3", dim=int(emb.shape[1]), pooling="global average",
            weights="random" if random_weights else "imagenet",
            weights_id="random" if random_weights else "torchvision:IMAGENET1K_V2",
            random_weights=random_weights, weights_seed=0 if random_weights else -1,
            patch_size=32, resize=224, complete=True, rows_done=int(emb.shape[0]))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("multi")
    p = write_tiny_store(d / "tiny.h5", n_samples=3, cells_per_sample=30, n_genes=6, emb_dim=8)
    with h5py.File(p, "r") as f:
        emb = f["embeddings/test"][()]
    rng = np.random.default_rng(5)
    _add_embedding(p, "a", emb, False)  # the informative one
    _add_embedding(p, "b", rng.normal(size=emb.shape), True)  # noise
    return p


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "fast.yaml"
    p.write_text(yaml.safe_dump(FAST))
    return str(p)


@pytest.fixture(scope="module")
def multi(store, cfg_file, tmp_path_factory):
    """`tabst compare STORE --features a,b` (mean + ridge); returns (run folder, CLI result)."""
    out = tmp_path_factory.mktemp("runs") / "ab"
    r = CliRunner().invoke(app, ["compare", store, "--config", cfg_file, "--features", "a,b",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out, r


def test_multi_run_stacks_every_sub_run(multi):
    out, r = multi
    assert "embedding 1/2: a" in r.output and "embedding 2/2: b" in r.output
    assert not list(out.parent.glob(".ab.*"))  # the temp folder was renamed
    for name in ("leaderboard.csv", "encoder_table.csv", "run.json", "config.yaml",
                 "report.html"):
        assert (out / name).is_file(), name
    subs = {}
    for e in ("a", "b"):
        sub = out / "embeddings" / e
        for name in ("leaderboard.csv", "predictions.h5", "run.json", "report.html"):
            assert (sub / name).is_file(), (e, name)
        assert (sub / "models" / "ridge" / "all" / "model.json").is_file()
        assert json.loads((sub / "run.json").read_text())["embedding"]["name"] == e
        assert not (sub / "embeddings").exists()
        subs[e] = pd.read_csv(sub / "leaderboard.csv")

    lb = pd.read_csv(out / "leaderboard.csv")
    assert list(lb.columns[:2]) == ["embedding", "rank"] and list(lb["rank"]) == [1, 2, 3, 4]
    assert sorted(zip(lb["embedding"], lb["model"])) == [("a", "mean"), ("a", "ridge"),
                                                         ("b", "mean"), ("b", "ridge")]
    v = lb["cellwise_spearman_mean"].to_numpy()
    assert (np.diff(v) <= 1e-12).all()  # ranked by the primary metric
    metrics = [f"{m}_{s}" for m in ("cellwise_spearman", "genewise_pearson", "mse")
               for s in ("mean", "sd")]
    for e, d in subs.items():
        mine = lb[lb["embedding"] == e].set_index("model")
        theirs = d.set_index("model")
        pd.testing.assert_frame_equal(mine.loc[theirs.index, metrics], theirs[metrics])
        assert (mine.loc[theirs.index, "embedding_rank"] == theirs["rank"]).all()
    # the informative embedding beats the noise for ridge, the mean baseline is the same on both
    g = lb.set_index(["embedding", "model"])["genewise_pearson_mean"]
    assert g["a", "ridge"] > g["b", "ridge"] + 0.2
    assert g["a", "mean"] == g["b", "mean"]

    enc = pd.read_csv(out / "encoder_table.csv")
    assert list(enc["embedding"]) == ["a", "b"]
    assert {"mean", "ridge", "mean_mean", "mean_sd", "ridge_mean", "ridge_sd"} <= set(enc.columns)
    for i, e in enumerate(("a", "b")):
        d = subs[e].set_index("model")
        for m in ("mean", "ridge"):
            assert enc.loc[i, f"{m}_mean"] == pytest.approx(d.loc[m, "cellwise_spearman_mean"])
            assert enc.loc[i, f"{m}_sd"] == pytest.approx(d.loc[m, "cellwise_spearman_sd"])
            assert " ± " in enc.loc[i, m]

    run = json.loads((out / "run.json").read_text())
    assert run["kind"] == "multi-embedding" and run["embeddings"] == ["a", "b"]
    assert run["sub_runs"] == {"a": "embeddings/a", "b": "embeddings/b"}
    assert run["folds_identical"] is True and run["ranked_by"] == "cellwise_spearman"
    sub_folds = [json.loads((out / "embeddings" / e / "run.json").read_text())["folds"]
                 for e in ("a", "b")]
    assert run["folds"] == sub_folds[0] == sub_folds[1]
    assert [f["test_samples"] for f in run["folds"]] == [["S0"], ["S1"], ["S2"]]
    assert run["embedding_attrs"]["b"]["random_weights"] is True
    assert run["timing"]["total_seconds"] >= sum(run["timing"]["embeddings_seconds"].values())
    assert yaml.safe_load((out / "config.yaml").read_text())["embedding"] == ["a", "b"]
    assert check_folds(out, ["a", "b"]) == run["folds"]

    html = (out / "report.html").read_text()
    assert 'id="encoder-model-table"' in html
    assert html.count("RANDOM WEIGHTS") == 2  # b: in the table and in its section, a: none
    assert 'href="embeddings/a/report.html"' in html and 'href="embeddings/b/report.html"' in html
    assert "torchvision:IMAGENET1K_V2" in html and "<script" not in html
    assert html.count('class="overall"') == 1  # the best cell overall
    ridge_a = enc.loc[0, "ridge_mean"]
    assert f"{ridge_a:.3f}" in html
    # the terminal shows the encoder table
    assert "2 embeddings" in r.output and "★" in r.output and "report:" in r.output


def test_config_list_runs_like_the_option(multi, store, tmp_path):
    out = run_compare(store, {**FAST, "embedding": ["a", "b"]}, tmp_path / "cfg",
                      show_progress=False, render=False)
    a = pd.read_csv(out / "leaderboard.csv")
    b = pd.read_csv(multi[0] / "leaderboard.csv")
    cols = ["embedding", "rank", "model", "cellwise_spearman_mean", "genewise_pearson_mean",
            "mse_mean", "cellwise_spearman_sd"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert not (out / "report.html").exists()


def test_single_embedding_has_no_sub_folders(store, tmp_path):
    out = run_compare(store, {**FAST, "embedding": ["a"]}, tmp_path / "one", show_progress=False,
                      render=False)
    assert not (out / "embeddings").exists() and not (out / "encoder_table.csv").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["kind"] == "tabst compare run" and run["embedding"]["name"] == "a"
    assert resolve_run_dir(out, announce=False) == (out, "a")
    assert resolve_run_dir(out, "a", announce=False) == (out, "a")
    with pytest.raises(TabstError, match="only the embedding 'a'"):
        resolve_run_dir(out, "b")


def test_config_embedding_validation(store, tmp_path):
    assert load_config(FAST, embedding="a,b")["embedding"] == ["a", "b"]
    assert load_config({**FAST, "embedding": ["a"]})["embedding"] == "a"
    for bad, words in (([], "empty list"), (["a", ""], "non-empty"), (["a", 3], "non-empty"),
                       (["a", "a"], "twice"), (3, "must be a string or a list or null")):
        with pytest.raises(TabstError, match=words):
            load_config({**FAST, "embedding": bad})
    out = tmp_path / "r"
    with pytest.raises(StoreError, match="no embedding 'nosuch'.*a, b, test"):
        run_compare(store, FAST, out, features="a,nosuch", show_progress=False)
    with pytest.raises(TabstError, match="features.embedding.name"):
        run_compare(store, {**FAST, "embedding": ["a", "b"],
                            "features": {"embedding": {"name": "a"}}}, out, show_progress=False)
    with pytest.raises(TabstError, match="max-hours"):  # bounds the whole run
        run_compare(store, {**FAST, "embedding": ["a", "b"], "max_hours": 1e-9}, out,
                    show_progress=False, render=False)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_interrupted_run_leaves_nothing_and_max_hours_spans_the_run(store, tmp_path,
                                                                   monkeypatch):
    import tabst.compare

    real, seen = tabst.compare.run_compare, []

    def second_one_interrupted(store_, cfg, out, **kw):
        seen.append(cfg["max_hours"])
        if len(seen) == 2:
            assert (out.parent / "a" / "run.json").is_file()  # the first sub-run is complete
            raise KeyboardInterrupt
        return real(store_, cfg, out, **kw)

    monkeypatch.setattr(tabst.compare, "run_compare", second_one_interrupted)
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        real(store, {**FAST, "embedding": ["a", "b"], "max_hours": 2.0}, out,
             show_progress=False, render=False)
    assert not out.exists() and not list(tmp_path.iterdir())
    assert 2.0 > seen[0] > seen[1] > 1.9  # each sub-run gets the time left of the whole run


def test_resolve_run_dir_picks_the_best_embedding(multi, capsys):
    out, _ = multi
    sub, name = resolve_run_dir(out, purpose="predict")
    lb = pd.read_csv(out / "leaderboard.csv")
    best = lb.sort_values("rank").iloc[0]  # every row has a refit
    assert (sub, name) == (out / "embeddings" / best["embedding"], best["embedding"])
    err = capsys.readouterr().err
    assert f"using embedding {name} (best cellwise_spearman" in err
    assert "pass --embedding to choose" in err
    sub, name = resolve_run_dir(out, purpose="explain")
    top = lb[lb["model"] != "mean"].sort_values("rank").iloc[0]
    assert name == top["embedding"] == "a"
    assert resolve_run_dir(out, "b", announce=False) == (out / "embeddings" / "b", "b")
    assert resolve_run_dir(out, purpose="predict", models=["ridge"], announce=False)[1] == "a"
    with pytest.raises(TabstError, match="no embedding 'c'.*Embeddings: a, b"):
        resolve_run_dir(out, "c")


def test_predict_and_explain_on_a_multi_run(multi, store, tmp_path):
    out = shutil.copytree(multi[0], tmp_path / "run")
    runner = CliRunner()
    csv = tmp_path / "p.csv"
    r = runner.invoke(app, ["predict", str(out), "--store", store, "--out", str(csv), "--group",
                            "all", "--embedding", "b", "--model", "ridge"])
    assert r.exit_code == 0, r.output
    assert "using embedding b (--embedding)" in r.output and csv.exists()
    r = runner.invoke(app, ["predict", str(out), "--store", store, "--out",
                            str(tmp_path / "q.csv"), "--group", "all", "--embedding", "zz"])
    assert r.exit_code == 1 and "Embeddings: a, b" in r.output and "Traceback" not in r.output

    r = runner.invoke(app, ["explain", str(out), "--genes", "GENE1", "--top-genes", "0",
                            "--models", "ridge", "--cells", "12", "--gallery", "0"])
    assert r.exit_code == 0, r.output
    assert "using embedding a (best cellwise_spearman" in r.output
    assert (out / "embeddings" / "a" / "attributions.h5").is_file()
    assert (out / "embeddings" / "a" / "explain.html").is_file()
    assert not (out / "attributions.h5").exists()

    # tabst report re-renders the top-level page
    (out / "report.html").unlink()
    r = runner.invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    assert 'id="encoder-model-table"' in (out / "report.html").read_text()


def test_different_folds_are_refused(multi, tmp_path):
    out = shutil.copytree(multi[0], tmp_path / "run")
    rj = out / "embeddings" / "b" / "run.json"
    run = json.loads(rj.read_text())
    run["folds"][0]["test_samples"], run["folds"][1]["test_samples"] = ["S1"], ["S0"]
    rj.write_text(json.dumps(run))
    with pytest.raises(TabstError, match="folds of embedding 'b' differ"):
        check_folds(out, ["a", "b"])
