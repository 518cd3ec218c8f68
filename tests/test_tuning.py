"""`tabst compare --tune`: search-space validation, nested (leak-free) inner CV, resumable
studies, per-round pruning hooks, and a gain over a clearly wrong default."""
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
from tabst.tuning import study_dir
from tabst.tuning.space import _dist, model_space, validate_tune

TUNE = ["tune.enabled=true", "features.neighbourhood=null"]


def store(tmp_path, name="s.h5", **kw):
    kw.setdefault("n_samples", 4)
    kw.setdefault("cells_per_sample", 50)
    return write_tiny_store(tmp_path / name, **kw)


# --- spaces ----------------------------------------------------------------------------------
def test_space_syntax_and_validation():
    assert _dist("a", {"int": [2, 10]}, "w").values == (2, 10)
    assert _dist("a", {"choice": [8, 16]}, "w").kind == "choice"
    for bad, msg in [({"int": [3, 2]}, "low must be < high"), ({"float_log": [0, 1]}, "log scale"),
                     ({"gauss": [0, 1]}, "unknown kind"), ({"int": [1.5, 3]}, "integers"),
                     ({"int": [1, 2], "float": [1, 2]}, "must be one of"),
                     ({"float": ["a", 1]}, "numbers")]:
        with pytest.raises(TabstError, match=msg):
            _dist("a", bad, "tune.spaces.xgboost")
    with pytest.raises(TabstError, match="unknown parameter 'depth' of xgboost"):
        model_space("xgboost", {"depth": {"int": [1, 3]}}, "tune.spaces.xgboost")
    with pytest.raises(TabstError, match=r"'subsample': the value 0 is not allowed"):
        model_space("xgboost", {"subsample": {"float": [0, 1]}}, "tune.spaces.xgboost")
    tied = model_space("tabnet", {"n_d": {"choice": [8, 16]}}, "w")
    assert [d.key for d in tied] == ["n_d"]


def test_tune_block_in_the_config():
    cfg = load_config("quick", ["tune.enabled=true"])
    t = cfg["tune"]
    assert t["models"] == ["ridge", "tree", "xgboost", "tabnet", "context", "context-k0"]  # auto
    assert "max_depth" in t["spaces"]["xgboost"] and "embedding.pca" in t["spaces"]["features"]
    assert load_config("quick")["tune"]["enabled"] is False
    with pytest.raises(TabstError, match=r"'tune.spaces.tree': key 'max_depth': low must be"):
        load_config("quick", ["tune.spaces.tree={max_depth: {int: [5, 2]}}"])
    with pytest.raises(TabstError, match="names 'tabnet', which is not in 'models'"):
        load_config("quick", ["tune.models=[tabnet]"], models="ridge")
    assert t["fixed"] == {"xgboost": {"n_estimators": 400, "early_stopping_rounds": 20}}
    with pytest.raises(TabstError, match=r"tune.fixed.xgboost': xgboost.n_estimators must be"):
        load_config("quick", ["tune.fixed={xgboost: {n_estimators: 0}}"])
    with pytest.raises(TabstError, match="tune.metric' must be one of"):
        load_config("quick", ["tune.metric=pearson"])
    assert t["metric"] is None  # the primary metric
    with pytest.raises(TabstError, match="tune.trails' is unknown"):
        load_config("quick", ["tune.trails=3"])
    with pytest.raises(TabstError, match="tune.spaces.features': unknown key 'pca'"):
        validate_tune({"spaces": {"features": {"pca": {"choice": [2]}}}}, ["ridge"], "c")


# --- model hooks -----------------------------------------------------------------------------
def test_round_callback_sees_every_round_and_can_stop_a_fit():
    from tabst.models import make_model

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(300, 5)).astype(np.float32), rng.normal(size=(300, 3))
    groups = np.repeat(["a", "b", "c"], 100)
    m = make_model("xgboost", {"n_estimators": 7, "early_stopping_rounds": 50})
    seen = []
    m.round_callback = lambda r, loss: seen.append((r, loss))
    m.fit(X, Y, groups=groups)
    assert [r for r, _ in seen] == list(range(7)) and all(np.isfinite(v) for _, v in seen)

    class Stop(Exception):
        pass

    def stop(r, loss):
        if r == 2:
            raise Stop
    t = make_model("tabnet", {"max_epochs": 5, "patience": 5, "pretrain": False,
                              "batch_size": 64, "virtual_batch_size": 32})
    t.round_callback = stop
    with pytest.raises(Stop):
        t.fit(X, Y, groups=groups)


# --- nested and leak-free --------------------------------------------------------------------
def _poison(path, sample):
    with h5py.File(path, "r+") as f:
        s = np.asarray(f["cells/sample"][()]).astype(str)
        m = s == sample
        X = f["expression/X"][()]
        X[m] = X[m] * 50 + 7
        f["expression/X"][...] = X
        E = f["embeddings/test"][()]
        E[m] = np.random.default_rng(1).normal(size=E[m].shape) * 100
        f["embeddings/test"][...] = E


def test_outer_test_rows_never_reach_a_trial(tmp_path):
    """Poisoning one sample's expression and embedding changes nothing in the studies of the
    fold that holds it out (so no trial saw it) and changes the other folds' studies."""
    a, b = store(tmp_path, "a.h5"), store(tmp_path, "b.h5")
    _poison(b, "S3")
    kw = dict(models="tree", overrides=TUNE + ["tune.trials=3", "tune.pruning=false"],
              show_progress=False, render=False)
    ra = run_compare(a, "quick", tmp_path / "ra", **kw)
    rb = run_compare(b, "quick", tmp_path / "rb", **kw)
    ta, tb = pd.read_csv(ra / "tuning.csv"), pd.read_csv(rb / "tuning.csv")
    folds = json.loads((ra / "run.json").read_text())["folds"]
    k = str(next(fd["fold"] for fd in folds if fd["test_samples"] == ["S3"]))
    fa, fb = ta[ta["fold"].astype(str) == k], tb[tb["fold"].astype(str) == k]
    assert len(fa) == 3 and fa["inner_scores"].tolist() == fb["inner_scores"].tolist()
    assert fa["params"].tolist() == fb["params"].tolist()
    other = ta["fold"].astype(str) != k
    assert ta[other]["inner_scores"].tolist() != tb[other]["inner_scores"].tolist()
    assert not study_dir(tmp_path / "ra").exists()  # moved into the run folder when done
    assert (ra / "tuning" / "tree" / f"fold_{k}.log").is_file()


# --- resume ----------------------------------------------------------------------------------
def _study(path, rows, f, trials):
    from tabst.config import model_params
    from tabst.dataset import load_targets, rows_with_expression
    from tabst.run_inputs import feature_spec
    from tabst.tuning.space import feature_space
    from tabst.tuning.study import run_study

    cfg = load_config("quick", TUNE, models="tree")
    rows = np.asarray(rows_with_expression(f), dtype=np.int64)
    Y, _ = load_targets(f, rows)
    samples = np.asarray(f["cells/sample"][()]).astype(str)[rows]
    return run_study(model="tree", fold="0", f=f, rows=rows, Y=np.asarray(Y, np.float32),
                     samples=samples, regions=None, spec=feature_spec(cfg, "test"),
                     base_params=model_params(cfg, "tree"),
                     model_dists=model_space("tree", cfg["tune"]["spaces"]["tree"], "t"),
                     feature_dists=feature_space(cfg["tune"]["spaces"]["features"], "t"),
                     metric="cellwise_spearman", direction=1, clip=True, seed=0, trials=trials,
                     seconds=None, n_inner=3, pruning=True, storage=path,
                     genes=[f"g{i}" for i in range(Y.shape[1])])


def test_a_resumed_study_continues_from_its_stored_trials(tmp_path):
    p = store(tmp_path)
    with h5py.File(p) as f:
        first = _study(tmp_path / "j.log", None, f, 2)
        again = _study(tmp_path / "j.log", None, f, 2)   # nothing left to do
        more = _study(tmp_path / "j.log", None, f, 4)
        fresh = _study(tmp_path / "k.log", None, f, 4)
    assert first.n_trials == again.n_trials == 2 and more.n_trials == 4
    assert [r["params"] for r in more.records[:2]] == [r["params"] for r in first.records]
    assert [r["inner_score"] for r in more.records[:2]] == \
        [r["inner_score"] for r in fresh.records[:2]]
    assert first.records[0]["default"] and not first.records[1]["default"]


# --- it helps --------------------------------------------------------------------------------
def _interaction_target(path):
    """Expression = a_g * [e0 > 0 and e1 > 0] + c_g * [e2 > 0] + noise: an interaction of two
    embedding dimensions beside a main effect, which a depth-1 tree (one split) cannot fit."""
    rng = np.random.default_rng(5)
    with h5py.File(path, "r+") as f:
        E = f["embeddings/test"][()]
        X = f["expression/X"][()]
        a, b = rng.normal(size=X.shape[1]), rng.normal(size=X.shape[1])
        z = ((E[:, 0] > 0) & (E[:, 1] > 0)).astype(float)[:, None]
        w = (E[:, 2] > 0).astype(float)[:, None]
        f["expression/X"][...] = (2 + 2 * a * z + b * w + 0.05 * rng.normal(size=X.shape)
                                  ).astype(X.dtype)


def test_tuning_beats_a_clearly_wrong_default(tmp_path):
    """A depth-1 tree cannot fit an interaction target; the study finds deeper ones, the tuned
    model beats the default on the outer folds, and its refit is there for predict/explain."""
    p = store(tmp_path, cells_per_sample=60, n_genes=40)
    _interaction_target(p)
    run = run_compare(p, "quick", tmp_path / "run", models="tree",
                      overrides=TUNE + ["tune.trials=6", "tree.max_depth=1",
                                        "features.embedding.pca=null", "tree.codec=identity",
                                        "tune.spaces.tree={max_depth: {int: [1, 6]}}",
                                        "tune.spaces.features={}"],
                      show_progress=False, render=False)
    info = json.loads((run / "run.json").read_text())["tuning"]["models"]["tree"]
    assert all(r["best_inner"] >= r["default_inner"] for r in info.values())  # default = trial 0
    better = [f for f, r in info.items() if r["best_inner"] > r["default_inner"]
              and r["params"]["max_depth"] > 1]
    assert len(better) >= 4, info  # of the 4 outer folds + the refit
    lb = pd.read_csv(run / "leaderboard.csv").set_index("model")
    assert lb.loc["tree+tuned", "cellwise_spearman_mean"] > lb.loc["tree", "cellwise_spearman_mean"]
    assert (run / "models" / "tree+tuned" / "all").is_dir()
    from tabst.explain.runfolder import Run

    assert Run(run).feature_builder(None, "tree+tuned") is not None


def test_trials_are_scored_on_tune_metric(tmp_path):
    """tune.metric=mse: the studies minimise the inner MSE (best <= default, trial 0), the
    report and run.json say so."""
    p = store(tmp_path, cells_per_sample=40, n_genes=20)
    run = run_compare(p, "quick", tmp_path / "run", models="tree",
                      overrides=TUNE + ["tune.trials=4", "tune.metric=mse", "tree.max_depth=1",
                                        "tune.spaces.tree={max_depth: {int: [1, 6]}}",
                                        "tune.spaces.features={}"],
                      show_progress=False, render=False)
    record = json.loads((run / "run.json").read_text())
    tuning = record["tuning"]
    assert tuning["metric"] == "mse"
    info = tuning["models"]["tree"]
    assert all(r["best_inner"] <= r["default_inner"] for r in info.values()), info
    trials = pd.read_csv(run / "tuning.csv")
    assert (trials["inner_score"].dropna() > 0).all()  # MSEs, not correlations near 0
    from tabst.report.tuning import load_tuning

    T = load_tuning(run, record)
    assert T["metric"] == "mse" and T["direction"] < 0


def test_a_tuned_model_with_its_own_features_is_explained(tmp_path):
    """The study picks PCA k = 4 or 8 where the preset uses 32 (= the embedding's 16 dims): the
    tuned model gets its own feature builder (features/xgboost+tuned/...), and explain uses
    it."""
    from tabst.explain.run import explain_run

    p = store(tmp_path)
    run = run_compare(p, "quick", tmp_path / "run", models="xgboost",
                      overrides=TUNE + ["tune.trials=2", "xgboost.n_estimators=10",
                                        "tune.spaces.features={embedding.pca: {choice: [4, 8]}}"],
                      show_progress=False, render=False)
    own = run / "features" / "xgboost+tuned"
    assert (own / "fold_0").is_dir() and (own / "all").is_dir()
    spec = json.loads((own / "fold_0" / "features.json").read_text())
    assert spec["spec"]["embedding"]["pca"] in (4, 8)
    assert (run / "models" / "xgboost+tuned" / "fold_0").is_dir()
    res, info = explain_run(run, models=["xgboost+tuned"], top_genes=2, show_progress=False)
    r = res["xgboost+tuned"]
    assert r.values.shape[1] == len(r.features) and not info["warnings"]


def test_an_interrupted_run_resumes_its_studies(tmp_path, monkeypatch):
    """A run that dies after its studies ran leaves nothing at --out but keeps the studies
    beside it; the rerun loads them (no new trials: the budget is spent) and then cleans up."""
    import tabst.tuning as tuning

    p = store(tmp_path)
    kw = dict(models="tree", overrides=TUNE + ["tune.trials=2"], show_progress=False,
              render=False)

    def boom(self, tmp):
        raise RuntimeError("interrupted")
    monkeypatch.setattr(tuning.Tuner, "finish", boom)
    with pytest.raises(RuntimeError):
        run_compare(p, "quick", tmp_path / "run", **kw)
    assert not (tmp_path / "run").exists() and study_dir(tmp_path / "run").is_dir()
    monkeypatch.undo()
    stamp = {q.name: q.read_bytes() for q in study_dir(tmp_path / "run").glob("tree/*.log")}
    run = run_compare(p, "quick", tmp_path / "run", **kw)
    t = pd.read_csv(run / "tuning.csv")
    assert len(t) == 2 * 5 and not study_dir(tmp_path / "run").exists()
    # the very journals of the first run (their trials' timestamps): loaded, not redone
    after = {q.name: q.read_bytes() for q in (run / "tuning" / "tree").glob("*.log")}
    assert set(after) == set(stamp) and all(after[k].startswith(v) for k, v in stamp.items())
