"""Base class of every tabst model, the :class:`Explanation` record and shared helpers.

The contract (DESIGN.md): ``__init__`` stores parameters only; ``fit(X, Y, groups=None)`` returns
self; ``predict(X)`` → [n, G]; learned attributes end in ``_``; ``save(dir)`` / ``load(dir)``;
``explain(X)`` → :class:`Explanation` with ``base + values.sum(1) == predict(X)``.

What the base class does around a model's own ``_fit`` / ``_predict`` / ``_explain``:

1. **Imputation** (models with ``handles_nan = False``: ridge, tree, tabnet, mean): NaN feature
   values are replaced by the per-feature median of the *training* X of this fit (so in-fold when
   ``compare`` fits per fold), taken over at most 20,000 evenly spaced training rows (exact for
   smaller data). A feature that is NaN in every training row gets 0. XGBoost keeps
   NaN (it learns a default direction). The imputer lives here, in the model, not in the feature
   builder, so that one saved model directory holds everything needed to predict.
2. **Target codec** (``codec`` = "identity" | "pca", ``codec_k``): fitted on the training Y; the
   model learns the codes; predictions and attributions are decoded back to genes
   (see :mod:`tabst.codec`).
3. **Measurement**: ``fit_seconds_`` (wall clock of the whole fit, codec and imputer included) and
   ``peak_mem_mb_``: the peak *increase* of the process's resident memory (RSS) during the fit
   over its value at the start, sampled every 20 ms by a background thread (psutil). RSS includes
   native allocations (XGBoost, torch, BLAS) that ``tracemalloc`` would miss; spikes shorter than
   the sampling interval and memory re-used from the allocator's free lists are not seen, so it
   is a lower bound. ``peak_gpu_mem_mb_`` is added when a model used CUDA (torch's counter).
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..codec import codec_from_state, make_codec
from ..errors import TabstError
from ..safeio import check_no_pickles, load_npz
from ..util import atomic_dir, json_default
from .params import COMMON_RULES, check_param

COMMON_DEFAULTS = {"codec": "identity", "codec_k": 32, "seed": 0,
                   "max_train_cells_per_group": None}
IMPUTE_MAX_ROWS = 4096


@dataclass
class Explanation:
    """Additive attributions of a model's predictions.

    ``base[g] + values[i, :, g].sum() == prediction[i, g]`` to float tolerance.

    Attributes
    ----------
    values : float32 [n, F, G]
    base : float64 [G] (the same for every row)
    feature_names, feature_groups : list[str] of length F
    output_names : list[str] of length G (gene names when known, else ``out0``...)
    method : str, how the values were computed (for reports)
    """

    values: np.ndarray
    base: np.ndarray
    feature_names: list
    feature_groups: list
    output_names: list = field(default_factory=list)
    method: str = ""

    @property
    def prediction(self) -> np.ndarray:
        """``base + Σ_F values`` [n, G] (float64)."""
        return self.base[None, :] + self.values.astype(np.float64).sum(axis=1)

    def by_group(self):
        """Sum attributions within feature groups → (group names, values [n, n_groups, G])."""
        groups = list(dict.fromkeys(self.feature_groups))
        gi = np.asarray([groups.index(g) for g in self.feature_groups])
        out = np.zeros((self.values.shape[0], len(groups), self.values.shape[2]),
                       dtype=self.values.dtype)
        for j in range(len(groups)):
            out[:, j, :] = self.values[:, gi == j, :].sum(axis=1)
        return groups, out


class _PeakRSS:
    """Background sampler of the process RSS; ``peak_mb`` = max RSS − RSS at start (MB)."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_mb = 0.0

    def __enter__(self):
        import psutil

        self._proc = psutil.Process(os.getpid())
        self._start = self._proc.memory_info().rss
        self._peak = self._start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                self._peak = max(self._peak, self._proc.memory_info().rss)
            except Exception:  # pragma: no cover - process info unavailable
                return
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mb = (self._peak - self._start) / (1024.0 * 1024.0)
        return False


def resolve_device(device: str = "auto") -> str:
    """"auto" → "cuda" when torch sees a GPU, else "cpu"; other values pass through."""
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover - torch missing
        return "cpu"


def inner_split(n: int, groups, seed: int = 0, frac_groups: float = 0.2, frac_rows: float = 0.1):
    """Inner train/validation split for early stopping, drawn BY SAMPLE when possible.

    With ≥ 2 distinct groups, ``max(1, round(frac_groups · n_groups))`` whole groups (never all)
    are held out. With no or one group, a random ``frac_rows`` of the rows is held out (cell-level,
    so the validation score is optimistic; the returned description says so).

    Returns (train_idx, val_idx, description).
    """
    rng = np.random.default_rng(seed)
    if groups is not None:
        g = np.asarray(groups)
        uniq = np.unique(g)
        if len(uniq) >= 2:
            n_val = int(min(len(uniq) - 1, max(1, round(frac_groups * len(uniq)))))
            held = rng.choice(uniq, size=n_val, replace=False)
            mask = np.isin(g, held)
            desc = f"by sample: held out {', '.join(map(str, sorted(held)))}"
            return np.flatnonzero(~mask), np.flatnonzero(mask), desc
    perm = rng.permutation(n)
    n_val = int(max(1, round(frac_rows * n)))
    desc = (f"random {frac_rows:.0%} of rows (only one sample given: the early-stopping set "
            "holds spatial neighbours of training cells)")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val]), desc


def subsample_per_group(groups, n: int, limit, seed: int = 0):
    """Sorted row indices keeping at most ``limit`` rows of each group (all rows when
    ``groups`` is None: one group), drawn uniformly without replacement with ``seed``; None
    when nothing is dropped. (The Crunch 1 quickstarter trained on 10,000 cells per sample.)"""
    if limit is None:
        return None
    g = np.zeros(n, dtype=np.int64) if groups is None else np.unique(groups, return_inverse=True)[1]
    counts = np.bincount(g.ravel())
    if counts.max() <= limit:
        return None
    rng = np.random.default_rng(seed)
    keep = [idx if len(idx) <= limit else rng.choice(idx, int(limit), replace=False)
            for idx in (np.flatnonzero(g == k) for k in range(len(counts)))]
    return np.sort(np.concatenate(keep))


class TabstModel:
    """Base class: parameters, imputation, target codec, timing, persistence.

    Subclasses set ``name`` (registry key), ``DEFAULTS`` (their own params; the common ones
    ``codec``, ``codec_k``, ``seed`` and ``max_train_cells_per_group`` (fit on at most that
    many rows of each group, see :func:`subsample_per_group`) are added), ``RULES`` (a
    :func:`tabst.models.params.check_param` rule for each own parameter, checked at
    construction), ``handles_nan``, and implement ``_fit(X, Z, groups)``, ``_predict(X) -> Z``,
    ``_explain(X) -> (values [n, F, k], base [k], method)``, ``_state() -> dict of arrays`` /
    ``_set_state(dict)``, and optionally ``_save_files(dir)`` /
    ``_load_files(dir)`` for library-specific model files.
    """

    name = "base"
    #: Predictions on the expression's own scale (clipped at 0 with ``clip_predictions``);
    #: False for models that predict a shifted scale (``ridge-hest``: no intercept).
    expression_scale = True
    DEFAULTS: dict = {}
    RULES: dict = {}
    handles_nan = False
    #: ``fn(round, validation_loss)`` called after each boosting round / epoch of models that
    #: train iteratively (XGBoost, TabNet) on their inner validation set; set by the tuner
    #: (:mod:`tabst.tuning`) to prune a trial, which it does by raising from the callback.
    round_callback = None

    def feature_spec(self, spec: dict) -> dict:
        """The feature set this model wants, given the run's (validated) one: the same, unless
        the model needs more (``context`` adds its neighbours' block); compare then builds the
        model its own feature matrices from the returned spec."""
        return spec

    def __init__(self, **params):
        allowed = {**COMMON_DEFAULTS, **type(self).DEFAULTS}
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise TabstError(
                f"model '{self.name}': unknown parameter(s) {', '.join(unknown)}. "
                f"Valid: {', '.join(sorted(allowed))}.")
        self.params = {**allowed, **params}
        self._check_params()

    def _check_params(self) -> None:
        """Raise :class:`tabst.models.params.ParamError` for a parameter value the model cannot
        use (called at construction, so that ``compare`` refuses a bad config before fitting
        anything): every parameter against its rule in ``COMMON_RULES`` / ``RULES``. Subclasses
        add checks that involve several parameters after calling this."""
        rules = {**COMMON_RULES, **type(self).RULES}
        for key, value in self.params.items():
            if key not in rules:  # a new parameter must come with its rule
                raise TypeError(f"{type(self).__name__}: no rule for parameter {key!r} (RULES)")
            check_param(f"{self.name}.{key}", value, **rules[key])

    # --- parameters ------------------------------------------------------------------------------
    def get_params(self) -> dict:
        return dict(self.params)

    @property
    def display_name(self) -> str:
        """Registry key plus the codec, e.g. ``xgboost+pca32``; identity adds nothing."""
        label = make_codec(self.params["codec"], self.params["codec_k"]).label
        return f"{self.name}+{label}" if label else self.name

    def __repr__(self) -> str:
        diff = {k: v for k, v in self.params.items()
                if v != {**COMMON_DEFAULTS, **type(self).DEFAULTS}.get(k)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in diff.items())})"

    # --- cost model (tabst.cost calibrates it) ------------------------------------------------
    def n_outputs(self, n_genes: int) -> int:
        """Columns the model learns: the codec's k (PCA) or every gene (identity)."""
        codec = make_codec(self.params["codec"], self.params["codec_k"])
        return min(int(getattr(codec, "k", n_genes) or n_genes), int(n_genes))

    def cost_units(self, n_rows: int, n_features: int, n_genes: int) -> float:
        """Work of one fit in units proportional to its time (rows x features x outputs here;
        iterative models multiply by rounds / epochs). :mod:`tabst.cost` fits the seconds per
        unit on small slices; ``n_rows`` are the rows the fit uses (after
        ``max_train_cells_per_group``)."""
        return float(n_rows) * max(1, n_features) * self.n_outputs(n_genes)

    def calibration_params(self, n_rows: int | None = None) -> dict:
        """Parameter overrides for the quick calibration fits (fewer rounds / epochs); the
        units of those fits are computed with them. ``n_rows``: rows the real fit will use."""
        return {}

    def calibration_rows(self, n_rows: int) -> int:
        """Rows of the first calibration slice (more when a model's speed per row depends on
        the data size, e.g. TabNet's batch size)."""
        return 1_000

    # --- fit / predict ------------------------------------------------------------------------
    def fit(self, X, Y, groups=None, *, feature_names: Sequence[str] | None = None,
            feature_groups: Sequence[str] | None = None,
            target_names: Sequence[str] | None = None):
        """Fit on X [n, F] (NaN allowed) and Y [n, G]; ``groups`` [n] are sample ids used for
        inner validation / CV splits (ridge α, early stopping). Feature and target names are
        taken from pandas columns when not given. Returns self."""
        X, names = _as_matrix(X, "X")
        Y, tnames = _as_matrix(Y, "Y")
        if X.shape[0] != Y.shape[0]:
            raise TabstError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}.")
        if X.shape[0] < 2:
            raise TabstError(f"need at least 2 training rows, got {X.shape[0]}.")
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape[0] != X.shape[0]:
                raise TabstError(f"groups has {groups.shape[0]} entries but X has "
                                 f"{X.shape[0]} rows.")
        if not np.isfinite(Y).all():
            raise TabstError("Y contains NaN or inf: fit only on rows with measured expression "
                             "(tabst.dataset.rows_with_expression).")
        F = X.shape[1]
        self.feature_names_ = list(feature_names if feature_names is not None
                                   else names or [f"f{i}" for i in range(F)])
        self.feature_groups_ = list(feature_groups if feature_groups is not None
                                    else ["feature"] * F)
        self.target_names_ = list(target_names if target_names is not None
                                  else tnames or [f"out{i}" for i in range(Y.shape[1])])
        if len(self.feature_names_) != F or len(self.feature_groups_) != F:
            raise TabstError(f"feature_names/feature_groups must have {F} entries (X columns).")
        if len(self.target_names_) != Y.shape[1]:
            raise TabstError(f"target_names must have {Y.shape[1]} entries (Y columns).")
        self.n_features_in_ = F
        self.n_train_rows_ = int(X.shape[0])
        keep = subsample_per_group(groups, X.shape[0], self.params["max_train_cells_per_group"],
                                   self.params["seed"])
        if keep is not None:
            X, Y = X[keep], Y[keep]
            groups = groups[keep] if groups is not None else None
        self.n_fit_rows_ = int(X.shape[0])
        t0 = time.perf_counter()
        with _PeakRSS() as mem:
            X = self._impute_fit(X)
            self.codec_ = make_codec(self.params["codec"], self.params["codec_k"]).fit(Y)
            Z = self.codec_.encode(Y)
            self._fit(X, Z, groups)
        self.fit_seconds_ = time.perf_counter() - t0
        self.peak_mem_mb_ = float(mem.peak_mb)
        return self

    def predict(self, X) -> np.ndarray:
        """Predictions [n, G] float32 (decoded through the codec)."""
        X = self._prepare(X)
        return self.codec_.decode(self._predict(X)).astype(np.float32, copy=False)

    def explain(self, X) -> Explanation:
        """Additive attributions [n, F, G] + base [G]; see each model for the method."""
        X = self._prepare(X)
        values, base, method = self._explain(X)
        values = self.codec_.decode_attributions(np.asarray(values, dtype=np.float32))
        base = self.codec_.decode_base(base)
        return Explanation(values=values.astype(np.float32, copy=False), base=base,
                           feature_names=list(self.feature_names_),
                           feature_groups=list(self.feature_groups_),
                           output_names=list(self.target_names_), method=method)

    def _prepare(self, X) -> np.ndarray:
        self._check_fitted()
        X, _ = _as_matrix(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise TabstError(f"X has {X.shape[1]} features but the model was fitted on "
                             f"{self.n_features_in_} ({self.display_name}).")
        return self._impute(X)

    def _check_fitted(self):
        if not hasattr(self, "codec_"):
            raise TabstError(f"model {self.display_name} is not fitted yet: call fit(X, Y) first.")

    # --- imputation ------------------------------------------------------------------------------
    def _impute_fit(self, X):
        if self.handles_nan:
            self.impute_values_ = None
            return X
        import warnings

        # medians from at most IMPUTE_MAX_ROWS evenly spaced training rows (exact below that):
        # a full column-wise median of 60k × 1024 costs seconds, the subsample a fraction
        n = X.shape[0]
        idx = np.unique(np.linspace(0, n - 1, min(n, IMPUTE_MAX_ROWS)).astype(np.int64))
        S = np.ascontiguousarray(X[idx].T)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns → NaN → 0 below
            med = np.nanmedian(S, axis=1) if np.isnan(S).any() else np.median(S, axis=1)
        self.impute_values_ = np.where(np.isfinite(med), med, 0.0).astype(np.float32)
        return self._impute(X)

    def _impute(self, X):
        if getattr(self, "impute_values_", None) is None:
            return X
        bad = ~np.isfinite(X)
        if bad.any():
            X = np.where(bad, self.impute_values_[None, :], X).astype(np.float32)
        return X

    # --- persistence ------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Save into directory ``path`` (written to a temp folder, then renamed).

        Files: ``model.json`` (registry key, params, names, timings), ``state.npz`` (arrays:
        codec, imputer, model, e.g. the sklearn tree's nodes), plus library files
        (``booster.json``: XGBoost JSON; ``tabnet.zip``: JSON + a torch state dict). No pickle:
        loading a shared run folder never runs code from it.
        """
        self._check_fitted()
        path = Path(path)
        with atomic_dir(path) as tmp:
            from .. import __version__

            meta = {"model": self.name, "class": type(self).__name__, "params": self.params,
                    "display_name": self.display_name, "codec": self.codec_.kind,
                    "feature_names": self.feature_names_, "feature_groups": self.feature_groups_,
                    "target_names": self.target_names_, "n_features_in": self.n_features_in_,
                    "fit_seconds": self.fit_seconds_, "peak_mem_mb": self.peak_mem_mb_,
                    "n_train_rows": getattr(self, "n_train_rows_", None),
                    "n_fit_rows": getattr(self, "n_fit_rows_", None),
                    "extra": self._meta(), "tabst_version": __version__}
            (tmp / "model.json").write_text(json.dumps(meta, indent=1, default=json_default))
            arrays = dict(self.codec_.state())
            if self.impute_values_ is not None:
                arrays["impute_values"] = self.impute_values_
            for k, v in self._state().items():
                arrays["m_" + k] = np.asarray(v)
            np.savez(tmp / "state.npz", **arrays)
            self._save_files(tmp)
        return path

    @classmethod
    def load(cls, path) -> "TabstModel":
        """Load a model saved with :meth:`save` (``TabstModel.load`` dispatches on the registry).

        A folder holding a pickle (``tree.pkl`` of older versions, ``*.joblib``) is refused
        with :class:`tabst.safeio.UnsafeFileError` before anything in it is read; arrays are
        read with ``allow_pickle=False``.
        """
        from . import REGISTRY

        path = Path(path)
        check_no_pickles(path)
        mf = path / "model.json"
        if not mf.exists():
            raise TabstError(f"{path}: not a saved tabst model (no model.json).")
        meta = json.loads(mf.read_text())
        klass = cls if cls is not TabstModel else REGISTRY.get(meta["model"])
        if klass is None:
            raise TabstError(f"{path}: unknown model '{meta['model']}' "
                             f"(known: {', '.join(REGISTRY)}).")
        obj = klass(**meta["params"])
        arrays = load_npz(path / "state.npz")
        obj.codec_ = codec_from_state(meta["codec"], arrays)
        obj.impute_values_ = arrays.get("impute_values")
        obj.feature_names_ = list(meta["feature_names"])
        obj.feature_groups_ = list(meta["feature_groups"])
        obj.target_names_ = list(meta["target_names"])
        obj.n_features_in_ = int(meta["n_features_in"])
        obj.fit_seconds_ = float(meta["fit_seconds"])
        obj.peak_mem_mb_ = float(meta["peak_mem_mb"])
        obj.n_train_rows_, obj.n_fit_rows_ = meta.get("n_train_rows"), meta.get("n_fit_rows")
        obj._set_state({k[2:]: v for k, v in arrays.items() if k.startswith("m_")}, meta["extra"])
        obj._load_files(path)
        return obj

    # --- hooks for subclasses -----------------------------------------------------------------
    def _fit(self, X, Z, groups):  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict(self, X):  # pragma: no cover - abstract
        raise NotImplementedError

    def _explain(self, X):  # pragma: no cover - abstract
        raise NotImplementedError

    def _state(self) -> dict:
        return {}

    def _meta(self) -> dict:
        return {}

    def _set_state(self, arrays: dict, meta: dict) -> None:
        pass

    def _save_files(self, path: Path) -> None:
        pass

    def _load_files(self, path: Path) -> None:
        pass

    def _output_index(self, output) -> int:
        """An output (int index or gene name) → column index of the decoded targets."""
        if isinstance(output, (int, np.integer)):
            if not 0 <= int(output) < len(self.target_names_):
                raise TabstError(f"output index {output} out of range "
                                 f"0..{len(self.target_names_) - 1}.")
            return int(output)
        if output in self.target_names_:
            return self.target_names_.index(output)
        raise TabstError(f"unknown gene {output!r}; known: {', '.join(self.target_names_[:10])}...")


def _as_matrix(A, what: str):
    """numpy float32 2-D array (+ column names when A is a DataFrame)."""
    names = None
    if hasattr(A, "columns") and hasattr(A, "to_numpy"):
        names = [str(c) for c in A.columns]
        A = A.to_numpy()
    A = np.asarray(A, dtype=np.float32)
    if A.ndim != 2:
        raise TabstError(f"{what} must be 2-D, got shape {A.shape}.")
    return A, names


