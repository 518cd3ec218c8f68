"""Per-model attributions of held-out cells, the runtime additivity check, ``attributions.h5``.

:func:`explain_model` calls a fitted tabst model's own ``explain(X)`` (exact methods where the
model has one: linear SHAP for ridge, TreeSHAP for the tree, XGBoost's ``pred_contribs``, a
gradient explainer for TabNet; through a target-PCA codec the model decodes its component
attributions with the loadings, see :mod:`tabst.codec`), keeps only the requested genes, and
checks additivity against ``model.predict(X)``: ``base + Σ_F values`` must equal the prediction.
A violation is not fatal (a warning is issued) but the largest absolute error is recorded and
shown in the report.

:class:`ModelAttributions` holds one model's attributions for the explained cells (possibly
from several fold models, one per held-out sample); :func:`write_attributions` /
:func:`read_attributions` store them in ``attributions.h5``::

    /<model>/                       attrs: method, source, max_additivity_error, description
        cell_id     str [n]         explained (held-out) cells
        sample      str [n]
        tissue      str [n]
        fold        int [n]         fold whose model explained the cell (-1: refit model)
        genes       str [g]
        features    str [F]
        groups      str [F]
        values      float32 [n, F, g]
        base        float64 [n, g]  constant within a fold (each fold model has its own base)
        prediction  float32 [n, g]  = base + values.sum(axis=1) (to float tolerance)
        truth       float32 [n, g]  measured expression
        x, y        float64 [n]     cell centroids (px)
        inputs      float32 [n, F]  the model's input feature values (NaN where missing)
        mask_aggregate  float32 [n, F]      TabNet only: aggregate attention mask
        mask_steps      float32 [S, n, F]   TabNet only: mask of each decision step
        fold_ids    int [k]         the folds of the explained cells
        fold_cells  int [k]         explained cells per fold
        fold_share  float64 [k, g]  each fold's share of the gene's |attribution| mass (columns
                                    sum to 1; NaN when the mass is 0), see :mod:`.trust`
        dominant_fold int [g]       the fold that dominates the gene (rule in the root attr
                                    fold_dominance_rule), -1 where none does
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import TabstError
from .trust import RESIDUAL_RULE, dominance_rule, dominant_fold, fold_shares

#: Additivity tolerance: |base + Σ values − prediction| ≤ ADDITIVITY_ATOL + ADDITIVITY_RTOL·|pred|.
ADDITIVITY_ATOL = 1e-3
ADDITIVITY_RTOL = 1e-3


class AdditivityWarning(UserWarning):
    """base + Σ attributions differs from the model's prediction by more than the tolerance."""


@dataclass
class ModelAttributions:
    """One model's attributions on the explained cells (concatenated over folds).

    ``prediction = base + values.sum(1)`` is the decomposition; ``model_prediction`` is what
    ``model.predict`` returned (their largest difference is ``max_additivity_error``).
    """

    model: str
    cell_id: np.ndarray
    sample: np.ndarray
    fold: np.ndarray
    genes: list
    features: list
    groups: list
    values: np.ndarray          # float32 [n, F, g]
    base: np.ndarray            # float64 [n, g]
    prediction: np.ndarray      # float32 [n, g] model.predict
    truth: np.ndarray | None = None     # float32 [n, g]
    tissue: np.ndarray | None = None    # str [n]
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    method: str = ""
    source: str = ""
    max_additivity_error: float = 0.0
    mask_aggregate: np.ndarray | None = None   # [n, F]
    mask_steps: np.ndarray | None = None       # [S, n, F]
    inputs: np.ndarray | None = None           # [n, F] feature values
    ig_residual: float = float("nan")          # integrated gradients only, see .trust
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    def gene_index(self, gene: str) -> int:
        if gene not in self.genes:
            raise TabstError(f"gene {gene!r} was not explained for model {self.model} "
                             f"(explained: {', '.join(self.genes)}).")
        return self.genes.index(gene)


def _call_explain(model, X, background=None):
    """``model.explain(X)``, passing ``background=`` only when the model's explain accepts it."""
    fn = model.explain
    if background is not None:
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins
            params = {}
        if "background" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return fn(X, background=background)
    return fn(X)


def additivity_error(values: np.ndarray, base: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """``|base + Σ_F values − prediction|`` [n, g] (float64); ``base`` is [g] or [n, g]."""
    recon = np.asarray(base, dtype=np.float64) + np.asarray(values, dtype=np.float64).sum(axis=1)
    return np.abs(recon - np.asarray(prediction, dtype=np.float64))


def check_additivity(values, base, prediction, what: str = "model") -> float:
    """Largest additivity error; warns (:class:`AdditivityWarning`) when above tolerance."""
    err = additivity_error(values, base, prediction)
    if err.size == 0:
        return 0.0
    tol = ADDITIVITY_ATOL + ADDITIVITY_RTOL * np.abs(np.asarray(prediction, dtype=np.float64))
    worst = float(err.max())
    if (err > tol).any():
        warnings.warn(f"{what}: attributions are not additive: base + sum(values) differs from "
                      f"the prediction by up to {worst:.3g} (tolerance {ADDITIVITY_ATOL:g} + "
                      f"{ADDITIVITY_RTOL:g}*|prediction|).", AdditivityWarning, stacklevel=2)
    return worst


#: Rows explained per call to ``model.explain``: the model returns every gene ([rows, F, G_all]),
#: so rows are chunked to keep that array near this many bytes (float64) before slicing genes.
EXPLAIN_CHUNK_BYTES = 256 * 1024 * 1024


def explain_model(model, X: np.ndarray, gene_idx: Sequence[int], *, background=None,
                  what: str | None = None, chunk_rows: int | None = None):
    """Explain ``X`` with ``model`` for the model outputs ``gene_idx``.

    Rows are explained in chunks (``chunk_rows``, default from :data:`EXPLAIN_CHUNK_BYTES`) so
    memory stays bounded however many cells and genes the model has; only the selected genes
    are kept.

    Returns ``(values [n, F, g] float32, base [g] float64, prediction [n, g] float32,
    max_additivity_error, method, feature_names, feature_groups)``. The additivity check
    compares against ``model.predict(X)`` for *all* the selected genes.
    """
    what = what or getattr(model, "display_name", type(model).__name__)
    gene_idx = np.asarray(gene_idx, dtype=np.int64)
    n, F = X.shape
    G_all = len(getattr(model, "target_names_", [])) or int(gene_idx.max(initial=0)) + 1
    if chunk_rows is None:
        chunk_rows = max(1, int(EXPLAIN_CHUNK_BYTES // max(1, F * G_all * 8)))
    vals, preds, base, ex = [], [], None, None
    for s in range(0, max(n, 1), chunk_rows):
        Xc = X[s:s + chunk_rows]
        ex = _call_explain(model, Xc, background)
        v = np.asarray(ex.values)
        if v.ndim != 3 or v.shape[0] != Xc.shape[0] or v.shape[1] != F:
            raise TabstError(f"{what}: explain() returned values of shape {v.shape}, expected "
                             f"[{Xc.shape[0]}, {F}, G].")
        vals.append(v[:, :, gene_idx].astype(np.float32))
        b = np.asarray(ex.base, dtype=np.float64).reshape(-1)[gene_idx]
        if base is not None and not np.allclose(b, base, rtol=1e-6, atol=1e-9):
            raise TabstError(f"{what}: explain() returned different base values for different "
                             "rows; the base must be constant per model.")
        base = b
        preds.append(np.asarray(model.predict(Xc), dtype=np.float32)[:, gene_idx])
    values = np.concatenate(vals)
    pred = np.concatenate(preds)
    err = check_additivity(values, base, pred, what)
    return (values, base, pred, err, str(getattr(ex, "method", "")),
            list(ex.feature_names), list(ex.feature_groups))


def tabnet_masks(model, X: np.ndarray):
    """TabNet attention masks of ``X``: ``(aggregate [n, F], steps [S, n, F])`` or None.

    Uses the model's ``masks(X)`` which returns ``(aggregate, {step: [n, F]})`` or
    ``(aggregate, [S, n, F])``; each row of a mask is normalised to sum to 1 (rows of zeros stay 0)
    so cells are comparable.
    """
    fn = getattr(model, "masks", None)
    if fn is None:
        return None
    agg, steps = fn(X)
    agg = np.asarray(agg, dtype=np.float64)
    if isinstance(steps, dict):
        steps = np.stack([np.asarray(steps[k], dtype=np.float64) for k in sorted(steps)])
    else:
        steps = np.asarray(steps, dtype=np.float64)
        if steps.ndim == 2:
            steps = steps[None]

    def norm(a):
        s = a.sum(axis=-1, keepdims=True)
        return np.divide(a, s, out=np.zeros_like(a), where=s > 0)

    return norm(agg).astype(np.float32), norm(steps).astype(np.float32)


def align_features(parts: Sequence[ModelAttributions]):
    """Union of the parts' features (order of first appearance) and each part re-indexed on it.

    Fold models can have different feature columns (e.g. the tissue one-hot only has the
    tissues of that fold's training rows). A feature a fold model does not have contributes
    exactly 0 to its predictions, so its attribution is 0 (additivity is kept) and its input
    value is NaN. Embedding PCs keep their names (``emb_pc1``...) although each fold fitted its
    own PCA: only their group sums are comparable across folds.
    """
    names, groups = [], []
    seen = {}
    for p in parts:
        for n, g in zip(p.features, p.groups):
            if n not in seen:
                seen[n] = len(names)
                names.append(n)
                groups.append(g)
    out = []
    for p in parts:
        if list(p.features) == names:
            out.append(p)
            continue
        idx = np.asarray([seen[n] for n in p.features], dtype=np.int64)
        v = np.zeros((p.n, len(names), p.values.shape[2]), dtype=p.values.dtype)
        v[:, idx, :] = p.values
        q = ModelAttributions(**{**p.__dict__})
        q.values, q.features, q.groups = v, list(names), list(groups)
        if p.inputs is not None:
            x = np.full((p.n, len(names)), np.nan, dtype=np.float32)
            x[:, idx] = p.inputs
            q.inputs = x
        if p.mask_aggregate is not None:
            a = np.zeros((p.n, len(names)), dtype=np.float32)
            a[:, idx] = p.mask_aggregate
            q.mask_aggregate = a
        if p.mask_steps is not None:
            st = np.zeros((p.mask_steps.shape[0], p.n, len(names)), dtype=np.float32)
            st[:, :, idx] = p.mask_steps
            q.mask_steps = st
        out.append(q)
    return out


def concat(parts: Sequence[ModelAttributions]) -> ModelAttributions:
    """Concatenate the attributions of several folds of one model (same genes; features are
    aligned with :func:`align_features`)."""
    parts = [p for p in parts if p is not None and p.n > 0]
    if not parts:
        raise TabstError("no cells were explained.")
    p0 = parts[0]
    for p in parts[1:]:
        if p.genes != p0.genes:
            raise TabstError(f"{p0.model}: fold models explain different genes; cannot combine "
                             "their attributions.")
        if p.mask_steps is not None and p0.mask_steps is not None \
                and p.mask_steps.shape[0] != p0.mask_steps.shape[0]:
            raise TabstError(f"{p0.model}: fold models have different numbers of TabNet steps.")
    parts = align_features(parts)
    p0 = parts[0]

    def cat(attr, axis=0):
        arrs = [getattr(p, attr) for p in parts]
        if any(a is None for a in arrs):
            return None
        return np.concatenate(arrs, axis=axis)

    methods = list(dict.fromkeys(p.method for p in parts))
    return ModelAttributions(
        model=p0.model, cell_id=cat("cell_id"), sample=cat("sample"), fold=cat("fold"),
        genes=p0.genes, features=p0.features, groups=p0.groups, values=cat("values"),
        base=cat("base"), prediction=cat("prediction"), truth=cat("truth"), x=cat("x"),
        y=cat("y"), method="; ".join(methods), source=p0.source,
        max_additivity_error=max(p.max_additivity_error for p in parts),
        mask_aggregate=cat("mask_aggregate"), mask_steps=cat("mask_steps", axis=1),
        inputs=cat("inputs"), tissue=cat("tissue"),
        ig_residual=max((p.ig_residual for p in parts if np.isfinite(p.ig_residual)),
                        default=float("nan")))


# --- attributions.h5 ----------------------------------------------------------------------------

_DESCRIPTIONS = {
    "cell_id": "explained held-out cells (rows of values/prediction)",
    "sample": "sample of each explained cell",
    "fold": "cross-validation fold whose model explained the cell (-1: model refitted on all rows)",
    "genes": "genes explained (last axis of values/base/prediction)",
    "features": "model input features (second axis of values)",
    "groups": "feature group of each feature (embedding, morphology, stain, neighbourhood, "
              "tissue, position)",
    "values": "additive attribution of each feature to each gene's prediction for each cell: "
              "prediction = base + values.sum(axis=1)",
    "base": "base value (expected model output) per cell and gene; constant within a fold, as "
            "each fold model has its own",
    "prediction": "the model's prediction (model.predict) for each cell and gene",
    "truth": "measured expression of each cell and gene",
    "tissue": "tissue of each explained cell",
    "x": "cell centroid x in its sample image",
    "y": "cell centroid y in its sample image",
    "mask_aggregate": ("TabNet aggregate attention mask per cell and feature (rows sum to 1); "
                       "shared by all genes"),
    "mask_steps": ("TabNet attention mask of each decision step [step, cell, feature] (rows sum "
                   "to 1)"),
    "inputs": "model input feature values of each explained cell (NaN where missing; models "
              "impute training medians)",
    "fold_ids": "cross-validation folds of the explained cells (rows of fold_share)",
    "fold_cells": "explained cells of each fold",
    "fold_share": "each fold's share of the gene's |attribution| mass (sum over its cells and "
                  "the features of |values|) [fold, gene]; columns sum to 1, NaN when the mass "
                  "is 0",
    "dominant_fold": "fold that dominates the gene's attribution (root attr "
                     "fold_dominance_rule), -1 where none does",
}


def write_attributions(path, results: Sequence[ModelAttributions], *, attrs: dict | None = None):
    """Write ``attributions.h5`` atomically (temp file + rename). Returns the path."""
    import h5py

    from ..outputs import atomic_output
    from ..store import now_utc, put, set_attr

    path = Path(path)
    with atomic_output(path, "file", force=True, what="attributions file") as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["description"] = ("tabst explain: per-model additive feature attributions of "
                                      "held-out cells; prediction = base + values.sum(axis=1)")
            f.attrs["created_utc"] = now_utc()
            f.attrs["fold_dominance_rule"] = dominance_rule(str((attrs or {}).get("unit",
                                                                                  "cell")))
            f.attrs["ig_residual_rule"] = RESIDUAL_RULE
            for k, v in (attrs or {}).items():
                set_attr(f, k, v)
            for r in results:
                g = f.create_group(r.model)
                g.attrs["description"] = f"attributions of model {r.model}"
                g.attrs["method"] = r.method
                g.attrs["source"] = r.source
                g.attrs["max_additivity_error"] = float(r.max_additivity_error)
                g.attrs["ig_total_residual"] = float(r.ig_residual)
                fields = {
                    "cell_id": np.asarray(r.cell_id, dtype=object),
                    "sample": np.asarray(r.sample, dtype=object),
                    "fold": np.asarray(r.fold, dtype=np.int32),
                    "genes": np.asarray(r.genes, dtype=object),
                    "features": np.asarray(r.features, dtype=object),
                    "groups": np.asarray(r.groups, dtype=object),
                    "values": np.asarray(r.values, dtype=np.float32),
                    "base": np.asarray(r.base, dtype=np.float64),
                    "prediction": np.asarray(r.prediction, dtype=np.float32),
                }
                for k in ("truth", "x", "y", "mask_aggregate", "mask_steps", "inputs"):
                    v = getattr(r, k)
                    if v is not None:
                        fields[k] = np.asarray(v, dtype=np.float64 if k in ("x", "y")
                                               else np.float32)
                if r.tissue is not None:
                    fields["tissue"] = np.asarray(r.tissue, dtype=object)
                fields.update(_fold_fields(r))
                for k, v in fields.items():
                    unit = "px" if k in ("x", "y") else None
                    put(g, k, v, description=_DESCRIPTIONS[k], unit=unit,
                        compression="gzip" if k in ("values", "mask_steps", "inputs") else None)
    return path


def _fold_fields(r: ModelAttributions) -> dict:
    """The per-fold share datasets of one model (see :func:`.trust.fold_shares`)."""
    folds, shares, cells = fold_shares(r.values, r.fold)
    dom = dominant_fold(shares, cells)
    return {"fold_ids": np.asarray(folds, dtype=np.int32), "fold_cells": cells,
            "fold_share": shares,
            "dominant_fold": np.asarray([-1 if d is None else folds[d] for d in dom],
                                        dtype=np.int32)}


def read_attributions(path, models: Sequence[str] | None = None) -> dict:
    """Read ``attributions.h5`` → ``{model: ModelAttributions}``."""
    import h5py

    from ..store import read_strings

    path = Path(path)
    if not path.exists():
        raise TabstError(f"{path}: no attributions file. Run `tabst explain RUN` first.")
    out = {}
    with h5py.File(path, "r") as f:
        for name in (models or list(f.keys())):
            if name not in f:
                raise TabstError(f"{path}: no model {name!r} (has: {', '.join(f.keys())}).")
            g = f[name]

            def opt(k, g=g):
                return g[k][()] if k in g else None

            out[name] = ModelAttributions(
                model=name, cell_id=read_strings(g["cell_id"]), sample=read_strings(g["sample"]),
                fold=g["fold"][()], genes=list(read_strings(g["genes"])),
                features=list(read_strings(g["features"])),
                groups=list(read_strings(g["groups"])), values=g["values"][()],
                base=g["base"][()], prediction=g["prediction"][()], truth=opt("truth"),
                x=opt("x"), y=opt("y"), method=str(g.attrs.get("method", "")),
                source=str(g.attrs.get("source", "")),
                max_additivity_error=float(g.attrs.get("max_additivity_error", 0.0)),
                mask_aggregate=opt("mask_aggregate"), mask_steps=opt("mask_steps"),
                inputs=opt("inputs"),
                ig_residual=float(g.attrs.get("ig_total_residual",
                                              g.attrs.get("ig_max_residual", float("nan")))),
                tissue=read_strings(g["tissue"]) if "tissue" in g else None)
    return out
