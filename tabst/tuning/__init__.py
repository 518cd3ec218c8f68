"""Hyperparameter tuning for ``tabst compare --tune``: Optuna studies nested inside the outer
folds (:mod:`.study`), search spaces from the config (:mod:`.space`), and the glue the compare
loop calls (:class:`Tuner`)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

SUFFIX = "+tuned"


def tuned_key(model: str) -> str:
    return model + SUFFIX


def base_model(key: str) -> str:
    return key[:-len(SUFFIX)] if key.endswith(SUFFIX) else key


def study_dir(out: Path) -> Path:
    """Where the studies of a run being built live until it completes (beside ``--out``, so an
    interrupted run finds them again): ``<parent>/.<name>.tuning``."""
    out = Path(out)
    return out.parent / f".{out.name}.tuning"


def _fit_pca_space(f, spec: dict, dists: list) -> list:
    """The PCA-k choices the embedding can give (k above its dimension = the dimension; a
    single left = nothing to search); none without an embedding."""
    from dataclasses import replace

    emb = spec.get("embedding")
    out = []
    for d in dists:
        if d.key != "embedding.pca":
            out.append(d)
            continue
        name = (emb or {}).get("name")
        if emb is None or not name or f"embeddings/{name}" not in f:
            continue
        D = int(f[f"embeddings/{name}"].shape[1])
        if d.kind == "choice":
            vals = tuple(sorted({min(int(v), D) for v in d.values}))
            if len(vals) > 1:
                out.append(replace(d, values=vals))
        elif d.values[0] < D:
            out.append(replace(d, values=(d.values[0], min(d.values[1], D))))
    return out


class Tuner:
    """Runs the studies of one compare run and hands the compare loop the tuned inputs."""

    def __init__(self, f, cfg: dict, spec: dict, *, out_dir: Path, clip: bool, regions,
                 n_studies: int):
        from .space import feature_space, model_space

        t = cfg["tune"]
        self.f, self.cfg, self.spec, self.clip, self.regions = f, cfg, spec, clip, regions
        self.dir = Path(out_dir)
        self.models = list(t["models"])
        self.dists = {m: model_space(m, t["spaces"].get(m, {}), f"tune.spaces.{m}")
                      for m in self.models}
        self.feature_dists = feature_space(t["spaces"].get("features", {}), "tune.spaces.features")
        self.feature_dists = _fit_pca_space(f, spec, self.feature_dists)
        self.seconds = None if t["minutes"] is None else t["minutes"] * 60.0 / max(1, n_studies)
        self.results: dict = {}   # (model, fold) -> TuneResult
        self.t_total = 0.0
        self.metric = t["metric"] or cfg["primary_metric"]  # what the trials are scored on

    def keys(self) -> dict:
        return {tuned_key(m): m for m in self.models}

    def inputs(self, key: str, fold, rows, Y, samples, idx, Xtr, Xte, names, groups, genes,
               test_rows=None):
        """Tune ``base_model(key)`` on the training ``rows`` (store rows; ``idx`` their positions
        in the run's row arrays), then return ``(params, Xtr, Xte, feature names, feature
        groups, FeatureBuilder or None)`` for the outer fit: the default matrices when the best
        trial kept the feature defaults, else matrices from a builder fitted on ``rows``."""
        from ..config import model_params
        from ..dataset import FeatureBuilder
        from ..evaluate import METRIC_DIRECTION
        from ..models import REGISTRY
        from .space import apply_features
        from .study import run_study

        m = base_model(key)
        base = {**model_params(self.cfg, m), **self.cfg["tune"]["fixed"].get(m, {})}
        mspec = REGISTRY[m](**base).feature_spec(self.spec)  # e.g. context's neighbours
        t0 = time.perf_counter()
        res = run_study(model=m, fold=str(fold), f=self.f, rows=np.asarray(rows), Y=Y,
                        samples=np.asarray(samples), regions=None if self.regions is None
                        else self.regions[idx], spec=mspec, base_params=base,
                        model_dists=self.dists[m], feature_dists=self.feature_dists,
                        metric=self.metric, direction=METRIC_DIRECTION[self.metric],
                        clip=self.clip,
                        seed=int(self.cfg["seed"]), trials=self.cfg["tune"]["trials"],
                        seconds=self.seconds, n_inner=self.cfg["tune"]["inner_folds"],
                        pruning=self.cfg["tune"]["pruning"],
                        storage=self.dir / m / f"fold_{fold}.log", genes=genes)
        self.t_total += time.perf_counter() - t0
        self.results[(m, str(fold))] = res
        params = {**base, **res.params}
        spec = apply_features(mspec, res.features)
        if spec == self.spec:
            return params, Xtr, Xte, names, groups, None
        fb = FeatureBuilder(spec)
        fb.fit(self.f, rows)
        Xtr = np.asarray(fb.transform(self.f, rows), dtype=np.float32)
        Xte = None if test_rows is None else np.asarray(fb.transform(self.f, test_rows),
                                                        dtype=np.float32)
        return params, Xtr, Xte, list(fb.feature_names_), list(fb.feature_groups_), fb

    def spaces(self) -> dict:
        """The spaces searched (the PCA-k choices as fitted to the embedding's dimension)."""
        feats = {d.key: {d.kind: list(d.values)} for d in self.feature_dists}
        out = {m: {d.key: {d.kind: list(d.values)} for d in ds} for m, ds in self.dists.items()}
        return {**out, "features": feats}

    def frame(self):
        import pandas as pd

        rec = [r for res in self.results.values() for r in res.records]
        return pd.DataFrame(rec, columns=["model", "fold", "trial", "state", "pruned", "default",
                                          "inner_score", "inner_scores", "params", "seconds",
                                          "error"])

    def summary(self) -> dict:
        """run.json ``tuning``: per model and fold the best parameters and scores."""
        out = {"trials": self.cfg["tune"]["trials"], "minutes": self.cfg["tune"]["minutes"],
               "inner_folds": self.cfg["tune"]["inner_folds"], "seconds": round(self.t_total, 3),
               "metric": self.metric, "spaces": self.spaces(), "models": {}}
        for (m, fold), r in self.results.items():
            out["models"].setdefault(m, {})[fold] = {
                "params": r.params, "features": r.features, "best_inner": r.best_value,
                "default_inner": r.default_value, "n_trials": r.n_trials,
                "n_pruned": r.n_pruned, "n_failed": r.n_failed, "note": r.note}
        return out

    def finish(self, run_tmp: Path) -> None:
        """Copy the studies into the run folder being built (``tuning/``) and write
        ``tuning.csv``."""
        if self.dir.is_dir():
            shutil.copytree(self.dir, run_tmp / "tuning", dirs_exist_ok=True)
        self.frame().to_csv(run_tmp / "tuning.csv", index=False)
