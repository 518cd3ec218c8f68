"""Ridge regression with α chosen per gene by grouped CV, exactly, in one pass over the data.

How (all float64):

1. Rows are assigned to CV folds by sample (``groups``): leave-one-sample-out when there are at
   most ``cv`` samples, else ``cv`` folds of whole samples balanced by row count (the
   ``GroupKFold`` rule: biggest sample first, into the fold with fewest rows). With no groups or
   a single group, rows are shuffled (``seed``) into ``cv`` folds — a cell-level CV, whose α
   choice is optimistic (spatial neighbours sit on both sides); ``cv_kind_`` records which.
2. One pass over the rows accumulates, per fold, the sufficient statistics
   n, Σx, Σy, XᵀX (``dsyrk``), XᵀY and Σy² (per gene). From in-memory arrays (:meth:`fit`) or
   from batches (:meth:`fit_batches`, e.g. built from :func:`tabst.store.iter_batches`).
3. For each fold, the training statistics are the totals minus the fold's; the fold is centred
   and standardised with *its own* training sums (population std as ``StandardScaler``; a
   constant feature gets scale 1 and contributes nothing), the standardised Gram matrix is
   eigendecomposed once (``C = V Λ Vᵀ``), and for every α the held-out sum of squared errors of
   every gene follows in closed form from the held-out fold's statistics:
   ``SSE = Σ(y−ȳ)² − 2 Σ_i d_i P_i B_i + Wᵀ M W`` with ``B = Vᵀ Xᵀy``, ``d = 1/(λ+α)``,
   ``W = V diag(d) B`` (no second pass, no per-α solve).
4. α per gene = argmin of the pooled held-out MSE (Σ_folds SSE / Σ_folds n; ties → the smallest
   α). A final eigendecomposition of the all-training statistics gives the coefficients with
   each gene's α.

The objective matches ``sklearn.linear_model.Ridge(alpha, fit_intercept=True)`` on
``StandardScaler``-transformed X: ``‖y − b − X_s w‖² + α‖w‖²`` (sums, not means, so α scales
with the number of rows).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..errors import TabstError
from .base import TabstModel, _PeakRSS

DEFAULT_ALPHAS = tuple(np.logspace(-1, 7, 13).tolist())


class _Stats:
    """Sufficient statistics of one block of rows (a fold, or a group while streaming)."""

    __slots__ = ("n", "sx", "sy", "xx", "xy", "yy")

    def __init__(self, F: int, G: int):
        self.n = 0
        self.sx = np.zeros(F)
        self.sy = np.zeros(G)
        self.xx = np.zeros((F, F), order="F")  # upper triangle while accumulating
        self.xy = np.zeros((F, G))
        self.yy = np.zeros(G)

    def add(self, X, Y):
        from scipy.linalg.blas import dsyrk

        Xd = np.ascontiguousarray(X, dtype=np.float64)
        Yd = np.asarray(Y, dtype=np.float64)
        self.n += Xd.shape[0]
        self.sx += Xd.sum(axis=0)
        self.sy += Yd.sum(axis=0)
        # Xd.T is Fortran-ordered [F, n]: dsyrk(a) = a aᵀ = XᵀX, upper triangle, in place
        self.xx = dsyrk(1.0, Xd.T, beta=1.0, c=self.xx, trans=0, lower=0, overwrite_c=1)
        self.xy += Xd.T @ Yd
        self.yy += np.einsum("ij,ij->j", Yd, Yd)

    def merged(self, other: "_Stats") -> "_Stats":
        out = _Stats(0, 0)
        out.n = self.n + other.n
        out.sx, out.sy = self.sx + other.sx, self.sy + other.sy
        out.xx = np.asfortranarray(self.xx + other.xx)
        out.xy, out.yy = self.xy + other.xy, self.yy + other.yy
        return out

    def minus(self, other: "_Stats") -> "_Stats":
        out = _Stats(0, 0)
        out.n = self.n - other.n
        out.sx, out.sy = self.sx - other.sx, self.sy - other.sy
        out.xx = self.xx - other.xx
        out.xy, out.yy = self.xy - other.xy, self.yy - other.yy
        return out

    def full_xx(self) -> np.ndarray:
        """Symmetric XᵀX from the accumulated upper triangle."""
        U = np.triu(self.xx)
        return U + np.triu(U, 1).T


def _standardised(tr: _Stats):
    """Training fold → (mean_x, scale_x, mean_y, Cs (standardised centred Gram), b = Xsᵀ yc)."""
    n = tr.n
    mx, my = tr.sx / n, tr.sy / n
    XX = tr.full_xx()
    C = XX - n * np.outer(mx, mx)
    var = np.diag(C) / n
    ex2 = np.diag(XX) / n
    const = var <= 1e-10 * np.maximum(ex2, 1e-300)
    s = np.sqrt(np.where(const, 1.0, var))
    b = (tr.xy - n * np.outer(mx, my)) / s[:, None]
    Cs = C / np.outer(s, s)
    # a constant feature is exactly 0 after centring; clear round-off so it carries no weight
    Cs[const, :] = 0.0
    Cs[:, const] = 0.0
    b[const, :] = 0.0
    return mx, s, my, Cs, b


class RidgeModel(TabstModel):
    """Ridge with α per gene from grouped CV (exact, one pass; see the module docstring).

    Parameters (``DEFAULTS``)
    -------------------------
    alphas : list of float or None (default None → 13 values ``logspace(-1, 7)``, two per
        three decades; α is on the sum scale, so it grows with the rows). Any number ≥ 1.
    cv : int, 8. Maximum number of CV folds (folds = samples when there are ≤ cv samples).
    batch_rows : int, 8192. Rows converted to float64 at a time while accumulating.
    codec : "identity" (default) | "pca";  codec_k : 32;  seed : 0 (row folds without groups).

    Attributes
    ----------
    alpha_ : [k] chosen α per output (gene with the identity codec).
    alphas_ : [n_alphas] the grid.
    cv_mse_ : [n_alphas, k] pooled held-out MSE per α and output.
    cv_fold_mse_ : [n_folds, n_alphas, k] held-out MSE of each fold.
    cv_fold_groups_ : list of lists, the samples of each fold; ``cv_kind_`` "grouped" or "rows".
    coef_ : [F, k] coefficients on standardised features; ``mean_x_``, ``scale_x_``, ``mean_y_``.

    ``explain``: exact linear SHAP with the training mean as background:
    ``value[i, f, g] = coef_[f, g] · (x_if − mean_x_f) / scale_x_f``, base = ``mean_y_``
    (decoded through the codec if any). Imputed values are attributed to their feature.
    """

    name = "ridge"
    DEFAULTS = {"alphas": None, "cv": 8, "batch_rows": 8192}

    # --- folds -------------------------------------------------------------------------------
    def _alphas(self) -> np.ndarray:
        a = self.params["alphas"]
        a = np.asarray(DEFAULT_ALPHAS if a is None else a, dtype=np.float64).ravel()
        if a.size < 1 or not np.all(a > 0):
            raise TabstError("ridge: alphas must be a non-empty list of positive numbers.")
        return np.sort(a)

    def _group_folds(self, uniq_groups, sizes):
        """Samples → fold index (LOSO when few samples, else balanced GroupKFold rule)."""
        k = int(self.params["cv"])
        if k < 2:
            raise TabstError("ridge: cv must be >= 2.")
        if len(uniq_groups) <= k:
            return {g: i for i, g in enumerate(uniq_groups)}
        order = np.argsort(-np.asarray(sizes), kind="stable")
        load = np.zeros(k, dtype=np.int64)
        out = {}
        for i in order:
            f = int(np.argmin(load))
            out[uniq_groups[i]] = f
            load[f] += sizes[i]
        return out

    def _row_folds(self, n):
        k = int(min(self.params["cv"], n))
        if k < 2:
            raise TabstError("ridge: need at least 2 rows for cross-validation.")
        perm = np.random.default_rng(self.params["seed"]).permutation(n)
        fold = np.empty(n, dtype=np.int64)
        fold[perm] = np.arange(n) % k
        return fold

    # --- fitting -----------------------------------------------------------------------------
    def _fit(self, X, Z, groups):
        n, F = X.shape
        G = Z.shape[1]
        uniq = np.unique(groups) if groups is not None else np.array([])
        if len(uniq) >= 2:
            sizes = [int(np.sum(groups == g)) for g in uniq]
            g2f = self._group_folds(list(uniq), sizes)
            fold = np.asarray([g2f[g] for g in groups])
            self.cv_kind_ = "grouped"
            nf = max(g2f.values()) + 1
            self.cv_fold_groups_ = [[str(g) for g in uniq if g2f[g] == f] for f in range(nf)]
        else:
            fold = self._row_folds(n)
            self.cv_kind_ = "rows"
            nf = int(fold.max()) + 1
            self.cv_fold_groups_ = [[f"rows fold {f}"] for f in range(nf)]
        stats = [_Stats(F, G) for _ in range(nf)]
        br = int(self.params["batch_rows"])
        order = np.argsort(fold, kind="stable")
        bounds = np.searchsorted(fold[order], np.arange(nf + 1))
        for f in range(nf):
            idx = order[bounds[f]:bounds[f + 1]]
            for s in range(0, len(idx), br):
                j = idx[s:s + br]
                stats[f].add(X[j], Z[j])
        self._solve(stats)

    def fit_batches(self, batches: Iterable, *, feature_names=None, feature_groups=None,
                    target_names=None):
        """Fit out-of-core from an iterable of ``(X, Y, groups)`` batches (one pass).

        Statistics are kept per sample (memory ≈ n_samples · (F² + F·G) · 8 bytes) and merged
        into folds at the end, with the same fold rule as :meth:`fit`. Only the identity codec
        is supported here, and X must hold no NaN (impute before streaming). Example::

            for b in iter_batches(store, ["embeddings/e", "expression/X"], 8192, rows=train):
                yield b["embeddings/e"], b["expression/X"], sample[b["rows"]]
        """
        import time

        from ..codec import IdentityCodec

        if self.params["codec"] not in (None, "identity"):
            raise TabstError("ridge.fit_batches supports only the identity codec; use fit(X, Y).")
        per_group: dict = {}
        F = G = None
        t0 = time.perf_counter()
        with _PeakRSS() as mem:
            for X, Y, g in batches:
                X = np.asarray(X, dtype=np.float32)
                Y = np.asarray(Y, dtype=np.float32)
                if F is None:
                    F, G = X.shape[1], Y.shape[1]
                if not np.isfinite(X).all():
                    raise TabstError("ridge.fit_batches: X holds NaN/inf; impute before streaming "
                                     "or use fit(X, Y), which imputes medians in-fold.")
                if not np.isfinite(Y).all():
                    raise TabstError("ridge.fit_batches: Y holds NaN/inf; stream only rows with "
                                     "expression (tabst.dataset.rows_with_expression).")
                g = np.asarray(g) if g is not None else np.zeros(X.shape[0], dtype=object)
                for key in np.unique(g):
                    m = g == key
                    if key not in per_group:
                        per_group[key] = _Stats(F, G)
                    per_group[key].add(X[m], Y[m])
            if F is None:
                raise TabstError("ridge.fit_batches: no rows.")
            keys = sorted(per_group, key=str)
            if len(keys) >= 2:
                g2f = self._group_folds(keys, [per_group[k].n for k in keys])
                nf = max(g2f.values()) + 1
                stats = [None] * nf
                for k in keys:
                    f = g2f[k]
                    stats[f] = per_group[k] if stats[f] is None else stats[f].merged(per_group[k])
                self.cv_kind_ = "grouped"
                self.cv_fold_groups_ = [[str(k) for k in keys if g2f[k] == f] for f in range(nf)]
            else:
                raise TabstError("ridge.fit_batches needs at least 2 samples (groups) for the "
                                 "grouped α search; with one sample use fit(X, Y) (row folds).")
            self.feature_names_ = list(feature_names or [f"f{i}" for i in range(F)])
            self.feature_groups_ = list(feature_groups or ["feature"] * F)
            self.target_names_ = list(target_names or [f"out{i}" for i in range(G)])
            self.n_features_in_ = F
            self.impute_values_ = None
            self.codec_ = IdentityCodec()
            self.codec_.n_targets_ = self.codec_.k_ = G
            self._solve(stats)
        self.fit_seconds_ = time.perf_counter() - t0
        self.peak_mem_mb_ = float(mem.peak_mb)
        return self

    def _solve(self, stats: list):
        alphas = self._alphas()
        total = stats[0]
        for s in stats[1:]:
            total = total.merged(s)
        nf = len(stats)
        G = total.sy.shape[0]
        fold_mse = np.zeros((nf, len(alphas), G))
        sse_sum = np.zeros((len(alphas), G))
        n_val_sum = 0
        for f, val in enumerate(stats):
            tr = total.minus(val)
            if tr.n < 2 or val.n < 1:
                raise TabstError("ridge: a CV fold has no training or no held-out rows.")
            sse = _fold_sse(tr, val, alphas)
            fold_mse[f] = sse / val.n
            sse_sum += sse
            n_val_sum += val.n
        self.alphas_ = alphas
        self.cv_fold_mse_ = fold_mse
        self.cv_mse_ = sse_sum / n_val_sum
        best = np.argmin(self.cv_mse_, axis=0)  # first minimum → smallest α on ties
        self.alpha_ = alphas[best]
        mx, s, my, Cs, b = _standardised(total)
        lam, V = _eigh(Cs)
        Bt = V.T @ b
        self.coef_ = V @ (Bt / (lam[:, None] + self.alpha_[None, :]))
        self.mean_x_, self.scale_x_, self.mean_y_ = mx, s, my

    # --- prediction / explanation ---------------------------------------------------------------
    def _predict(self, X):
        Xs = (X.astype(np.float64) - self.mean_x_) / self.scale_x_
        return Xs @ self.coef_ + self.mean_y_

    def _explain(self, X):
        Xs = (X.astype(np.float64) - self.mean_x_) / self.scale_x_
        values = Xs[:, :, None] * self.coef_[None, :, :]
        return values, self.mean_y_, "exact linear SHAP (background: training mean)"

    def _state(self):
        return {k: getattr(self, k + "_") for k in
                ("alpha", "alphas", "cv_mse", "cv_fold_mse", "coef", "mean_x", "scale_x", "mean_y")}

    def _meta(self):
        return {"cv_kind": self.cv_kind_, "cv_fold_groups": self.cv_fold_groups_}

    def _set_state(self, arrays, meta):
        for k, v in arrays.items():
            setattr(self, k + "_", v)
        self.cv_kind_ = meta["cv_kind"]
        self.cv_fold_groups_ = meta["cv_fold_groups"]


def _eigh(C):
    """Eigendecomposition of a symmetric PSD matrix (LAPACK syevd); tiny negative λ → 0."""
    from scipy.linalg import eigh

    lam, V = eigh(C, driver="evd", check_finite=False)
    return np.clip(lam, 0.0, None), V


def _quad_forms(Q, D, Bt):
    """``quad[a, g] = w_agᵀ Q w_ag`` with ``w_ag = D[a] ⊙ Bt[:, g]``, for PSD ``Q``.

    Pivoted Cholesky ``P Q Pᵀ = L Lᵀ`` (LAPACK ``dpstrf``; pivots below F·eps·max diag are
    dropped, an error of that order) turns each form into ``‖Lᵀ P w‖²``, evaluated for all α and
    genes at once with one triangular multiply (``dtrmm``: half the flops of a dense product).
    """
    from scipy.linalg.blas import dtrmm
    from scipy.linalg.lapack import dpstrf

    A, F = D.shape
    G = Bt.shape[1]
    c, piv, rank, info = dpstrf(Q, lower=1, tol=-1.0)
    if info < 0:  # pragma: no cover - LAPACK argument error
        raise RuntimeError(f"dpstrf failed (info={info})")
    p = piv - 1
    L = np.tril(c)
    L[:, rank:] = 0.0  # the unfactored trailing block (below tolerance) is dropped
    L = np.asfortranarray(L)
    Dp, Bp = D[:, p], Bt[p, :]
    quad = np.empty((A, G))
    step = max(1, int(1e8 // max(1, F * G * 8)))          # α per chunk: bound the temporaries
    for a0 in range(0, A, step):
        k = len(Dp[a0:a0 + step])
        # rows (a, g), columns F, C-ordered → its transpose is the Fortran [F, k·G] BLAS wants
        Wc = (Dp[a0:a0 + step, None, :] * Bp.T[None, :, :]).reshape(k * G, F)
        R = dtrmm(1.0, L, Wc.T, side=0, lower=1, trans_a=1, overwrite_b=1)
        quad[a0:a0 + step] = np.einsum("fj,fj->j", R, R).reshape(k, G)
    return quad


def _fold_sse(tr: _Stats, val: _Stats, alphas: np.ndarray) -> np.ndarray:
    """Held-out SSE [n_alphas, G] of ridge fitted on ``tr``, evaluated on ``val`` (exact)."""
    mx, s, my, Cs, b = _standardised(tr)
    lam, V = _eigh(Cs)
    Bt = V.T @ b                                          # [F, G]
    nv = val.n
    # held-out statistics, centred with the TRAINING means and scaled with the training scale
    a = val.yy - 2.0 * my * val.sy + nv * my * my         # Σ (y − ȳ_tr)²  [G]
    xy = (val.xy - np.outer(mx, val.sy) - np.outer(val.sx, my) + nv * np.outer(mx, my)) / s[:, None]
    M = (val.full_xx() - np.outer(mx, val.sx) - np.outer(val.sx, mx) + nv * np.outer(mx, mx))
    M /= np.outer(s, s)
    P = V.T @ xy                                          # [F, G]
    Q = V.T @ M @ V                                       # [F, F], PSD
    D = 1.0 / (lam[None, :] + alphas[:, None])            # [A, F]
    cross = D @ (P * Bt)                                  # [A, G]
    quad = _quad_forms(Q, D, Bt)
    return a[None, :] - 2.0 * cross + quad
