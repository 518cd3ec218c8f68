"""Summing attributions by feature group, and ranking the named ("readable") features.

A biologist cannot read "embedding dimension 731", but can read *nucleus_area* or
*hematoxylin_mean*. Every feature column of a run carries a group label (set by the feature
builder); this module turns an additive attribution array ``values [n, F, G]`` into

- :func:`group_sums` → ``[n, n_groups, G]``: the attributions of the features of each group
  added up. Because SHAP-style attributions are additive, group sums keep the total:
  ``group_sums(values).sum(1) == values.sum(1)`` exactly (up to float rounding), so
  ``base + Σ_groups = prediction`` still holds.
- :func:`group_importance` → mean |group attribution| over cells ``[n_groups, G]`` (what the
  cross-gene heatmap shows).
- :func:`readable_importance` → the named features of the readable groups (morphology, stain,
  neighbourhood, tissue, position) ranked by mean |attribution| for one gene.

Group order is canonical (:data:`GROUP_ORDER`), with unknown groups appended in order of first
appearance.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: Canonical order of the feature groups in tables and plots.
GROUP_ORDER = ["embedding", "morphology", "stain", "neighbourhood", "tissue", "position"]

#: Groups whose features have a biological name (everything except the anonymous embedding).
READABLE_GROUPS = ("morphology", "stain", "neighbourhood", "tissue", "position")


def is_readable(group: str) -> bool:
    """True for groups whose features are named quantities (not embedding dimensions)."""
    g = str(group)
    return not g.startswith("embedding") and g != "context:embedding"


def ordered_groups(feature_groups: Sequence[str]) -> list[str]:
    """The distinct groups of ``feature_groups`` in canonical order, unknown ones last."""
    present = list(dict.fromkeys(str(g) for g in feature_groups))
    known = [g for g in GROUP_ORDER if g in present]
    return known + [g for g in present if g not in GROUP_ORDER]


def group_matrix(feature_groups: Sequence[str], groups: Sequence[str] | None = None) -> np.ndarray:
    """Indicator matrix ``M [F, n_groups]`` (float64) with ``M[f, j] = 1`` iff feature f is in
    group j. ``values @ M`` (over the feature axis) gives group sums."""
    groups = ordered_groups(feature_groups) if groups is None else list(groups)
    fg = np.asarray([str(g) for g in feature_groups], dtype=object)
    M = np.zeros((len(fg), len(groups)), dtype=np.float64)
    for j, g in enumerate(groups):
        M[fg == g, j] = 1.0
    return M


def group_sums(values: np.ndarray, feature_groups: Sequence[str],
               groups: Sequence[str] | None = None):
    """Sum attributions within each feature group.

    Parameters
    ----------
    values : array [n, F, G]
        Additive attributions.
    feature_groups : sequence of str, length F
    groups : optional list of group names (order of the output); default :func:`ordered_groups`.

    Returns
    -------
    groups : list[str]
    sums : float64 array [n, n_groups, G]; ``sums.sum(1) == values.sum(1)`` when every feature's
        group is listed.
    """
    values = np.asarray(values)
    if values.ndim != 3:
        raise ValueError(f"values must be [n, F, G], got shape {values.shape}")
    if len(feature_groups) != values.shape[1]:
        raise ValueError(f"{len(feature_groups)} feature groups for {values.shape[1]} features")
    groups = ordered_groups(feature_groups) if groups is None else list(groups)
    M = group_matrix(feature_groups, groups)
    sums = np.einsum("nfg,fj->njg", values.astype(np.float64), M)
    return groups, sums


def group_importance(values: np.ndarray, feature_groups: Sequence[str],
                     groups: Sequence[str] | None = None):
    """Mean absolute group attribution over cells.

    Returns ``(groups, imp [n_groups, G])``. The absolute value is taken *after* summing within
    the group, so features of one group that cancel out count as little.
    """
    groups, sums = group_sums(values, feature_groups, groups)
    return groups, np.abs(sums).mean(axis=0)


def feature_importance(values: np.ndarray) -> np.ndarray:
    """Mean |attribution| over cells: ``[F, G]`` (float64)."""
    return np.abs(np.asarray(values, dtype=np.float64)).mean(axis=0)


def readable_importance(values: np.ndarray, feature_names: Sequence[str],
                        feature_groups: Sequence[str], gene_index: int, top: int | None = None):
    """Named features of the readable groups ranked by mean |attribution| for one gene.

    Returns a list of dicts ``{"feature", "group", "index", "importance", "mean_attribution"}``
    sorted by decreasing importance (ties keep column order). Embedding dimensions are left out.
    """
    v = np.asarray(values[:, :, gene_index], dtype=np.float64)
    imp = np.abs(v).mean(axis=0)
    mean = v.mean(axis=0)
    idx = [i for i, g in enumerate(feature_groups) if is_readable(g)]
    idx.sort(key=lambda i: (-imp[i], i))
    if top is not None:
        idx = idx[:top]
    return [{"feature": str(feature_names[i]), "group": str(feature_groups[i]), "index": int(i),
             "importance": float(imp[i]), "mean_attribution": float(mean[i])} for i in idx]


def group_shares(imp: np.ndarray) -> np.ndarray:
    """Normalise importances so each column sums to 1 (columns of zeros stay zero)."""
    imp = np.asarray(imp, dtype=np.float64)
    tot = imp.sum(axis=0, keepdims=True)
    return np.divide(imp, tot, out=np.zeros_like(imp), where=tot > 0)
