"""Ridge regression with α chosen per gene by grouped CV, exactly, in one pass over the data.

How:

1. Rows are assigned to CV folds by sample (``groups``): leave-one-sample-out when there are at
   most ``cv`` samples, else ``cv`` folds of whole samples balanced by row count (the
   ``GroupKFold`` rule: biggest sample first, into the fold with fewest rows). With no groups or
   a single group, rows are shuffled (``seed``) into ``cv`` folds — a cell-level CV, whose α
   choice is optimistic (spatial neighbours sit on both sides); ``cv_kind_`` records which.
2. One pass over the rows accumulates, per fold, the sufficient statistics
   n, Σx, Σy, XᵀX, XᵀY and Σy² (per gene) of the data shifted by a fixed per-column offset c
   (the first batch's means, the same for every fold, so that centring later does not cancel
   digits). Sums are float64; the two big products are computed per batch by BLAS in
   ``precision``:
   - "float32": the input is float32, and this is what sklearn's ``Ridge`` does with it; each
     fold's eigendecomposition is then float32 too. On well-conditioned data the held-out MSEs
     agree with the float64 path to ~1e-6 of each gene's variance.
   - "float64": exact to float64 round-off (1e-6 relative vs brute force); the accumulation is
     ~2× slower.
   - "auto" (default): float32, redone in float64 when the data are too ill-conditioned for
     float32 at the α that matter (step 5).
   From in-memory arrays (:meth:`fit`) or from batches (:meth:`fit_batches`, e.g. built from
   :func:`tabst.store.iter_batches`; there "auto" means float64, as the batches cannot be read
   twice). With several BLAS threads, the folds are summed side by side, one thread each.
3. For each fold (float64 from here, but for the float32 eigensolver after float32 sums; folds
   side by side on threads), the training statistics are the totals minus the fold's; the
   fold is centred and standardised with *its own* training sums (population std as
   ``StandardScaler``; a constant feature gets scale 1 and contributes nothing), the
   standardised Gram matrix is eigendecomposed once (``C = V Λ Vᵀ``), and for every α the
   held-out sum of squared errors of every gene follows in closed form from the held-out fold's
   statistics: ``SSE = Σ(y−ȳ)² − 2 Σ_i d_i P_i B_i + Σ_ij B_i d_i Q_ij d_j B_j`` with
   ``B = Vᵀ Xᵀy``, ``P = Vᵀ X_valᵀ y_val``, ``Q = Vᵀ X_valᵀ X_val V``, ``d = 1/(λ+α)`` (no
   second pass, no per-α solve). The quadratic term, naively F²·G work per α, is done for all α
   at once by partial fractions, ``d_i d_j = (d_i − d_j)/(λ_j − λ_i)``: one F×F×G product per
   fold; eigenvalue pairs too close for that to be accurate are summed directly
   (:func:`_pf_quad`, :func:`_quad_forms`).
4. α per gene = argmin of the pooled held-out MSE (Σ_folds SSE / Σ_folds n; ties → the smallest
   α). The coefficients come from the all-training statistics, one Cholesky solve per distinct
   chosen α.
5. "auto" precision: float32 sums perturb the standardised Gram matrix by ~eps32 relative, and
   the held-out MSE at α by ~5e-4 · (eps32 · κ(α))² of the gene's variance (measured; the
   float32 eigensolver adds a floor of ~1e-6), with
   κ(α) = (λ_max + α)/(λ_min + α) over each fold's non-constant directions. An α with
   eps32 · κ(α) > ``_F32_KAPPA_TOL`` is unreliable in float32; if any gene's minimum lies at an
   unreliable α, or at the smallest reliable α (its optimum may be below it), everything is
   recomputed from float64 sums (``precision_used_`` records which was used).

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
_F32_KAPPA_TOL = 0.05  # eps32·κ(α) above this: float32 sums too coarse at α (MSE error ≳ 1e-6)


class _NeedFloat64(Exception):
    """Raised by RidgeModel._solve when "auto" precision finds float32 sums too coarse."""


class _Stats:
    """Sufficient statistics of one block of rows (a fold, or a group while streaming).

    Everything is about data shifted by a fixed offset (``shift_x`` [F], ``shift_y`` [G], the
    same for every block of one fit): Σ(x−c), Σ(x−c)(x−c)ᵀ, ... Sums are float64; the two big
    products XᵀX and XᵀY are computed per batch in ``dtype`` (float32 → single-precision BLAS, as
    sklearn does for float32 input; the shift keeps centring from cancelling) and added to the
    float64 totals. Centred statistics, all that is used downstream, do not depend on the shift.
    """

    __slots__ = ("n", "sx", "sy", "xx", "xy", "yy", "shift_x", "shift_y", "dtype")

    def __init__(self, F: int, G: int, shift_x=None, shift_y=None, dtype=np.float64):
        self.n = 0
        self.sx = np.zeros(F)
        self.sy = np.zeros(G)
        self.xx = np.zeros((F, F))  # full symmetric
        self.xy = np.zeros((F, G))
        self.yy = np.zeros(G)
        self.shift_x = np.zeros(F) if shift_x is None else shift_x
        self.shift_y = np.zeros(G) if shift_y is None else shift_y
        self.dtype = dtype

    def add(self, X, Y):
        dt = self.dtype
        Xc = np.subtract(X, self.shift_x.astype(dt), dtype=dt)   # one pass: cast + shift
        Yc = np.subtract(Y, self.shift_y.astype(dt), dtype=dt)
        n = Xc.shape[0]
        self.n += n
        if dt == np.float64:
            self.sx += Xc.sum(axis=0)
            self.sy += Yc.sum(axis=0)
        else:  # column sums by BLAS gemv (float32, like the products), added to float64 totals
            ones = np.ones(n, dtype=dt)
            self.sx += ones @ Xc
            self.sy += ones @ Yc
        self.xx += Xc.T @ Xc          # numpy → BLAS syrk (symmetric result)
        self.xy += Xc.T @ Yc
        self.yy += np.einsum("ij,ij->j", Yc, Yc, dtype=np.float64)

    def _like(self) -> "_Stats":
        out = _Stats.__new__(_Stats)
        out.shift_x, out.shift_y, out.dtype = self.shift_x, self.shift_y, self.dtype
        return out

    def merged(self, other: "_Stats") -> "_Stats":
        out = self._like()
        out.n = self.n + other.n
        out.sx, out.sy = self.sx + other.sx, self.sy + other.sy
        out.xx = self.xx + other.xx
        out.xy, out.yy = self.xy + other.xy, self.yy + other.yy
        return out

    def minus(self, other: "_Stats") -> "_Stats":
        out = self._like()
        out.n = self.n - other.n
        out.sx, out.sy = self.sx - other.sx, self.sy - other.sy
        out.xx = self.xx - other.xx
        out.xy, out.yy = self.xy - other.xy, self.yy - other.yy
        return out


def _shifts(X, Y, dt):
    """Per-column offsets (means of a first batch), exactly representable in ``dt``."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    return (X.mean(axis=0).astype(dt).astype(np.float64),
            Y.mean(axis=0).astype(dt).astype(np.float64))


def _standardised(tr: _Stats):
    """Training fold → (mean_x, scale_x, mean_y, Cs (standardised centred Gram), b = Xsᵀ yc)."""
    n = tr.n
    mx, my = tr.sx / n, tr.sy / n
    XX = tr.xx
    C = XX - n * np.outer(mx, mx)
    var = np.diag(C) / n
    ex2 = np.diag(XX) / n
    # constant in training: variance at round-off level of E[(x−c)²] (products summed in tr.dtype)
    tol = 1e-10 if tr.dtype == np.float64 else 1e-5
    const = var <= tol * np.maximum(ex2, 1e-300)
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
    batch_rows : int, 8192. Rows per BLAS product while accumulating.
    precision : "auto" (default) | "float32" | "float64". Arithmetic of the per-batch XᵀX / XᵀY
        products (sums are float64 either way); "float64" for results exact to float64
        round-off; "auto" = float32 unless the data are too ill-conditioned for it at the α
        that matter (module docstring, step 5).
    codec : "identity" (default) | "pca";  codec_k : 32;  seed : 0 (row folds without groups).

    Attributes
    ----------
    alpha_ : [k] chosen α per output (gene with the identity codec).
    precision_used_ : "float32" or "float64", the arithmetic of the sums actually used.
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
    DEFAULTS = {"alphas": None, "cv": 8, "batch_rows": 8192, "precision": "auto"}
    RULES = {"alphas": {"kind": "floats", "low": 0, "low_open": True, "none_ok": True},
             "cv": {"kind": "int", "low": 2},
             "batch_rows": {"kind": "int", "low": 1},
             "precision": {"kind": "word", "choices": ("auto", "float32", "float64")}}

    def cost_units(self, n_rows, n_features, n_genes) -> float:
        """Sufficient statistics rows x F x (F + G), then one eigendecomposition per CV fold."""
        F = max(1, n_features)
        return float(n_rows) * F * (F + self.n_outputs(n_genes)) + (self.params["cv"] + 1) * F ** 3

    # --- folds -------------------------------------------------------------------------------
    def _alphas(self) -> np.ndarray:
        a = self.params["alphas"]
        return np.sort(np.asarray(DEFAULT_ALPHAS if a is None else a, dtype=np.float64).ravel())

    def _group_folds(self, uniq_groups, sizes):
        """Samples → fold index (LOSO when few samples, else balanced GroupKFold rule)."""
        k = int(self.params["cv"])  # >= 2 (RULES)
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
        br = int(self.params["batch_rows"])
        order = np.argsort(fold, kind="stable")
        bounds = np.searchsorted(fold[order], np.arange(nf + 1))

        def fold_stats(f, dt, sx, sy):
            st = _Stats(F, G, sx, sy, dt)
            idx = order[bounds[f]:bounds[f + 1]]
            for s in range(0, len(idx), br):
                j = idx[s:s + br]
                if j[-1] - j[0] == len(j) - 1:  # contiguous rows (data sorted by sample): a view
                    j = slice(int(j[0]), int(j[-1]) + 1)
                st.add(X[j], Z[j])
            return st

        def solve(dt):
            sx, sy = _shifts(X[:br], Z[:br], dt)
            self._solve(_side_by_side(lambda f: fold_stats(f, dt, sx, sy), range(nf)))

        try:
            solve(np.float64 if self.params["precision"] == "float64" else np.float32)
            return
        except _NeedFloat64:  # "auto": float32 sums too coarse for this data → exact sums
            pass              # (redone below, once the float32 statistics are released)
        solve(np.float64)

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
                if not per_group:  # "auto" → float64: the batches cannot be read a second time
                    dt = np.float32 if self.params["precision"] == "float32" else np.float64
                    sx, sy = _shifts(X, Y, dt)
                for key in np.unique(g):
                    m = g == key
                    if key not in per_group:
                        per_group[key] = _Stats(F, G, sx, sy, dt)
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
        for val in stats:
            if total.n - val.n < 2 or val.n < 1:
                raise TabstError("ridge: a CV fold has no training or no held-out rows.")

        def fold_job(f):
            return _fold_sse(total.minus(stats[f]), stats[f], alphas)

        res = _side_by_side(fold_job, range(nf))
        sses = [r[0] for r in res]
        pooled = np.sum(sses, axis=0) / sum(val.n for val in stats)
        if (total.dtype == np.float32 and self.params["precision"] == "auto"
                and _float32_too_coarse(alphas, pooled, [(hi, lo) for _, hi, lo in res])):
            raise _NeedFloat64()
        self.precision_used_ = "float32" if total.dtype == np.float32 else "float64"
        fold_mse = np.stack([sse / val.n for sse, val in zip(sses, stats)])
        self.alphas_ = alphas
        self.cv_fold_mse_ = fold_mse
        self.cv_mse_ = pooled
        best = np.argmin(self.cv_mse_, axis=0)  # first minimum → smallest α on ties
        self.alpha_ = alphas[best]
        # final refit on all training rows: one Cholesky solve per distinct chosen α
        # ((C + αI) is positive definite for α > 0), cheaper than another eigendecomposition;
        # the factorisations side by side (numpy's releases the GIL), the solves after
        from scipy.linalg import cho_solve

        mx, s, my, Cs, b = _standardised(total)
        self.coef_ = np.empty_like(b)
        eye = np.eye(Cs.shape[0])
        chosen = np.unique(self.alpha_)
        factors = _side_by_side(lambda a: np.linalg.cholesky(Cs + a * eye), chosen)
        for a, L in zip(chosen, factors):
            cols = self.alpha_ == a
            self.coef_[:, cols] = cho_solve((L, True), b[:, cols], check_finite=False)
        self.mean_x_, self.scale_x_ = mx + total.shift_x, s
        self.mean_y_ = my + total.shift_y

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
        return {"cv_kind": self.cv_kind_, "cv_fold_groups": self.cv_fold_groups_,
                "precision_used": self.precision_used_}

    def _set_state(self, arrays, meta):
        for k, v in arrays.items():
            setattr(self, k + "_", v)
        self.cv_kind_ = meta["cv_kind"]
        self.cv_fold_groups_ = meta["cv_fold_groups"]
        self.precision_used_ = meta.get("precision_used", "float32")


def _float32_too_coarse(alphas, pooled, spectra) -> bool:
    """Whether float32 sums may have moved some gene's choice of α (module docstring, step 5).

    ``spectra``: (λ_max, λ_min over non-constant directions) of each fold. κ(α) falls with α,
    so the reliable α (eps32 · κ ≤ tol) are the largest ones, a suffix of the sorted grid."""
    kappa = np.max([(hi + alphas) / (lo + alphas) for hi, lo in spectra], axis=0)
    ok = np.finfo(np.float32).eps * kappa <= _F32_KAPPA_TOL
    if ok.all():
        return False
    if not ok.any():
        return True
    first_ok = int(np.argmax(ok))
    best_all = np.argmin(pooled, axis=0)
    best_ok = first_ok + np.argmin(pooled[first_ok:], axis=0)
    # a minimum at an unreliable α, or at the reliable edge (the optimum may lie below it)
    return bool(np.any(~ok[best_all]) or np.any(best_ok == first_ok))


def _side_by_side(fn, items) -> list:
    """``[fn(i) for i in items]``, run on as many threads as BLAS has, one BLAS thread each.

    The per-fold jobs (XᵀX products of a few thousand rows, a 1024² eigensolver) scale poorly
    across BLAS threads but release the GIL, so whole jobs side by side keep every core busy
    (measured on 2 cores: fold sums 1.0 s vs 1.4 s, fold solves ~2× faster than serial).
    """
    items = list(items)
    workers = min(_blas_threads(), len(items))
    if workers <= 1:
        return [fn(i) for i in items]
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), ThreadPoolExecutor(workers) as ex:
        return list(ex.map(fn, items))


def _blas_threads() -> int:
    """Threads the BLAS library is set to use now (1 when unknown)."""
    try:
        from threadpoolctl import threadpool_info

        n = [i.get("num_threads", 1) for i in threadpool_info() if i.get("user_api") == "blas"]
        return max(1, int(max(n))) if n else 1
    except Exception:  # pragma: no cover - threadpoolctl missing or unreadable
        return 1


def _eigh(C, dtype=np.float64):
    """Eigendecomposition of a symmetric PSD matrix (LAPACK syevd in ``dtype``: float64 or
    float32, returned as float64); tiny negative λ → 0.

    ``numpy.linalg.eigh`` (also syevd) rather than ``scipy.linalg.eigh``: numpy's releases the
    GIL inside LAPACK, scipy's f2py wrapper holds it, which serialises the folds solved side by
    side on threads (measured: 8 eighs of 1024² on 2 threads, 1.23 s vs 2.25 s with scipy).
    float32 (after float32 sums): ``tabst._lapack.eigh_f32``, ssyevd with the GIL released
    (numpy computes float32 in float64): 0.73 s for the same 8.
    """
    if dtype == np.float64:
        lam, V = np.linalg.eigh(C)
        return np.clip(lam, 0.0, None), V
    from .._lapack import eigh_f32  # numpy would compute float32 in float64

    lam, V = eigh_f32(C)
    return np.clip(lam.astype(np.float64), 0.0, None), V.astype(np.float64)


_PF_TOL = 1e-7  # partial fractions only for eigenvalue pairs with |λi−λj| > tol·(λ + α_max)


def _dense_quad(Q, D, Bt):
    """``quad[a, g] = w_agᵀ Q w_ag`` with ``w_ag = D[a] ⊙ Bt[:, g]``, for PSD ``Q`` (direct).

    Pivoted Cholesky ``P Q Pᵀ = L Lᵀ`` (LAPACK ``dpstrf``; pivots below F·eps·max diag are
    dropped, an error of that order) turns each form into ``‖Lᵀ P w‖²``, evaluated for all α and
    genes at once with one triangular multiply (``dtrmm``): F²·G flops per α.
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


def _band(lam: np.ndarray, alpha_max: float) -> int:
    """Largest index distance of an eigenvalue pair too close for partial fractions."""
    F = lam.shape[0]
    hi = (lam + _PF_TOL * alpha_max) / (1.0 - _PF_TOL)
    j = np.searchsorted(lam, hi, side="right") - 1
    return int(max(0, np.max(j - np.arange(F))))


def _pf_quad(Q, lam, D, Bt, bw):
    """Same forms as :func:`_dense_quad`, for all α at once, by partial fractions.

    ``quad_g(α) = Σ_ij H_ij d_i d_j`` with ``H = diag(B_g) Q diag(B_g)``, ``d_i = 1/(λ_i+α)``.
    For ``i ≠ j``, ``d_i d_j = (d_i − d_j)/(λ_j − λ_i)``, so the far pairs sum to
    ``2 Σ_i d_i B_ig (K B_g)_i`` with ``K_ij = Q_ij/(λ_j − λ_i)``: one F×F×G product, whatever
    the number of α. A pair's rounding error is amplified by at most ``(λ_j+α)/|λ_j−λ_i|``, so
    pairs with ``|λ_j−λ_i| ≤ tol·(λ_j+α_max)`` (eigenvalues sorted: index distance ≤ ``bw``)
    are summed directly instead (amplification ≤ 1/tol = 1e7, i.e. ~1e-9 relative).
    """
    F = lam.shape[0]
    quad = (D * D) @ (Bt * Bt * np.diag(Q)[:, None])                  # i = j
    for o in range(1, bw + 1):                                        # near pairs, |i−j| = o
        E = Bt[:-o] * (Bt[o:] * np.diagonal(Q, o)[:, None])
        quad += 2.0 * ((D[:, :-o] * D[:, o:]) @ E)
    if bw < F - 1:                                                    # far pairs
        delta = lam[None, :] - lam[:, None]
        idx = np.arange(F)
        far = np.abs(idx[None, :] - idx[:, None]) > bw
        K = np.divide(Q, delta, out=np.zeros_like(Q), where=far)
        quad += 2.0 * (D @ (Bt * (K @ Bt)))
    return quad


def _quad_forms(Q, lam, alphas, Bt):
    """``quad[a, g] = w_agᵀ Q w_ag``, ``w_ag = Bt[:, g] / (λ + α_a)``, for PSD ``Q`` (exact).

    The smallest α go through :func:`_pf_quad` (cost independent of their number), the rest,
    whose size would widen the band of near eigenvalue pairs, through :func:`_dense_quad`; the
    split minimises a flop estimate.
    """
    F, G = Bt.shape
    A = alphas.shape[0]
    D = 1.0 / (lam[None, :] + alphas[:, None])                        # alphas ascending
    best = (A * F * F * G, 0, 0)                                      # (cost, k, bw): all dense
    for k in range(1, A + 1):
        bw = _band(lam, alphas[k - 1])
        cost = 2 * F * F * G * (bw < F - 1) + bw * (2 * k + 24) * F * G + (A - k) * F * F * G
        if cost < best[0]:
            best = (cost, k, bw)
    _, k, bw = best
    quad = np.empty((A, G))
    if k:
        quad[:k] = _pf_quad(Q, lam, D[:k], Bt, bw)
    if k < A:
        quad[k:] = _dense_quad(Q, D[k:], Bt)
    return quad


def _fold_sse(tr: _Stats, val: _Stats, alphas: np.ndarray):
    """Held-out SSE [n_alphas, G] of ridge fitted on ``tr``, evaluated on ``val`` (exact), with
    the largest and the smallest eigenvalue over the non-constant directions (conditioning)."""
    mx, s, my, Cs, b = _standardised(tr)
    # with float32 sums, Cs is only good to ~eps32 relative: a float32 eigensolver (1.5× faster)
    # adds an error of the same kind and size (a backward perturbation of Cs), which the "auto"
    # conditioning check bounds together with the sums' own
    lam, V = _eigh(Cs, tr.dtype)
    n_const = int(np.count_nonzero(~Cs.any(axis=0)))   # constant features: exact zero rows
    lam_lo = float(lam[n_const]) if n_const < lam.shape[0] else 0.0
    Bt = V.T @ b                                          # [F, G]
    nv = val.n
    # held-out statistics, centred with the TRAINING means and scaled with the training scale:
    # M = S⁻¹ [Σ_val (x − x̄_tr)(x − x̄_tr)ᵀ] S⁻¹, taken straight into the eigenbasis as
    # Q = Vᵀ M V = Vsᵀ XXᵥ Vs − (p uᵀ + u pᵀ), Vs = S⁻¹V, p = Vsᵀ x̄_tr, u = Vsᵀ (Σᵥx − nᵥ x̄_tr / 2)
    a = val.yy - 2.0 * my * val.sy + nv * my * my         # Σ (y − ȳ_tr)²  [G]
    xy = (val.xy - np.outer(mx, val.sy) - np.outer(val.sx, my) + nv * np.outer(mx, my)) / s[:, None]
    Vs = V / s[:, None]
    p, u = Vs.T @ mx, Vs.T @ (val.sx - 0.5 * nv * mx)
    Q = Vs.T @ (val.xx @ Vs)                             # [F, F], PSD
    Q -= np.outer(p, u)      # symmetric up to the gemms' round-off, which is all that is used
    Q -= np.outer(u, p)
    P = V.T @ xy                                          # [F, G]
    D = 1.0 / (lam[None, :] + alphas[:, None])            # [A, F]
    cross = D @ (P * Bt)                                  # [A, G]
    quad = _quad_forms(Q, lam, alphas, Bt)
    return a[None, :] - 2.0 * cross + quad, float(lam[-1]), lam_lo
