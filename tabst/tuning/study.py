"""One Optuna study: the parameters of one model on the training rows of one outer fold.

Trials are scored by grouped cross-validation over the *training samples only* (inner folds by
sample, sklearn ``GroupKFold``, as Ridge chooses its alpha): each inner fold builds its features
(embedding PCA with the trial's k) on its inner training rows, fits the model, and scores the
inner validation rows with the run's primary metric, as the leaderboard scores the outer test
rows (clipped at 0 when the run clips). The rows of the outer test fold are never given to a
study, so no trial can see them.

Sampler TPE with a fixed seed; the default parameters are enqueued as trial 0, so the best
trial is never worse than the default on the inner score. Pruning (Optuna's median pruner):
after each inner fold on the running mean, and, for XGBoost and TabNet, after every boosting
round / epoch of the first inner fold on its validation loss (``TabstModel.round_callback``).
The study lives in a journal file (``<model>/fold_<k>.log``) so that an interrupted run resumes
from its stored trials.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .space import Dist, apply_features, suggest

ROUND_STEPS = 1_000_000   # steps >= this report the running inner score (one per inner fold)
FEATURE_CACHE_BYTES = 1 << 30


@dataclass
class TuneResult:
    """What a study chose and how it got there."""

    params: dict                 # model parameters of the best trial (over the defaults)
    features: dict               # feature values of the best trial (e.g. embedding.pca)
    best_value: float
    default_value: float         # inner score of the enqueued default trial (NaN if none)
    n_trials: int
    n_pruned: int
    n_failed: int
    seconds: float
    note: str = ""
    records: list = field(default_factory=list)   # one dict per trial (tuning.csv)


def inner_folds(samples: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped inner folds by sample (deterministic): [(train idx, validation idx)]."""
    from sklearn.model_selection import GroupKFold

    k = min(int(n), len(np.unique(samples)))
    if k < 2:
        return []
    return [(tr, va) for tr, va in GroupKFold(n_splits=k).split(samples, groups=samples)]


class _Features:
    """Inner-fold feature matrices, one FeatureBuilder per (inner fold, feature values), with a
    byte budget (TPE revisits the same PCA k often)."""

    def __init__(self, f, spec, rows, folds):
        self.f, self.spec, self.rows, self.folds = f, spec, rows, folds
        self.cache: dict = {}

    def get(self, j: int, values: dict):
        from ..dataset import FeatureBuilder

        key = (j, json.dumps(values, sort_keys=True))
        if key not in self.cache:
            tr, va = self.folds[j]
            fb = FeatureBuilder(apply_features(self.spec, values))
            fb.fit(self.f, self.rows[tr])
            out = (np.asarray(fb.transform(self.f, self.rows[tr]), dtype=np.float32),
                   np.asarray(fb.transform(self.f, self.rows[va]), dtype=np.float32),
                   list(fb.feature_names_), list(fb.feature_groups_))
            size = out[0].nbytes + out[1].nbytes
            while self.cache and sum(v[0].nbytes + v[1].nbytes for v in self.cache.values()) \
                    + size > FEATURE_CACHE_BYTES:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = out
        return self.cache[key]


def study_key(parts: dict) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_study(*, model: str, fold: str, f, rows, Y, samples, regions, spec: dict,
              base_params: dict, model_dists: list[Dist], feature_dists: list[Dist],
              metric: str, direction: int, clip: bool, seed: int, trials, seconds,
              n_inner: int, pruning: bool, storage: Path, genes: list[str]) -> TuneResult:
    """Tune ``model`` on the given (training) rows; see the module docstring."""
    import optuna

    from ..evaluate import score_fold
    from ..models import REGISTRY

    t0 = time.perf_counter()
    folds = inner_folds(samples, n_inner)
    if not folds:
        return TuneResult({}, {}, float("nan"), float("nan"), 0, 0, 0, 0.0,
                          note="not tuned: the fold trains on a single sample (inner folds are "
                               "by sample); default parameters used")
    feats = _Features(f, spec, rows, folds)
    sign = 1.0 if direction > 0 else -1.0

    def objective(trial):
        params = {**base_params, **suggest(trial, model_dists, model)}
        fvals = suggest(trial, feature_dists)
        scores = []
        for j, (tr, va) in enumerate(folds):
            Xtr, Xva, fnames, fgroups = feats.get(j, fvals)
            m = REGISTRY[model](**params)
            if pruning and j == 0:
                def hook(step, loss, _trial=trial):
                    _trial.report(-sign * loss, step)   # loss: lower is better
                    if _trial.should_prune():
                        raise optuna.TrialPruned(f"round {step}: validation loss {loss:.4g}")
                m.round_callback = hook
            m.fit(Xtr, Y[tr], groups=samples[tr], feature_names=fnames, feature_groups=fgroups,
                  target_names=genes)
            P = np.asarray(m.predict(Xva), dtype=np.float32)
            if clip and m.expression_scale:
                np.maximum(P, 0, out=P)
            sc = score_fold(Y[va], P, samples[va], None if regions is None else regions[va])
            scores.append(float(sc.metrics()[metric]))
            trial.set_user_attr("inner_scores", scores)
            if pruning:
                trial.report(float(np.nanmean(scores)), ROUND_STEPS + j)
                if j < len(folds) - 1 and trial.should_prune():
                    raise optuna.TrialPruned(f"after inner fold {j + 1}")
        return float(np.nanmean(scores))

    storage.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    name = f"{model}-{fold}-" + study_key(
        {"space": [(d.key, d.kind, d.values) for d in model_dists + feature_dists],
         "base": base_params, "spec": spec, "rows": study_key(rows.tolist()), "metric": metric,
         "seed": seed, "inner": n_inner, "clip": clip, "genes": genes, "pruning": pruning})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=JournalStorage(JournalFileBackend(str(storage))),
        load_if_exists=True, direction="maximize" if direction > 0 else "minimize",
        sampler=optuna.samplers.TPESampler(seed=fold_seed(seed, fold)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5)
        if pruning else optuna.pruners.NopPruner())
    done = [t for t in study.trials if t.state.is_finished()]
    # a resumed study draws from seed + its stored trials: reruns of the same resume agree
    # (Optuna keeps no sampler state, so a resumed study is not the uninterrupted one)
    study.sampler = optuna.samplers.TPESampler(seed=fold_seed(seed, fold) + len(study.trials))
    if not study.trials:
        from ..config import model_defaults

        full = {**model_defaults(REGISTRY[model]), **base_params}
        default = {d.key: full[d.key] for d in model_dists
                   if d.key in full and d.contains(full[d.key])}
        fdef = {"embedding.pca": (spec.get("embedding") or {}).get("pca")}
        default.update({d.key: fdef[d.key] for d in feature_dists
                        if d.contains(fdef.get(d.key))})
        study.enqueue_trial(default, user_attrs={"default": len(default)
                                                 == len(model_dists) + len(feature_dists)})
    left = None if trials is None else max(0, int(trials) - len(done))
    if left is None or left > 0:
        study.optimize(objective, n_trials=left, timeout=seconds, catch=(Exception,),
                       gc_after_trial=False)
    return _result(study, model, fold, model_dists, t0)


def _inner_score(t, S) -> float:
    """The trial's inner score: its value when complete; for a pruned trial the mean of the
    inner folds it finished (NaN if none: Optuna's stored value is then a validation loss)."""
    if t.state == S.COMPLETE and t.value is not None:
        return float(t.value)
    done = [v for v in t.user_attrs.get("inner_scores", []) if v is not None]
    return float(np.nanmean(done)) if done else float("nan")


def fold_seed(seed: int, fold: str) -> int:
    """A study's sampler seed: the run's seed and the fold (each fold explores its own way)."""
    import zlib

    return (int(seed) * 1_000_003 + zlib.crc32(str(fold).encode())) % (2 ** 31)


def _result(study, model: str, fold: str, model_dists, t0) -> TuneResult:
    import optuna

    from .space import TIED

    S = optuna.trial.TrialState
    trials = study.trials
    complete = [t for t in trials if t.state == S.COMPLETE and np.isfinite(t.value)]
    keys = {d.key for d in model_dists}
    records = []
    for t in trials:
        dur = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else float("nan")
        records.append({"model": model, "fold": fold, "trial": t.number,
                        "state": t.state.name.lower(), "pruned": t.state == S.PRUNED,
                        "default": bool(t.user_attrs.get("default", False)),
                        "inner_score": _inner_score(t, S),
                        "inner_scores": json.dumps(t.user_attrs.get("inner_scores", [])),
                        "params": json.dumps(t.params, sort_keys=True, default=str),
                        "seconds": round(dur, 3),
                        "error": str(t.system_attrs.get("fail_reason", ""))[:300]})
    defaults = [t for t in complete if t.user_attrs.get("default")]
    if not complete:
        return TuneResult({}, {}, float("nan"), float("nan"), len(trials),
                          sum(t.state == S.PRUNED for t in trials),
                          sum(t.state == S.FAIL for t in trials), time.perf_counter() - t0,
                          note="no trial completed; default parameters used", records=records)
    best = study.best_trial
    params = {k: v for k, v in best.params.items() if k in keys}
    for src, dst in TIED.get(model, {}).items():
        if src in params:
            params[dst] = params[src]
    return TuneResult(params=params,
                      features={k: v for k, v in best.params.items() if k not in keys},
                      best_value=float(best.value),
                      default_value=float(defaults[0].value) if defaults else float("nan"),
                      n_trials=len(trials), n_pruned=sum(t.state == S.PRUNED for t in trials),
                      n_failed=sum(t.state == S.FAIL for t in trials),
                      seconds=time.perf_counter() - t0, records=records)
