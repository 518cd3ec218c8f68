"""Search spaces of ``tabst compare --tune`` (config block ``tune``), parsed and validated.

Syntax, per model under ``tune.spaces.<model>`` (and ``tune.spaces.features`` for the feature
builder, shared by the models of a study)::

    max_depth:      {int: [2, 10]}           # integers, uniform
    min_samples_leaf: {int_log: [1, 200]}     # integers, log scale
    subsample:      {float: [0.5, 1.0]}       # floats, uniform
    learning_rate:  {float_log: [1e-3, 0.3]}  # floats, log scale
    codec_k:        {choice: [8, 16, 32]}     # one of these values
    embedding.pca:  {choice: [16, 32, 64]}    # (features) the embedding's PCA k

A model parameter must be one of the model's parameters and every value the space can give
must pass the model's own rules (:mod:`tabst.models.params`); ``n_d`` of TabNet also sets
``n_a`` (``n_d = n_a``, as the TabNet paper tunes them). A bad space names its key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import TabstError

KINDS = ("int", "int_log", "float", "float_log", "choice")
FEATURE_KEYS = ("embedding.pca",)
TIED = {"tabnet": {"n_d": "n_a"}}   # a searched parameter that also sets another

DEFAULT_SPACES = {
    "xgboost": {"max_depth": {"int": [2, 10]}, "learning_rate": {"float_log": [0.01, 0.3]},
                "min_child_weight": {"float_log": [0.1, 30.0]},
                "subsample": {"float": [0.5, 1.0]}, "colsample_bytree": {"float": [0.3, 1.0]},
                "reg_lambda": {"float_log": [1e-3, 100.0]},
                "codec_k": {"choice": [8, 16, 32, 64]}},
    "tree": {"max_depth": {"int": [2, 16]}, "min_samples_leaf": {"int_log": [1, 200]},
             "codec_k": {"choice": [4, 8, 16, 32]}},
    "tabnet": {"n_d": {"choice": [8, 16, 32]}, "n_steps": {"int": [3, 7]},
               "gamma": {"float": [1.0, 2.0]}, "lambda_sparse": {"float_log": [1e-6, 1e-2]},
               "learning_rate": {"float_log": [1e-3, 5e-2]},
               "pretraining_ratio": {"float": [0.2, 0.8]}, "pretrain": {"choice": [True, False]},
               "codec_k": {"choice": [8, 16, 32]}},
    "context": {"learning_rate": {"float_log": [3e-4, 3e-3]}, "dropout": {"float": [0.0, 0.3]},
                "hidden": {"choice": [64, 128, 256]}, "loss": {"choice": ["mse", "pearson", "mix"]}},
    "context-k0": {"learning_rate": {"float_log": [3e-4, 3e-3]},
                   "dropout": {"float": [0.0, 0.3]}, "hidden": {"choice": [64, 128, 256]}},
    "ridge": {},
    "features": {"embedding.pca": {"choice": [16, 32, 64, 128]}},
}


@dataclass(frozen=True)
class Dist:
    """One searched parameter."""

    key: str        # parameter name (or features key)
    kind: str       # one of KINDS
    values: tuple   # (low, high) or the choices

    def suggest(self, trial):
        name = self.key
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.values))
        lo, hi = self.values
        if self.kind.startswith("int"):
            return trial.suggest_int(name, int(lo), int(hi), log=self.kind == "int_log")
        return trial.suggest_float(name, float(lo), float(hi), log=self.kind == "float_log")

    def contains(self, v) -> bool:
        if self.kind == "choice":
            return v in self.values
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        lo, hi = self.values
        return lo <= v <= hi and (not self.kind.startswith("int") or float(v).is_integer())

    def probes(self) -> list:
        """Values checked against the model's rules: the bounds and every choice."""
        return list(self.values)

    def describe(self) -> str:
        return f"{self.kind} {list(self.values)}"


def _dist(key: str, spec, where: str) -> Dist:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise TabstError(f"{where}: key {key!r} must be one of {{int: [lo, hi]}}, "
                         "{int_log: [lo, hi]}, {float: [lo, hi]}, {float_log: [lo, hi]}, "
                         f"{{choice: [...]}}; got {spec!r}.")
    kind, values = next(iter(spec.items()))
    if kind not in KINDS:
        raise TabstError(f"{where}: key {key!r}: unknown kind {kind!r} (use one of "
                         f"{', '.join(KINDS)}).")
    if not isinstance(values, list) or not values:
        raise TabstError(f"{where}: key {key!r}: {kind} needs a list, got {values!r}.")
    if kind == "choice":
        return Dist(key, kind, tuple(values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                   and math.isfinite(v) for v in values):
        raise TabstError(f"{where}: key {key!r}: {kind} needs [low, high] numbers, got "
                         f"{values!r}.")
    lo, hi = values
    if kind.startswith("int") and not all(float(v).is_integer() for v in values):
        raise TabstError(f"{where}: key {key!r}: {kind} bounds must be integers, got {values!r}.")
    if not lo < hi:
        raise TabstError(f"{where}: key {key!r}: low must be < high, got {values!r}.")
    if kind.endswith("_log") and lo <= 0:
        raise TabstError(f"{where}: key {key!r}: a log scale needs low > 0, got {values!r}.")
    return Dist(key, kind, (lo, hi))


def model_space(name: str, spec: dict, where: str) -> list[Dist]:
    """The validated space of model ``name`` (every value passes the model's rules)."""
    from ..config import model_defaults
    from ..models import REGISTRY
    from ..models.params import ParamError

    if not isinstance(spec, dict):
        raise TabstError(f"{where} must be a mapping of parameter -> space, got {spec!r}.")
    allowed = model_defaults(REGISTRY[name])
    out = []
    for key, s in spec.items():
        if key not in allowed:
            raise TabstError(f"{where}: unknown parameter {key!r} of {name} (parameters: "
                             f"{', '.join(sorted(allowed))}).")
        d = _dist(key, s, where)
        for v in d.probes():
            params = {key: v, **({TIED[name][key]: v} if key in TIED.get(name, {}) else {})}
            try:
                REGISTRY[name](**params)
            except ParamError as e:
                raise TabstError(f"{where}: key {key!r}: the value {v!r} is not allowed "
                                 f"({name}.{e.param} must be {e.allowed}).") from None
        out.append(d)
    return out


def feature_space(spec: dict, where: str) -> list[Dist]:
    if not isinstance(spec, dict):
        raise TabstError(f"{where} must be a mapping, got {spec!r}.")
    out = []
    for key, s in spec.items():
        if key not in FEATURE_KEYS:
            raise TabstError(f"{where}: unknown key {key!r} (searchable: "
                             f"{', '.join(FEATURE_KEYS)}).")
        d = _dist(key, s, where)
        if key == "embedding.pca" and not all(isinstance(v, int) and not isinstance(v, bool)
                                              and v >= 1 for v in d.probes()):
            raise TabstError(f"{where}: key 'embedding.pca' values must be integers >= 1, got "
                             f"{list(d.values)!r}.")
        out.append(d)
    return out


def suggest(trial, dists: list[Dist], model: str | None = None) -> dict:
    """One trial's values of ``dists`` (tied parameters filled in)."""
    out = {d.key: d.suggest(trial) for d in dists}
    for src, dst in TIED.get(model or "", {}).items():
        if src in out:
            out[dst] = out[src]
    return out


def apply_features(spec: dict, values: dict) -> dict:
    """The feature spec with the searched feature values (``embedding.pca``) set."""
    import copy

    out = copy.deepcopy(spec)
    if "embedding.pca" in values and out.get("embedding") is not None:
        out["embedding"]["pca"] = int(values["embedding.pca"])
    return out


TUNE_DEFAULTS = {"enabled": False, "trials": 30, "minutes": None, "inner_folds": 3,
                 "models": "auto", "keep_default": True, "pruning": True, "spaces": {},
                 "fixed": None, "metric": None}
#: parameters set for every trial and the tuned refit (not searched): XGBoost's rounds come
#: from early stopping, so a tuned learning rate is not cut short by a small round budget
DEFAULT_FIXED = {"xgboost": {"n_estimators": 400, "early_stopping_rounds": 20}}


def validate_tune(tune: dict, models: list[str], source: str) -> dict:
    """The ``tune`` block, checked, with every tuned model's space filled in (``spaces`` given
    per model replace that model's default space; ``spaces.features`` the feature space).

    ``models: auto`` tunes every configured model that has a non-empty space (or, when the
    feature space is not empty, every model but the mean baseline: ridge then searches the
    PCA k around its exact per-gene alpha path)."""
    from ..models import REGISTRY

    where = f"{source}: key 'tune"
    if not isinstance(tune, dict):
        raise TabstError(f"{where}' must be a mapping, got {tune!r}.")
    bad = sorted(set(tune) - set(TUNE_DEFAULTS))
    if bad:
        raise TabstError(f"{where}.{bad[0]}' is unknown. Valid: "
                         f"{', '.join('tune.' + k for k in TUNE_DEFAULTS)}.")
    out = {**TUNE_DEFAULTS, **tune}
    for k in ("enabled", "keep_default", "pruning"):
        if not isinstance(out[k], bool):
            raise TabstError(f"{where}.{k}' must be true/false, got {out[k]!r}.")
    for k, lo in (("trials", 1), ("inner_folds", 2)):
        if out[k] is not None and (not isinstance(out[k], int) or isinstance(out[k], bool)
                                   or out[k] < lo):
            raise TabstError(f"{where}.{k}' must be an integer >= {lo}, got {out[k]!r}.")
    m = out["minutes"]
    if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or m <= 0):
        raise TabstError(f"{where}.minutes' must be a number > 0 or null, got {m!r}.")
    if out["trials"] is None and m is None:
        raise TabstError(f"{where}': give tune.trials or tune.minutes (or both).")
    spaces = out["spaces"]
    if not isinstance(spaces, dict):
        raise TabstError(f"{where}.spaces' must be a mapping, got {spaces!r}.")
    for k in spaces:
        if k != "features" and k not in REGISTRY:
            raise TabstError(f"{where}.spaces.{k}': unknown model (known: "
                             f"{', '.join(REGISTRY)}, or features).")
    feats = feature_space(spaces.get("features", DEFAULT_SPACES["features"]),
                          f"{where}.spaces.features'")
    full = {"features": {d.key: {d.kind: list(d.values)} for d in feats}}
    if out["models"] == "auto":
        tuned = [n for n in models if n != "mean" and (feats or spaces.get(n) or
                                                       DEFAULT_SPACES.get(n))]
    elif isinstance(out["models"], list):
        tuned = []
        for n in out["models"]:
            if n not in models:
                raise TabstError(f"{where}.models' names {n!r}, which is not in 'models' "
                                 f"({', '.join(models)}).")
            tuned.append(n)
    else:
        raise TabstError(f"{where}.models' must be auto or a list of models, got "
                         f"{out['models']!r}.")
    for n in tuned:
        sp = spaces.get(n, DEFAULT_SPACES.get(n, {}))
        dists = model_space(n, sp, f"{where}.spaces.{n}'")
        if not dists and not feats:
            raise TabstError(f"{where}.models' tunes {n}, but its space is empty and so is "
                             "tune.spaces.features.")
        full[n] = {d.key: {d.kind: list(d.values)} for d in dists}
    from ..evaluate import METRICS

    metric = out["metric"]
    if metric is not None and metric not in METRICS:
        raise TabstError(f"{where}.metric' must be one of {', '.join(METRICS)} (or null: the "
                         f"run's primary_metric), got {metric!r}.")
    fixed = DEFAULT_FIXED if out["fixed"] is None else out["fixed"]
    if not isinstance(fixed, dict):
        raise TabstError(f"{where}.fixed' must be a mapping model -> parameters, got {fixed!r}.")
    full_fixed = {}
    for n, params in fixed.items():
        if n not in REGISTRY or not isinstance(params, dict):
            raise TabstError(f"{where}.fixed.{n}': unknown model or not a mapping.")
        _check_fixed(n, params, f"{where}.fixed.{n}'")
        if n in tuned:
            full_fixed[n] = dict(params)
    out["models"], out["spaces"], out["fixed"] = tuned, full, full_fixed
    return out


def _check_fixed(name: str, params: dict, where: str) -> None:
    from ..config import model_defaults
    from ..models import REGISTRY
    from ..models.params import ParamError

    bad = sorted(set(params) - set(model_defaults(REGISTRY[name])))
    if bad:
        raise TabstError(f"{where}: unknown parameter {bad[0]!r} of {name}.")
    try:
        REGISTRY[name](**params)
    except ParamError as e:
        raise TabstError(f"{where}: {name}.{e.param} must be {e.allowed}, got {e.value!r}.") \
            from None
