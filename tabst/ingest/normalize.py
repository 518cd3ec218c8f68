"""Expression normalisation of spot counts: the choices, their formulas and the ``transform`` attr.

``total`` is a spot's library size over *all* genes of its input, before gene selection (it is
stored as ``/cells/total_counts``); raw counts of the selected genes are kept in
``/expression/counts``, so a store can be re-normalised without re-ingesting.

- ``cp10k`` (default of ``ingest st / visium / hest``): X = log1p(count / total x 10,000),
  ``transform = "log1p(count/total*10000)"``: scanpy's ``normalize_total(target_sum=1e4)`` +
  ``log1p``;
- ``log1p``: X = log1p(count), ``transform = "log1p(count)"``: HEST-Benchmark's targets (its
  ``hest-benchmark`` preset checks for exactly that string);
- ``log1p-cpt``: X = log1p(count / total x SCALE), ``--scale`` default 100, ``transform =
  "log1p(count/total*100)"`` (SCALE written out): Crunch 1's single-cell tables;
- ``none``: X = count, ``transform = "count"``.

Why cp10k for spots: a spot holds thousands of counts (legacy ST / Visium: ~10k), so Crunch's
scale 100 (made for ~100-count cells) leaves 99.9 % of the values <= 0.35 and most genes'
non-zeros at log1p(0.01) ~ 0.01; x 10,000 keeps a typical spot's values near log1p(count).
``log1p-cpt --scale 10000`` computes the same as ``cp10k`` and records the same ``transform``.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from ..errors import TabstError

NORMALIZE_CHOICES = ("cp10k", "log1p", "log1p-cpt", "none")
SPOT_DEFAULT = "cp10k"
CPT_DEFAULT_SCALE = 100.0
CP10K_SCALE = 1e4
CONVENTIONS = {
    "cp10k": "counts per 10k + log1p, as scanpy's normalize_total(target_sum=1e4) + log1p",
    "log1p": "log1p of raw counts, as HEST-Benchmark",
    "log1p-cpt": "counts per SCALE + log1p, as Crunch 1's single-cell tables (SCALE 100)",
    "none": "raw counts",
}


def check_normalize(normalize: str) -> str:
    """Refuse an unknown ``--normalize`` choice (a :class:`TabstError` naming the choices)."""
    if normalize not in NORMALIZE_CHOICES:
        raise TabstError(f"--normalize must be one of {', '.join(NORMALIZE_CHOICES)}, "
                         f"not '{normalize}'")
    return normalize


def resolve_scale(normalize: str, scale: float | None = None) -> float | None:
    """The multiplier of the choice: ``scale`` (default 100) for ``log1p-cpt``, 10,000 for
    ``cp10k``, None for ``log1p``/``none``. A ``scale`` the choice does not use is refused, so a
    ``--scale`` is never silently ignored."""
    check_normalize(normalize)
    if normalize == "log1p-cpt":
        s = CPT_DEFAULT_SCALE if scale is None else float(scale)
        if not (s > 0 and math.isfinite(s)):
            raise TabstError(f"--scale must be a positive number, got {scale}")
        return s
    if normalize == "cp10k":
        if scale is not None and float(scale) != CP10K_SCALE:
            raise TabstError(f"--scale {scale:g} does not apply to --normalize cp10k (always "
                             "x 10,000); use --normalize log1p-cpt --scale S for another scale")
        return CP10K_SCALE
    if scale is not None:
        raise TabstError(f"--scale applies to --normalize log1p-cpt only, not '{normalize}'; "
                         "drop --scale")
    return None


def transform_name(normalize: str, scale: float | None = None) -> str:
    """The ``transform`` attr of ``/expression/X``: exactly what was computed from the counts."""
    s = resolve_scale(normalize, scale)
    if normalize in ("log1p-cpt", "cp10k"):
        return f"log1p(count/total*{s:g})"
    return "log1p(count)" if normalize == "log1p" else "count"


def describe_normalization(normalize: str, scale: float | None = None) -> str:
    """One line for the ingest summary, e.g. ``cp10k: X = log1p(count/total*10000) (counts per
    10k + log1p, as scanpy's ...)``."""
    return f"{normalize}: X = {transform_name(normalize, scale)} ({CONVENTIONS[normalize]})"


def normalize_counts(counts, totals, normalize: str = SPOT_DEFAULT,
                     scale: float | None = None) -> np.ndarray:
    """Normalise a block of raw counts [n, g] (dense or sparse) to a dense float32 array.

    ``totals`` [n] are the spots' library sizes over all genes of the input (not just the
    selected ones). A spot with total 0 gets a row of zeros under ``cp10k``/``log1p-cpt``. Sparse
    input is transformed on its non-zeros (every transform maps 0 to 0) and densified once.
    """
    s = resolve_scale(normalize, scale)
    if normalize == "none":
        X = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
        return X.astype(np.float32, copy=False)
    M = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    if s is not None:
        t = np.asarray(totals, dtype=np.float64).ravel()
        f = np.divide(s, t, out=np.zeros_like(t), where=t > 0)
        M = sp.csr_matrix(sp.diags(f) @ M)
    M.data = np.log1p(M.data)
    return M.astype(np.float32).toarray()
