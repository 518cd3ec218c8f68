"""`tabst compare --config crunch1` at Crunch 1 scale: the printed estimate vs the wall time.

For each size (default 50,000 and 200,000 cells over 4 samples, 460 genes, a 1024-d
embedding like ResNet50 layer3, 10 morphology/stain/neighbourhood features) a synthetic store
is written and the ``crunch1`` preset is run on it with ``estimate: true`` (what ``auto`` does
at these sizes). Per model it prints the estimate made before fitting (fold fits + refit)
next to the measured fit seconds, and the whole run's wall time.

Ends with one JSON line. Goals: every model's estimate within 2x of its actual time, and the
200,000-cell run done within 60 minutes on 2 cores.

    python benchmarks/compare_scale.py [--sizes 50000,200000] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_SAMPLES, N_GENES, EMB_DIM = 4, 460, 1024
FEATURES = ["nucleus_area", "nucleus_perimeter", "nucleus_eccentricity", "nucleus_solidity",
            "hematoxylin_mean", "hematoxylin_std", "eosin_mean", "eosin_std",
            "density_r64px", "knn5_distance_px"]
GROUPS = ["morphology"] * 4 + ["stain"] * 4 + ["neighbourhood"] * 2
CHUNK = 50_000


def make_store(path: Path, n: int, seed: int = 0) -> Path:
    """Cells whose expression depends on a few embedding directions, the morphology and the
    sample (a batch effect), on a log1p scale like Crunch 1's X (non-negative); written in row
    chunks of :data:`CHUNK`, so a million cells never sit in memory."""
    from tabst.store import build_provenance, create_store, put, set_attr

    rng = np.random.default_rng(seed)
    samples = np.repeat([f"S{s}" for s in range(N_SAMPLES)], int(np.ceil(n / N_SAMPLES)))[:n]
    code = np.searchsorted(np.unique(samples), samples)
    W = rng.normal(size=(32, N_GENES)).astype(np.float32) / 4
    Wf = rng.normal(size=(len(FEATURES), N_GENES)).astype(np.float32) / 8
    shift = rng.normal(size=(N_SAMPLES, N_GENES)).astype(np.float32) / 4
    with create_store(path, force=True, provenance=build_provenance([], ["benchmark"])) as f:
        c = f.create_group("cells")
        put(c, "cell_id", np.array([f"c{i}" for i in range(n)], dtype=object),
            description="cell id")
        put(c, "sample", samples.astype(object), description="sample")
        put(c, "tissue", np.full(n, "bench", dtype=object), description="tissue")
        put(c, "x", rng.uniform(0, 20_000, n), description="x", unit="px")
        put(c, "y", rng.uniform(0, 20_000, n), description="y", unit="px")
        g = f.create_group("images")
        for s in np.unique(samples):
            gs = g.create_group(str(s))
            for k, v in dict(kind="file", path="", mask_path="", height=20_000, width=20_000,
                             channels=3, pixel_size_um=0.2125, spot_diameter_px=float("nan"),
                             description="benchmark (no pixels)").items():
                set_attr(gs, k, v)
        dsets = {}
        for grp, name, d, attrs in (
                ("expression", "X", N_GENES, dict(description="synthetic expression",
                                                  unit="log1p(count/total*100)",
                                                  transform="log1p(count/total*100)")),
                ("embeddings", "resnet50_layer3_p32_synthetic", EMB_DIM,
                 dict(description="synthetic 1024-d embedding", encoder="synthetic",
                      layer="layer3", weights="random", patch_size=32, complete=True)),
                ("features", "morphology", len(FEATURES),
                 dict(description="synthetic interpretable features", names=FEATURES,
                      groups=GROUPS, complete=True))):
            ds = f.require_group(grp).create_dataset(name, (n, d), np.float32,
                                                     chunks=(min(n, 4096), d))
            for k, v in attrs.items():
                set_attr(ds, k, v)
            dsets[grp] = ds
        put(f["expression"], "genes", np.array([f"G{i}" for i in range(N_GENES)], dtype=object),
            description="genes")
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK)
            emb = rng.normal(size=(hi - lo, EMB_DIM)).astype(np.float32)
            feats = rng.normal(size=(hi - lo, len(FEATURES))).astype(np.float32)
            z = emb[:, :32] @ W + feats @ Wf + shift[code[lo:hi]] \
                + rng.normal(size=(hi - lo, N_GENES)).astype(np.float32)
            dsets["expression"][lo:hi] = np.log1p(np.exp(z - 1.0))
            dsets["embeddings"][lo:hi] = emb
            dsets["features"][lo:hi] = feats
    return path


def actual_seconds(run: Path) -> dict:
    """Measured fit seconds per model: every fold's fit plus the refit."""
    import pandas as pd

    pf = pd.read_csv(run / "per_fold.csv")
    meta = json.loads((run / "run.json").read_text())
    out = {}
    for m, grp in pf.groupby("model"):
        refit = meta["refit"].get(m, {})
        out[str(m)] = float(grp["fit_seconds"].sum()) + float(refit.get("fit_seconds", 0.0))
    return out


def one_size(n: int, td: Path) -> dict:
    from tabst.compare import run_compare

    store = make_store(td / f"s{n}.h5", n)
    t0 = time.perf_counter()
    run = run_compare(store, "crunch1", td / f"run{n}", overrides=["estimate=true"],
                      show_progress=False, render=False, force=True)
    wall = time.perf_counter() - t0
    meta = json.loads((run / "run.json").read_text())
    est = meta["estimate"]
    act = actual_seconds(run)
    rows = {}
    for m, e in est["models"].items():
        e_total = float(sum(e["folds"]) + e["refit"])
        a = act.get(m, float("nan"))
        rows[m] = {"estimate_s": round(e_total, 1), "actual_s": round(a, 1),
                   "ratio": round(e_total / a, 3) if a > 0 else None,
                   "fit_rows_per_fold": e.get("rows")}
        print(f"  {n:,} cells · {m:8s} estimate {e_total:8.1f} s   actual {a:8.1f} s   "
              f"ratio {e_total / a if a > 0 else float('nan'):.2f}")
    lb = meta["ranked_by"]
    print(f"  {n:,} cells: whole run {wall / 60:.1f} min (estimate {est['total_seconds'] / 60:.1f}"
          f" min incl. features, calibration {est['calibration_seconds']:.0f} s); ranked by {lb}")
    return {"cells": n, "wall_s": round(wall, 1), "estimate_total_s": est["total_seconds"],
            "calibration_s": est["calibration_seconds"], "models": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="50000,200000")
    ap.add_argument("--keep", default=None, help="write stores and runs here (default: temp)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"cpu cores {os.cpu_count()}, sizes {sizes}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="tabst-cmp-") as tmp:
        td = Path(args.keep or tmp)
        td.mkdir(parents=True, exist_ok=True)
        for n in sizes:
            results.append(one_size(n, td))
            sys.stdout.flush()
    ratios = [r["ratio"] for res in results for r in res["models"].values()
              if r["ratio"] is not None and r["actual_s"] >= 1.0]
    within = all(0.5 <= x <= 2.0 for x in ratios)
    big = max(results, key=lambda r: r["cells"])
    fast = big["wall_s"] <= 3600 if big["cells"] >= 200_000 else None
    print(json.dumps({"benchmark": "compare_scale", "config": "crunch1", "results": results,
                      "estimates_within_2x": within,
                      "largest_run_within_60_min": fast,
                      "goal": "each model's estimate within 2x of actual (models taking >= 1 s); "
                              "200k cells within 60 min on 2 cores",
                      "met": bool(within and fast is not False)}))


if __name__ == "__main__":
    main()
