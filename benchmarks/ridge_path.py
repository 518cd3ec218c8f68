"""Ridge: one sklearn fixed-α fit vs tabst's per-gene α over a grid × sample-folds.

    .venv/bin/python benchmarks/ridge_path.py [--rows 60000 --features 1024 --targets 460
                                               --samples 8 --threads 0 --repeat 3]

Data: float32 X [rows, features] (correlated, like embedding channels), Y [rows, targets] from a
low-rank linear map with gene-specific signal-to-noise (so genes prefer different α), rows split
into ``samples`` equal samples. Timed: ``sklearn.linear_model.Ridge(alpha=1.0).fit(X, Y)`` (solver
auto → Cholesky, float32 BLAS on float32 input) and ``tabst.models.RidgeModel().fit(X, Y,
groups)`` (default 13 α × 8 sample-folds, grouped CV, final refit, median imputer included;
``--precision`` picks its arithmetic, default "auto": float32 like sklearn's unless the data are
too ill-conditioned for it; the JSON says which was used). Both run under the same BLAS thread
limit, ``--repeat`` times each, all sklearn fits first: a large copy right after tabst's
threaded folds can page-fault slowly on this VM (sklearn's 355 MB of centred copies took 1.3 s
instead of 0.06 s there), which would flatter tabst. The ratio is of the medians; ``ratio_best``
(best vs best) and ``cpu_ratio`` (process CPU time) are printed beside it.
Goal: tabst ≤ 3 × the single sklearn fit.
Ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def make_data(n, F, G, n_samples, seed=0):
    rng = np.random.default_rng(seed)
    r = 64
    basis = rng.normal(size=(r, F)).astype(np.float32)
    X = rng.normal(size=(n, r)).astype(np.float32) @ basis
    X += rng.normal(size=(n, F)).astype(np.float32)
    X += rng.normal(size=(n_samples, F)).astype(np.float32).repeat(n // n_samples + 1, 0)[:n] * 0.3
    W = rng.normal(size=(F, 8)) @ rng.normal(size=(8, G)) / np.sqrt(F * r)
    noise = rng.uniform(0.2, 5.0, G)
    Y = (X @ W.astype(np.float32) + rng.normal(size=(n, G)).astype(np.float32) * noise)
    groups = np.repeat(np.arange(n_samples), n // n_samples + 1)[:n].astype(str)
    return X, Y.astype(np.float32), groups


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=60000)
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--targets", type=int, default=460)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="BLAS threads (0 = library default)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timings per side (alternating); the medians are compared")
    ap.add_argument("--precision", default="auto", choices=["auto", "float32", "float64"],
                    help="tabst ridge accumulation arithmetic")
    a = ap.parse_args(argv)
    from sklearn.linear_model import Ridge
    from threadpoolctl import threadpool_limits

    from tabst.models import RidgeModel

    X, Y, groups = make_data(a.rows, a.features, a.targets, a.samples)
    _limits = threadpool_limits(a.threads) if a.threads else None  # noqa: F841 (kept active)
    print(f"data: X {X.shape} float32, Y {Y.shape}, {a.samples} samples; cpus={os.cpu_count()}",
          file=sys.stderr)
    sk_t, sk_c, ts_t, ts_c = [], [], [], []
    for r in range(a.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        Ridge(alpha=1.0).fit(X, Y)
        sk_t.append(time.perf_counter() - t0)
        sk_c.append(time.process_time() - c0)
        print(f"sklearn Ridge(alpha=1.0) fixed α, run {r + 1}/{a.repeat}: {sk_t[-1]:.2f} s wall "
              f"({sk_c[-1]:.2f} s CPU)", file=sys.stderr)
    for r in range(a.repeat):
        m = RidgeModel(cv=a.samples, precision=a.precision)
        t0, c0 = time.perf_counter(), time.process_time()
        m.fit(X, Y, groups)
        ts_t.append(time.perf_counter() - t0)
        ts_c.append(time.process_time() - c0)
        print(f"tabst RidgeModel, run {r + 1}/{a.repeat}: {ts_t[-1]:.2f} s wall "
              f"({ts_c[-1]:.2f} s CPU)", file=sys.stderr)
    sk, sk_cpu = float(np.median(sk_t)), float(np.median(sk_c))
    ts, ts_cpu = float(np.median(ts_t)), float(np.median(ts_c))
    n_alpha = len(m.alphas_)
    n_folds = len(m.cv_fold_groups_)
    print(f"median of {a.repeat}: sklearn {sk:.2f} s; tabst RidgeModel, {n_alpha} α × {n_folds} "
          f"sample-folds + refit: {ts:.2f} s wall, {ts_cpu:.2f} s CPU "
          f"(peak RSS +{m.peak_mem_mb_:.0f} MB); distinct α chosen: {len(np.unique(m.alpha_))}",
          file=sys.stderr)
    ratio = ts / sk
    ratio_best = min(ts_t) / min(sk_t)
    cpu_ratio = ts_cpu / sk_cpu
    out = {"benchmark": "ridge_path", "rows": a.rows, "features": a.features,
           "targets": a.targets, "n_alphas": n_alpha, "n_folds": n_folds,
           "repeat": a.repeat, "sklearn_fixed_alpha_s": round(sk, 3),
           "tabst_per_gene_alpha_cv_s": round(ts, 3),
           "ratio": round(ratio, 2),
           "ratio_best": round(ratio_best, 2),
           "sklearn_runs_s": [round(t, 3) for t in sk_t],
           "tabst_runs_s": [round(t, 3) for t in ts_t], "sklearn_fixed_alpha_cpu_s": round(sk_cpu, 3),
           "tabst_cpu_s": round(ts_cpu, 3), "cpu_ratio": round(cpu_ratio, 2),
           "blas_threads": a.threads or "default", "precision": a.precision,
           "precision_used": m.precision_used_,
           "peak_mem_mb": round(m.peak_mem_mb_, 1),
           "distinct_alphas_chosen": int(len(np.unique(m.alpha_))),
           "goal": "tabst per-gene α (>=13 α x 8 sample-folds) <= 3x one sklearn fixed-α fit",
           "met": bool(ratio <= 3.0 and n_alpha >= 13 and n_folds >= 8)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
