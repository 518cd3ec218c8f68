"""What a `tabst compare` run will cost, said before it starts, and a ``max_hours`` guard.

Each model states its cost model (:meth:`tabst.models.base.TabstModel.cost_units`: rows x
features x outputs, times rounds for XGBoost, epochs for TabNet, ...). Before the first fold is
fitted, every model is fitted on growing slices of that fold's training rows (1k, 4k, 16k, ...
until a fit takes a second, so that timer noise and fixed costs do not set the slope; with the
model's :meth:`~tabst.models.base.TabstModel.calibration_params`: a few rounds / epochs) and the
seconds of the last two fits are fitted as ``a + b * units`` (units of the rows each fit used);
each fold's fit and the refit are then estimated from their own row counts (after
``max_train_cells_per_group``). XGBoost, which stops early, is instead fitted once with its
real settings on half its rows (at most 16k): that fit's seconds per unit, with the rounds it
ran, set its estimate (:func:`probe`). TabNet's early stopping can only make it shorter.

``estimate: auto`` calibrates when some fold trains on at least :data:`CALIBRATE_MIN_ROWS` rows
(below that the whole run takes about as long as the calibration), or whenever ``max_hours``
is set. A run whose estimate exceeds ``max_hours`` is refused before anything is fitted, and
a run that passes ``max_hours`` while it runs stops there; both with a message saying what to
change (nothing is written: the run folder is only published complete).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import TabstError

CALIBRATE_MIN_ROWS = 20_000
SLICES = (1_000, 4_000)  # first calibration slices (rows); the probe fit uses the second
SLICE_GROWTH = 4         # later slices: x4 rows ...
MIN_FIT_SECONDS = 1.0    # ... until a calibration fit takes this long (or the fold is used whole)
PROBE_ROWS = 16_000      # largest fit with the real settings that finds early stopping's round


@dataclass
class RunEstimate:
    """Seconds per model: ``folds`` (one per fold, in order) and ``refit``; ``features`` per
    fold; ``calibration_seconds`` spent measuring."""

    models: dict = field(default_factory=dict)
    features_seconds: float = 0.0
    n_folds: int = 0
    calibration_seconds: float = 0.0
    refit: bool = True

    def model_total(self, name: str) -> float:
        m = self.models[name]
        return float(sum(m["folds"]) + m["refit"])

    @property
    def total_seconds(self) -> float:
        n_builds = self.n_folds + int(self.refit)
        return sum(self.model_total(m) for m in self.models) + self.features_seconds * n_builds

    def to_dict(self) -> dict:
        return {"models": self.models, "features_seconds_per_build": self.features_seconds,
                "calibration_seconds": round(self.calibration_seconds, 3),
                "total_seconds": round(self.total_seconds, 3)}


def wanted(cfg: dict, n_train_max: int) -> bool:
    """Calibrate? ``estimate`` true/false, or auto: big folds or a ``max_hours`` guard."""
    e = cfg.get("estimate", "auto")
    if e == "auto":
        return n_train_max >= CALIBRATE_MIN_ROWS or cfg.get("max_hours") is not None
    return bool(e)


def fit_rows(model, groups) -> int:
    """Rows ``model`` fits on given the fold's training ``groups`` (its per-group limit)."""
    limit = model.params.get("max_train_cells_per_group")
    if limit is None:
        return int(len(groups))
    _, counts = np.unique(np.asarray(groups), return_counts=True)
    return int(np.minimum(counts, int(limit)).sum())


def _slice(n: int, m: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, m, replace=False)) if m < n \
        else np.arange(n)


def probe(make, name: str, X, Y, groups, fit_kwargs: dict):
    """For models that stop early (``probed_params``: XGBoost's rounds run before early
    stopping): one fit with the real settings on half the rows the model will fit (at most
    :data:`PROBE_ROWS`; on a 4k slice where early stopping stopped varied 3x between runs).
    Returns ``(overrides for the estimate's units, (0, seconds per unit of that fit))``, or
    None for models that do not stop early. Scaling that fit by its rows errs high (hist
    XGBoost's split search per round does not grow with the rows; measured 1.8x at 30k rows)
    but, unlike 20-round calibration fits, it sees the real rounds and per-fit costs."""
    model = make(name, {})
    if not hasattr(model, "probed_params") or not model.stops_early():
        return None
    n_fit = fit_rows(model, groups) if groups is not None else X.shape[0]
    rows = _slice(X.shape[0], int(min(X.shape[0], max(SLICES[-1], min(PROBE_ROWS, n_fit // 2)))))
    model.fit(X[rows], Y[rows], groups=None if groups is None else groups[rows], **fit_kwargs)
    over = model.probed_params(model)
    units = make(name, over).cost_units(int(model.n_fit_rows_), X.shape[1], Y.shape[1])
    return over, (0.0, float(model.fit_seconds_) / max(units, 1e-12))


def calibrate(make, name: str, X, Y, groups, fit_kwargs: dict) -> tuple[float, float]:
    """``(a, b)`` of ``seconds = a + b * units`` for model ``name`` from two fits on slices of
    ``X, Y``; ``make(name, overrides)`` builds the model with the run's parameters."""
    n, F = X.shape
    G = Y.shape[1]
    first = make(name, {})
    n_full = fit_rows(first, groups) if groups is not None else n
    m, points = min(n, max(SLICES[0], first.calibration_rows(n_full))), []
    while True:  # 1k, 4k, 16k, ... rows until a fit takes MIN_FIT_SECONDS (timer noise)
        rows = _slice(n, m)
        model = make(name, first.calibration_params(n_full))
        model.fit(X[rows], Y[rows], groups=None if groups is None else groups[rows],
                  **fit_kwargs)
        points.append((model.cost_units(int(model.n_fit_rows_), F, G),
                       float(model.fit_seconds_)))
        if m >= n or (len(points) >= 2 and points[-1][1] >= MIN_FIT_SECONDS):
            break
        m = min(n, m * SLICE_GROWTH)
    points = points[-2:]
    if len(points) == 1 or points[1][0] <= points[0][0]:
        u, t = points[-1]
        return 0.0, t / max(u, 1e-12)
    (u1, t1), (u2, t2) = points
    b = max((t2 - t1) / (u2 - u1), 0.0)
    a = max(t1 - b * u1, 0.0)
    if b == 0.0:  # noise: fall back to proportional
        b, a = t2 / u2, 0.0
    return a, b


def estimate_run(make, names, X, Y, groups, fold_groups: list, all_groups, fit_kwargs: dict,
                 features_seconds: float, refit: bool, show=True) -> RunEstimate:
    """Calibrate every model on fold 0's ``X, Y`` and estimate each fold (training groups
    ``fold_groups[k]``) and the refit on ``all_groups``."""
    t0 = time.perf_counter()
    est = RunEstimate(features_seconds=float(features_seconds), n_folds=len(fold_groups),
                      refit=bool(refit))
    F, G = X.shape[1], Y.shape[1]
    for name in names:
        try:
            probed = probe(make, name, X, Y, groups, fit_kwargs)
            over, (a, b) = probed if probed else ({}, calibrate(make, name, X, Y, groups,
                                                                fit_kwargs))
            full = make(name, over)
        except Exception as e:  # a model that cannot fit fails in the run itself, said there
            est.models[name] = {"folds": [0.0] * len(fold_groups), "refit": 0.0,
                                "error": f"{type(e).__name__}: {e}"}
            continue
        secs = [a + b * full.cost_units(fit_rows(full, g), F, G)
                for g in [*fold_groups, all_groups]]
        est.models[name] = {"folds": [round(t, 3) for t in secs[:-1]],
                            "refit": round(secs[-1], 3) if refit else 0.0,
                            "rows": [fit_rows(full, g) for g in fold_groups],
                            "seconds_per_unit": b, "fixed_seconds": a}
    est.calibration_seconds = time.perf_counter() - t0
    if show:
        sys.stderr.write(describe(est) + "\n")
    return est


def estimate_compare(cfg, names, REGISTRY, Xtr, Ytr, fit_groups, folds, fold, fit_kwargs, t_build):
    """`tabst compare`'s hook: calibrate on fold ``fold``'s training rows, print the run's
    cost, refuse it over ``max_hours``."""
    from .config import model_params as _model_params

    def make(name, overrides):
        return REGISTRY[name](**{**_model_params(cfg, name), **overrides})
    sys.stderr.write("calibrating the cost of each model on slices of fold 1 ...\n")
    est = estimate_run(make, names, Xtr, Ytr, fit_groups[fold.train],
                            [fit_groups[fd.train] for fd in folds], fit_groups, fit_kwargs,
                            t_build, cfg["refit_all"])
    refuse_if_too_long(est, cfg["max_hours"])
    return est


def hours(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe(est: RunEstimate) -> str:
    """The estimate as printed before the run: per model, per fold and in all."""
    lines = [f"estimate (calibrated in {hours(est.calibration_seconds)} on slices of fold 1; "
             "early stopping can make fits shorter):"]
    for name, m in est.models.items():
        if "error" in m:
            lines.append(f"  {name}: no estimate ({m['error']})")
            continue
        per = np.mean(m["folds"]) if m["folds"] else 0.0
        lines.append(f"  {name}: {hours(per)} per fold on {int(np.mean(m['rows'])):,} rows"
                     f" x {len(m['folds'])} folds"
                     + (f" + refit {hours(m['refit'])}" if m["refit"] else "")
                     + f" = {hours(est.model_total(name))}")
    lines.append(f"  features: {hours(est.features_seconds)} per build x "
                 f"{est.n_folds + int(est.refit)}")
    lines.append(f"  whole run: about {hours(est.total_seconds)}")
    return "\n".join(lines)


def refuse_if_too_long(est: RunEstimate, max_hours) -> None:
    """:class:`TabstError` when the estimate exceeds ``max_hours`` (nothing fitted yet)."""
    if max_hours is None or est.total_seconds <= float(max_hours) * 3600:
        return
    slow = max(est.models, key=est.model_total) if est.models else "?"
    raise TabstError(
        f"the run is estimated at {hours(est.total_seconds)}, over --max-hours {max_hours:g} "
        f"(slowest: {slow}, {hours(est.model_total(slow))}). Nothing was fitted. Lower the "
        "cost (e.g. --set xgboost.max_train_cells_per_group=5000, --set "
        "tabnet.max_epochs=10, --models without the slowest), or raise --max-hours.")


class Guard:
    """Stops a run that passes ``max_hours`` (checked between fits)."""

    def __init__(self, max_hours, t_start: float):
        self.limit = None if max_hours is None else float(max_hours) * 3600
        self.t_start = t_start

    def check(self, after: str) -> None:
        if self.limit is None:
            return
        spent = time.perf_counter() - self.t_start
        if spent > self.limit:
            raise TabstError(
                f"stopped after {hours(spent)} (--max-hours {self.limit / 3600:g}), after "
                f"{after}; nothing was written. Lower the cost (fewer models, "
                "max_train_cells_per_group, fewer rounds/epochs) or raise --max-hours.")


def check_max_hours(value, source: str):
    """Validate the ``max_hours`` config value (None or a positive number)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise TabstError(f"{source}: key 'max_hours' must be a positive number of hours or "
                         f"null, got {value!r}.")
    return float(value)
