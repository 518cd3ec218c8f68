"""What `tabst compare --tune` buys on the demo store (quick preset), per model.

Generates the demo data (4 samples x 3,000 cells x 460 genes, ResNet50 layer3 with random
weights: `tabst demo`'s store), then runs `compare --config quick --tune` once: each tuned model
sits beside its default on the same outer folds (leave-one-sample-out). Prints per model the
default vs tuned outer-fold cell-wise Spearman and gene-wise Pearson (mean over folds), the
trials run / pruned, and the wall time; ends with one JSON line.

Goal (issue 15): tuned >= default on every model (the ranking metric, cell-wise Spearman), and
XGBoost's gene-wise Pearson up by >= 5 % relative.

    python benchmarks/tuning_gain.py [--trials 20] [--minutes 30] [--models ridge,tree,xgboost,tabnet]
                                     [--small]   # 3 x 150 cells x 40 genes: a smoke run
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20, help="trials per study (model x fold)")
    ap.add_argument("--minutes", type=float, default=30.0,
                    help="tuning budget of the whole run (split evenly over the studies)")
    ap.add_argument("--models", default="ridge,tree,xgboost,tabnet")
    ap.add_argument("--metric", default=None,
                    help="what the trials are scored on (tune.metric; default: the run's "
                         "primary metric, cell-wise Spearman)")
    ap.add_argument("--small", action="store_true", help="the quick demo data (smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="keep the run here")
    args = ap.parse_args()

    import pandas as pd

    from tabst.compare import run_compare
    from tabst.demo import run_demo

    with tempfile.TemporaryDirectory(prefix="tabst-tune-bench-") as td:
        base = args.out or Path(td)
        t0 = time.perf_counter()
        paths = run_demo(base / "demo", quick=args.small, force=True, show_progress=False,
                         stages=("data", "embed"))
        t_data = time.perf_counter() - t0
        t0 = time.perf_counter()
        run = run_compare(paths["store"], "quick", base / "run", models=args.models, force=True,
                          overrides=["tune.enabled=true", f"tune.trials={args.trials}",
                                     f"tune.minutes={args.minutes}"]
                          + ([f"tune.metric={args.metric}"] if args.metric else []),
                          show_progress=False)
        wall = time.perf_counter() - t0
        lb = pd.read_csv(run / "leaderboard.csv").set_index("model")
        tr = pd.read_csv(run / "tuning.csv")
        info = json.loads((run / "run.json").read_text())
    rows, met_all = {}, True
    print(f"demo store: {info['store']['n_cells_evaluated']:,} cells x "
          f"{info['store']['n_genes']} genes (data + embedding {t_data:.0f} s); compare --tune "
          f"wall {wall / 60:.1f} min (tuning {info['timing'].get('tuning_seconds', 0) / 60:.1f} "
          "min)")
    print(f"{'model':10s} {'spearman default':>17s} {'tuned':>8s} {'pearson default':>16s} "
          f"{'tuned':>8s} {'gain':>7s} {'trials':>7s} {'pruned':>7s}")
    for m in args.models.split(","):
        key = f"{m}+tuned"
        if m not in lb.index or key not in lb.index:
            continue
        d, t = lb.loc[m], lb.loc[key]
        sub = tr[tr["model"] == m]
        r = {"spearman_default": round(float(d["cellwise_spearman_mean"]), 4),
             "spearman_tuned": round(float(t["cellwise_spearman_mean"]), 4),
             "pearson_default": round(float(d["genewise_pearson_mean"]), 4),
             "pearson_tuned": round(float(t["genewise_pearson_mean"]), 4),
             "trials": int(len(sub)), "pruned": int(sub["pruned"].sum())}
        r["pearson_gain_rel"] = round((r["pearson_tuned"] - r["pearson_default"])
                                      / abs(r["pearson_default"]), 4) if r["pearson_default"] else None
        r["tuned_ge_default"] = bool(r["spearman_tuned"] >= r["spearman_default"])
        met_all &= r["tuned_ge_default"]
        rows[m] = r
        print(f"{m:10s} {r['spearman_default']:17.4f} {r['spearman_tuned']:8.4f} "
              f"{r['pearson_default']:16.4f} {r['pearson_tuned']:8.4f} "
              f"{(r['pearson_gain_rel'] or 0) * 100:6.1f}% {r['trials']:7d} {r['pruned']:7d}")
    xgb = rows.get("xgboost", {}).get("pearson_gain_rel")
    met = bool(met_all and xgb is not None and xgb >= 0.05)
    print(json.dumps({"benchmark": "tuning_gain", "cells": info["store"]["n_cells_evaluated"],
                      "genes": info["store"]["n_genes"], "trials_per_study": args.trials,
                      "tune_metric": args.metric or "primary",
                      "minutes_budget": args.minutes, "wall_minutes": round(wall / 60, 2),
                      "models": rows,
                      "goal": "tuned >= default (cell-wise Spearman) on every model; XGBoost "
                              "gene-wise Pearson +5% relative", "met": met}))


if __name__ == "__main__":
    main()
