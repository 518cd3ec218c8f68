"""How far the report's averaged picture can be trusted: per-fold shares of the attribution
mass, the fold-dominance flag, and the integrated-gradients residual rule.

Per-fold shares
---------------
``explain`` pools the held-out cells of every fold, each explained by its own fold model. For
one model and gene, the *attribution mass* of a cell is ``Σ_F |values[cell, F, gene]|``; a fold's
share is the mass of its cells over the mass of all explained cells (shares sum to 1). A gene
is **dominated by one fold** when the run has at least :data:`DOMINANCE_MIN_FOLDS` folds and one
fold holds more than :data:`DOMINANCE_SHARE` of the mass: the pooled charts then mostly describe
that fold's model on that fold's cells. The fold's share of the explained cells is shown beside
it, so a reader can tell a large fold from a fold whose model attributes much more per cell.

Integrated-gradients residual
-----------------------------
Models explained by integrated gradients (TabNet) make their attributions additive with a
completeness correction; the model reports the residual it corrected, summed over rows and
outputs, as a share of the summed ``|f(x) − f(baseline)|`` (``ig_total_residual_``; the
per-row maximum is dominated by rows with almost no change; over several fold models, the
worst fold's). Above :data:`IG_RESIDUAL_LIMIT`
the correction,
not the gradients, sets a visible part of the attributions, so the model is kept out of the
headline charts (per-gene panels, group bars, cross-gene heatmaps); it stays in the models table
and in ``attributions.h5``. Exact methods (linear SHAP, TreeSHAP, XGBoost ``pred_contribs``)
have no residual and are never hidden by this rule.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: A fold holding more than this share of a gene's |attribution| mass dominates the gene ...
DOMINANCE_SHARE = 0.5
#: ... when the run has at least this many folds (with 2 folds, > 50 % is one of the two halves).
DOMINANCE_MIN_FOLDS = 3
#: Largest integrated-gradients residual (× |f(x) − f(baseline)|) a headline chart accepts.
IG_RESIDUAL_LIMIT = 0.1



def dominance_rule(unit: str = "cell") -> str:
    """The fold-dominance rule in words (``unit``: what a row is, cell or spot)."""
    return (f"a fold dominates a gene when the run has >= {DOMINANCE_MIN_FOLDS} folds and, per "
            f"explained {unit}, the fold's held-out {unit}s carry more than "
            f"{DOMINANCE_SHARE:.0%} of the gene's |attribution| mass (sum over features of "
            f"|values|, averaged over each fold's {unit}s, so a fold is not flagged for its "
            "size)")


RESIDUAL_RULE = (f"a model explained by integrated gradients is left out of the headline charts "
                 f"when the residual its completeness correction fills in, summed over rows and "
                 f"outputs, exceeds {IG_RESIDUAL_LIMIT:g} of the summed |f(x) - f(baseline)|")


def fold_shares(values: np.ndarray, fold: np.ndarray):
    """Each fold's share of each gene's |attribution| mass.

    Parameters
    ----------
    values : [n, F, g] attributions.  fold : [n] fold of each cell.

    Returns
    -------
    folds : sorted fold ids [k].  shares : float64 [k, g], each column sums to 1 (NaN where the
    gene's mass is 0, e.g. a constant model).  cells : int [k], explained cells per fold.
    """
    fold = np.asarray(fold)
    folds = np.unique(fold)
    mass = np.abs(np.asarray(values, dtype=np.float64)).sum(axis=1)             # [n, g]
    per = np.stack([mass[fold == k].sum(axis=0) for k in folds]) if len(folds) else \
        np.zeros((0, mass.shape[1]))
    tot = per.sum(axis=0, keepdims=True)
    shares = np.divide(per, tot, out=np.full_like(per, np.nan), where=tot > 0)
    cells = np.asarray([int((fold == k).sum()) for k in folds], dtype=np.int64)
    return [int(k) for k in folds], shares, cells


def per_cell_shares(shares: np.ndarray, cells) -> np.ndarray:
    """``shares [k, g]`` divided by each fold's explained cells and renormalised: the share of
    the mass *per cell*, so that a fold is not "dominant" for holding most of the cells."""
    shares = np.asarray(shares, dtype=np.float64)
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 1)
    w = np.divide(shares, cells, out=np.zeros_like(shares), where=cells > 0)
    tot = w.sum(axis=0, keepdims=True)
    return np.divide(w, tot, out=np.full_like(w, np.nan), where=tot > 0)


def dominant_fold(shares: np.ndarray, cells=None, n_folds: int | None = None) -> list:
    """Per gene (column of ``shares [k, g]``), the index into the folds of the dominating fold
    (see :func:`dominance_rule`), or None. With ``cells`` (explained cells per fold) the
    shares are first taken per cell (:func:`per_cell_shares`)."""
    shares = np.asarray(shares, dtype=np.float64)
    if cells is not None:
        shares = per_cell_shares(shares, cells)
    k = shares.shape[0] if n_folds is None else int(n_folds)
    out = []
    for j in range(shares.shape[1]):
        col = shares[:, j]
        if k < DOMINANCE_MIN_FOLDS or not np.isfinite(col).all():
            out.append(None)
            continue
        i = int(np.argmax(col))
        out.append(i if col[i] > DOMINANCE_SHARE else None)
    return out


def residual_too_large(residual) -> bool:
    """Whether an integrated-gradients residual (None / NaN: not an IG model) hides a model."""
    if residual is None:
        return False
    r = float(residual)
    return math.isfinite(r) and r > IG_RESIDUAL_LIMIT


def residual_notes(results: dict) -> dict:
    """Append the integrated-gradients residual to each IG model's method text; returns
    ``{model: why it is hidden from the headline charts}`` (the rule: module docstring)."""
    hidden = {}
    for m, r in results.items():
        if not np.isfinite(r.ig_residual):
            continue
        big = residual_too_large(r.ig_residual)
        r.method += (f" (integrated-gradients residual before the correction: "
                     f"{r.ig_residual:.3g} of the total |f(x) - f(baseline)|"
                     + ("; large: the correction dominates)" if big else ")"))
        if big:
            hidden[m] = (f"{m} is left out of the per-gene panels, group bars and cross-gene "
                         f"heatmaps: its integrated-gradients completeness correction supplied "
                         f"{r.ig_residual:.3g} of the total |f(x) - f(baseline)| (limit "
                         f"{IG_RESIDUAL_LIMIT:g}), so the correction, not the gradients, sets "
                         "part of its attributions. Its numbers stay in attributions.h5.")
    return hidden


def fold_table(results: dict, gene: str, fold_samples: dict, unit: str = "cell") -> dict | None:
    """Per-fold shares of ``gene`` for every model, ready for the report.

    ``fold_samples`` maps fold id → its held-out samples. Returns ``{"models", "rows", "notes",
    "flags"}`` (rows: fold, samples, explained cells, cell share, one share per model with a
    dominance mark; notes: one sentence per dominated model; flags: the same, short), or None
    with a single explained fold (refit models).
    """
    models, cols, notes, flags = [], {}, [], []
    folds_all: list = []
    for name, r in results.items():
        if gene not in r.genes:
            continue
        folds, shares, cells = fold_shares(r.values[:, :, [r.gene_index(gene)]], r.fold)
        if len(folds) < 2 or not np.isfinite(shares).all():
            continue
        models.append(name)
        dom = dominant_fold(shares, cells)[0]
        cols[name] = (folds, shares[:, 0], cells, dom)
        folds_all = folds_all or folds
        if dom is not None:
            k = folds[dom]
            flags.append(f"{gene} ({name}: fold {k}, {shares[dom, 0]:.0%})")
            notes.append(f"{gene} ({name}): {shares[dom, 0]:.0%} of the |attribution| mass comes "
                         f"from fold {k} (held-out {', '.join(fold_samples.get(k, []) or ['?'])}),"
                         f" which holds {cells[dom] / cells.sum():.0%} of the explained {unit}s: "
                         f"the pooled charts for {gene} mostly describe that fold's model on "
                         f"that fold's {unit}s.")
    if not models:
        return None
    rows = []
    first = cols[models[0]]
    for i, k in enumerate(folds_all):
        row = {"fold": k, "samples": ", ".join(fold_samples.get(k, [])),
               "cells": int(first[2][i]), "cell_share": f"{first[2][i] / first[2].sum():.0%}",
               "shares": []}
        for m in models:
            folds, sh, _, dom = cols[m]
            j = folds.index(k) if k in folds else None
            row["shares"].append({"value": "–" if j is None else f"{sh[j]:.0%}",
                                  "dominant": j is not None and j == dom})
        rows.append(row)
    return {"models": models, "rows": rows, "notes": notes, "flags": flags}


def samples_per_fold(fold: Sequence[int], sample: Sequence[str]) -> dict:
    """``{fold: [samples of its explained cells]}`` in order of appearance."""
    out: dict = {}
    for k, s in zip(np.asarray(fold).tolist(), np.asarray(sample).tolist()):
        lst = out.setdefault(int(k), [])
        if str(s) not in lst:
            lst.append(str(s))
    return out
