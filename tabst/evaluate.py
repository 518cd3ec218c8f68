"""Honest evaluation: folds by sample and the challenge metrics (DESIGN.md "Metric definitions").

Folds
-----
:func:`make_folds` splits rows so that no sample (or patient, with ``group_column``) is ever on
both sides: leave-one-sample-out by default, ``group-kfold:K`` (scikit-learn ``GroupKFold``) when
there are many samples. A random cell-level split (``random:K``) leaks spatial neighbours and is
only produced with ``unsafe_random_split=True``.

Metrics (contracts pinned by ``tests/test_evaluate.py``)
-------------------------------------------------------
- :func:`cellwise_spearman` (Crunch 1): per cell, rank the G predictions and the G measured values
  (average ranks for ties), Pearson correlation of the two rank vectors; a NaN (constant row or
  non-finite values) counts as 0; mean over the cells of a region, then over regions, then over
  samples (regions = samples unless a region column is given).
- :func:`genewise_pearson` (HEST-Benchmark): per gene over all test cells of a fold; a constant
  gene counts 0 and is reported; mean over genes (and, in :func:`summarise`, over folds).
- :func:`mse`: per cell the mean squared error over genes, then mean over cells -> regions ->
  samples.

All functions are vectorised over cells and genes (no Python loop over cells).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

from .errors import TabstError

METRICS = ("cellwise_spearman", "genewise_pearson", "mse")
#: +1: higher is better, -1: lower is better
METRIC_DIRECTION = {"cellwise_spearman": 1, "genewise_pearson": 1, "mse": -1}
METRIC_LABEL = {"cellwise_spearman": "cell-wise Spearman", "genewise_pearson": "gene-wise Pearson",
                "mse": "MSE"}


# --------------------------------------------------------------------------------------------
# folds
# --------------------------------------------------------------------------------------------
@dataclass
class Fold:
    """One train/test split. Row indices index the arrays given to :func:`make_folds`."""

    k: int
    train: np.ndarray
    test: np.ndarray
    test_samples: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"fold": self.k, "n_train": int(len(self.train)), "n_test": int(len(self.test)),
                "test_samples": [str(s) for s in self.test_samples]}


_FOLD_RE = re.compile(r"^(leave-one-sample-out|group-kfold:(\d+)|random:(\d+))$")


def parse_folds(spec: str) -> tuple[str, int | None]:
    """``"leave-one-sample-out"`` -> ("loso", None); ``"group-kfold:5"`` -> ("group-kfold", 5);
    ``"random:5"`` -> ("random", 5). Anything else raises :class:`TabstError`."""
    m = _FOLD_RE.match(str(spec).strip())
    if not m:
        raise TabstError(f"folds: unknown fold scheme {spec!r}. Use 'leave-one-sample-out', "
                         "'group-kfold:K' (K >= 2), or 'random:K' (only with "
                         "--unsafe-random-split).")
    if m.group(2):
        k = int(m.group(2))
        if k < 2:
            raise TabstError(f"folds: group-kfold needs K >= 2 (got {spec!r}).")
        return "group-kfold", k
    if m.group(3):
        k = int(m.group(3))
        if k < 2:
            raise TabstError(f"folds: random needs K >= 2 (got {spec!r}).")
        return "random", k
    return "loso", None


def make_folds(samples, spec: str = "leave-one-sample-out", *, groups=None,
               unsafe_random_split: bool = False, seed: int = 0) -> list[Fold]:
    """Build train/test folds over rows.

    Parameters
    ----------
    samples : array of str [n]
        Sample of each row.
    spec : str
        ``leave-one-sample-out`` | ``group-kfold:K`` | ``random:K``.
    groups : array [n], optional
        Grouping unit for the folds (e.g. patient); defaults to ``samples``. Each sample must lie
        in exactly one group, so a sample is never split across train and test.
    unsafe_random_split : bool
        Required for ``random:K`` (cell-level split, leaks spatial neighbours).
    seed : int
        Shuffling seed for the random split.

    Returns
    -------
    list of Fold
    """
    samples = np.asarray(samples).astype(str)
    n = len(samples)
    kind, k = parse_folds(spec)
    if kind == "random":
        if not unsafe_random_split:
            raise TabstError("folds: a random cell-level split leaks spatial neighbours between "
                             "train and test. Use 'leave-one-sample-out' or 'group-kfold:K', or "
                             "pass --unsafe-random-split if you really want it (the report will "
                             "say so in red).")
        from sklearn.model_selection import KFold

        if n < k:
            raise TabstError(f"folds: random:{k} needs at least {k} cells (have {n}).")
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
        out = []
        for i, (tr, te) in enumerate(splitter.split(np.zeros(n))):
            out.append(Fold(i, np.sort(tr), np.sort(te), sorted(set(samples[te]))))
        return out

    g = samples if groups is None else np.asarray(groups).astype(str)
    if len(g) != n:
        raise TabstError("folds: the group column has a different length than the samples.")
    if groups is not None:
        pairs = {}
        for s, gg in zip(samples, g):
            if pairs.setdefault(s, gg) != gg:
                raise TabstError(f"folds: sample {s!r} belongs to several groups ({pairs[s]!r}, "
                                 f"{gg!r}); a sample would be split between train and test. "
                                 "Fix the group column or fold by sample.")
    uniq = np.unique(g)
    if len(uniq) < 2:
        raise TabstError(f"folds: need at least 2 samples/groups to hold one out, the data has "
                         f"{len(uniq)} ({', '.join(map(str, uniq))}). Add samples, or (unsafe) "
                         "use --unsafe-random-split.")
    if kind == "loso":
        out = []
        for i, u in enumerate(uniq):
            te = np.flatnonzero(g == u)
            tr = np.flatnonzero(g != u)
            out.append(Fold(i, tr, te, sorted(set(samples[te]))))
        return out
    from sklearn.model_selection import GroupKFold

    if k > len(uniq):
        raise TabstError(f"folds: group-kfold:{k} needs at least {k} samples/groups, the data has "
                         f"{len(uniq)}. Use group-kfold:{len(uniq)} or leave-one-sample-out.")
    out = []
    for i, (tr, te) in enumerate(GroupKFold(n_splits=k).split(np.zeros(n), groups=g)):
        out.append(Fold(i, np.sort(tr), np.sort(te), sorted(set(samples[te]))))
    return out


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
ROW_CHUNK = 8192  # cells scored at a time: float64 temporaries stay small at a million cells


def _as2d(a, name) -> np.ndarray:
    """``a`` as a 2-D float array; float32 stays float32 (each chunk is scored in float64)."""
    a = np.asarray(a)
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D [cells, genes], got shape {a.shape}")
    return a


def _check(y_true, y_pred):
    t, p = _as2d(y_true, "y_true"), _as2d(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
    return t, p


def _chunks(n: int):
    for lo in range(0, n, ROW_CHUNK):
        yield slice(lo, min(n, lo + ROW_CHUNK))


def _constant_rows(a: np.ndarray) -> np.ndarray:
    """Rows whose values are all equal (up to float noise relative to their magnitude)."""
    if a.shape[1] == 0:
        return np.ones(a.shape[0], dtype=bool)
    span = a.max(axis=1) - a.min(axis=1)
    return span <= 1e-12 * np.maximum(np.abs(a).max(axis=1), 1e-300)


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b``; NaN where either row
    is constant or holds a non-finite value."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        const = _constant_rows(a) | _constant_rows(b)
        ac = a - a.mean(axis=1, keepdims=True)
        bc = b - b.mean(axis=1, keepdims=True)
        num = np.einsum("ij,ij->i", ac, bc)
        den = np.sqrt(np.einsum("ij,ij->i", ac, ac) * np.einsum("ij,ij->i", bc, bc))
        r = num / den
    r[const | ~np.isfinite(r)] = np.nan
    return np.clip(r, -1.0, 1.0)


def cell_spearman_scores(y_true, y_pred) -> np.ndarray:
    """Per-cell Spearman correlation across genes [n]; NaN (constant/non-finite row) -> 0.
    Computed in chunks of :data:`ROW_CHUNK` cells (each row is independent)."""
    t, p = _check(y_true, y_pred)
    out = np.zeros(t.shape[0])
    for sl in _chunks(t.shape[0]):
        tc, pc = t[sl].astype(np.float64), p[sl].astype(np.float64)
        bad = ~(np.isfinite(tc).all(axis=1) & np.isfinite(pc).all(axis=1))
        rt = rankdata(np.where(np.isfinite(tc), tc, 0.0), axis=1)
        rp = rankdata(np.where(np.isfinite(pc), pc, 0.0), axis=1)
        r = rowwise_pearson(rt, rp)
        r[bad] = np.nan
        out[sl] = np.nan_to_num(r, nan=0.0)
    return out


def cell_mse_scores(y_true, y_pred) -> np.ndarray:
    """Per-cell mean squared error over genes [n] (NaN where a value is non-finite)."""
    t, p = _check(y_true, y_pred)
    out = np.empty(t.shape[0])
    for sl in _chunks(t.shape[0]):
        out[sl] = ((t[sl].astype(np.float64) - p[sl]) ** 2).mean(axis=1)
    return out


def gene_mse(y_true, y_pred) -> np.ndarray:
    """Per-gene mean squared error over the cells [G] (chunked)."""
    t, p = _check(y_true, y_pred)
    acc = np.zeros(t.shape[1])
    for sl in _chunks(t.shape[0]):
        acc += ((t[sl].astype(np.float64) - p[sl]) ** 2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return acc / t.shape[0]


def hierarchical_mean(values, samples, regions=None) -> float:
    """Mean over the cells of each region, then over the regions of each sample, then over
    samples. ``regions=None`` means region = sample (a plain mean per sample, then over samples).
    Regions are nested inside samples (the same region name in two samples is two regions)."""
    import pandas as pd

    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan")
    s = np.asarray(samples).astype(str)
    r = s if regions is None else np.asarray(regions).astype(str)
    df = pd.DataFrame({"v": v, "s": s, "r": r})
    per_region = df.groupby(["s", "r"], sort=False)["v"].mean()
    per_sample = per_region.groupby(level=0, sort=False).mean()
    return float(per_sample.mean())


def per_sample_means(values, samples, regions=None) -> dict:
    """``{sample: mean over regions of the mean over cells}`` (the inner two levels of
    :func:`hierarchical_mean`)."""
    import pandas as pd

    s = np.asarray(samples).astype(str)
    r = s if regions is None else np.asarray(regions).astype(str)
    df = pd.DataFrame({"v": np.asarray(values, dtype=np.float64), "s": s, "r": r})
    return df.groupby(["s", "r"], sort=False)["v"].mean().groupby(level=0, sort=False).mean() \
        .to_dict()


def cellwise_spearman(y_true, y_pred, samples=None, regions=None) -> float:
    """Crunch 1 cell-wise Spearman: per cell Spearman over genes (NaN -> 0), averaged over the
    cells of a region, then regions, then samples."""
    scores = cell_spearman_scores(y_true, y_pred)
    if samples is None:
        samples = np.zeros(len(scores), dtype=str)
    return hierarchical_mean(scores, samples, regions)


def mse(y_true, y_pred, samples=None, regions=None) -> float:
    """Per cell the mean over genes of the squared error, then mean over cells -> regions ->
    samples."""
    scores = cell_mse_scores(y_true, y_pred)
    if samples is None:
        samples = np.zeros(len(scores), dtype=str)
    return hierarchical_mean(scores, samples, regions)


@dataclass
class GenePearson:
    """Gene-wise Pearson of one fold: ``per_gene`` [G] (constant -> 0), masks of genes constant
    in the truth or in the prediction, and the mean over genes."""

    per_gene: np.ndarray
    constant_truth: np.ndarray
    constant_pred: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.per_gene.mean()) if self.per_gene.size else float("nan")

    @property
    def n_constant(self) -> int:
        return int((self.constant_truth | self.constant_pred).sum())


def _column_stats(a: np.ndarray):
    """(mean, constant mask) per column, one chunked pass: a column is constant when its span
    is <= 1e-12 x its largest magnitude (NaN-containing columns are not constant)."""
    n, G = a.shape
    tot, lo, hi = np.zeros(G), np.full(G, np.inf), np.full(G, -np.inf)
    finite = np.ones(G, dtype=bool)
    for sl in _chunks(n):
        c = a[sl].astype(np.float64)
        tot += c.sum(axis=0)
        lo, hi = np.fmin(lo, c.min(axis=0)), np.fmax(hi, c.max(axis=0))
        finite &= np.isfinite(c).all(axis=0)
    with np.errstate(invalid="ignore"):
        const = (hi - lo) <= 1e-12 * np.maximum(np.maximum(np.abs(lo), np.abs(hi)), 1e-300)
    const &= finite
    if n == 0:
        const[:] = True
    with np.errstate(invalid="ignore", divide="ignore"):
        return tot / n, const


def genewise_pearson_detail(y_true, y_pred) -> GenePearson:
    """Per gene Pearson over all cells given (one fold's test cells); two chunked passes
    (means, then centred sums), so a million cells need no [cells, genes] float64 copy."""
    t, p = _check(y_true, y_pred)
    (mt, ct), (mp, cp) = _column_stats(t), _column_stats(p)
    G = t.shape[1]
    num, st, sp = np.zeros(G), np.zeros(G), np.zeros(G)
    for sl in _chunks(t.shape[0]):
        a, b = t[sl].astype(np.float64) - mt, p[sl].astype(np.float64) - mp
        num += np.einsum("ij,ij->j", a, b)
        st += np.einsum("ij,ij->j", a, a)
        sp += np.einsum("ij,ij->j", b, b)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        r = num / np.sqrt(st * sp)
    r[ct | cp | ~np.isfinite(r)] = np.nan
    return GenePearson(np.nan_to_num(np.clip(r, -1.0, 1.0), nan=0.0), ct, cp)


def genewise_pearson(y_true, y_pred) -> float:
    """HEST-Benchmark gene-wise Pearson of one fold: mean over genes of the Pearson correlation
    over all cells (a constant gene counts 0)."""
    return genewise_pearson_detail(y_true, y_pred).mean


@dataclass
class FoldScores:
    """All scores of one model on one fold."""

    cellwise_spearman: float
    genewise_pearson: float
    mse: float
    per_gene: GenePearson
    per_gene_mse: np.ndarray
    per_sample: dict  # sample -> {n_cells, cellwise_spearman, genewise_pearson, mse}

    def metrics(self) -> dict:
        return {"cellwise_spearman": self.cellwise_spearman,
                "genewise_pearson": self.genewise_pearson, "mse": self.mse,
                "n_const_truth_genes": int(self.per_gene.constant_truth.sum()),
                "n_const_pred_genes": int(self.per_gene.constant_pred.sum())}


def score_fold(y_true, y_pred, samples, regions=None) -> FoldScores:
    """Every metric of one fold, plus per-gene and per-sample breakdowns."""
    t, p = _check(y_true, y_pred)
    samples = np.asarray(samples).astype(str)
    cs = cell_spearman_scores(t, p)
    cm = cell_mse_scores(t, p)
    gp = genewise_pearson_detail(t, p)
    sp_s = per_sample_means(cs, samples, regions)
    sp_m = per_sample_means(cm, samples, regions)
    per_sample = {}
    for s in sp_s:
        m = samples == s
        per_sample[s] = {"n_cells": int(m.sum()), "cellwise_spearman": float(sp_s[s]),
                         "genewise_pearson": genewise_pearson_detail(t[m], p[m]).mean,
                         "mse": float(sp_m[s])}
    return FoldScores(
        cellwise_spearman=hierarchical_mean(cs, samples, regions),
        genewise_pearson=gp.mean,
        mse=hierarchical_mean(cm, samples, regions),
        per_gene=gp,
        per_gene_mse=gene_mse(t, p),
        per_sample=per_sample,
    )


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) over folds, ignoring
    NaN."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
