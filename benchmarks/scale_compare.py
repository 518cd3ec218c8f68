"""`tabst compare` at a million cells: wall time and peak memory, one process vs ``local:2``.

For each size (default 100,000, 300,000 and 1,000,000 cells over 4 samples, 460 genes, a 1024-d
embedding like ResNet50 layer3, 10 interpretable features) a synthetic store is written in row
chunks (:func:`compare_scale.make_store`, never whole in memory) and
``tabst compare --models mean,ridge,xgboost`` runs on it in a child process, once alone and
once with ``--cluster local:2``. The default preset's feature set is used (embedding PCA 64,
fitted streaming on each fold's training rows, + tissue + morphology + position), XGBoost with
the PCA-16 target codec and 40 rounds, folds ``group-kfold:2`` and the refit on every row.
Peak RSS is sampled every 0.2 s over the whole process tree (client + Dask workers).

Ends with one JSON line. Goals: peak RSS at 1M <= 3x the 100k one and under 12 GiB; wall time
growing at most linearly with the cells.

    python benchmarks/scale_compare.py [--sizes 100000,300000,1000000] [--modes single,local:2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_scale import make_store  # noqa: E402


def _tree_rss(pid: int) -> tuple[int, int]:
    """(RSS of ``pid``, RSS of it and all its descendants) in bytes."""
    import psutil

    try:
        p = psutil.Process(pid)
        own = p.memory_info().rss
        total = own
        for c in p.children(recursive=True):
            try:
                total += c.memory_info().rss
            except psutil.Error:
                pass
        return own, total
    except psutil.Error:
        return 0, 0


def run_one(store: Path, out: Path, mode: str) -> dict:
    cmd = [sys.executable, "-c", "from tabst_cli.app import main; main()", "compare", str(store),
           "--models", "mean,ridge,xgboost", "--folds", "group-kfold:2", "--out", str(out),
           "--force", "--set", "xgboost.n_estimators=40", "--set", "estimate=false"]
    if mode != "single":
        cmd += ["--cluster", mode]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"client": 0, "tree": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            own, tree = _tree_rss(proc.pid)
            peak["client"], peak["tree"] = max(peak["client"], own), max(peak["tree"], tree)
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    log, _ = proc.communicate()
    stop.set()
    th.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(log[-3000:])
        raise SystemExit(f"compare failed ({mode}) with exit code {proc.returncode}")
    import pandas as pd

    lb = pd.read_csv(out / "leaderboard.csv").set_index("model")
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(peak["tree"] / 2 ** 30, 2),
            "client_peak_rss_gib": round(peak["client"] / 2 ** 30, 2),
            "cellwise_spearman": {m: round(float(v), 6)
                                  for m, v in lb["cellwise_spearman_mean"].items()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--modes", default="single,local:2")
    ap.add_argument("--keep", default=None, help="write stores and runs here (default: temp)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    print(f"cpu cores {os.cpu_count()}, sizes {sizes}, modes {modes}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="tabst-scale-") as tmp:
        td = Path(args.keep or tmp)
        td.mkdir(parents=True, exist_ok=True)
        for n in sizes:
            t0 = time.perf_counter()
            store = make_store(td / f"s{n}.h5", n)
            print(f"{n:,} cells: store written in {time.perf_counter() - t0:.0f} s "
                  f"({store.stat().st_size / 2 ** 30:.2f} GiB)", flush=True)
            for mode in modes:
                r = {"cells": n, "mode": mode, **run_one(store, td / f"run{n}-{mode}", mode)}
                print(f"  {mode:8s} wall {r['wall_s']:7.1f} s   peak RSS {r['peak_rss_gib']:5.2f}"
                      f" GiB (client {r['client_peak_rss_gib']:.2f})   {r['cellwise_spearman']}",
                      flush=True)
                results.append(r)
            store.unlink()
    goals = {}
    for mode in modes:
        rs = sorted((r for r in results if r["mode"] == mode), key=lambda r: r["cells"])
        if len(rs) >= 2:
            a, b = rs[0], rs[-1]
            k = b["cells"] / a["cells"]
            goals[mode] = {"rss_ratio": round(b["peak_rss_gib"] / a["peak_rss_gib"], 2),
                           "cells_ratio": k, "time_ratio": round(b["wall_s"] / a["wall_s"], 2),
                           "largest_peak_rss_gib": b["peak_rss_gib"]}
    met = bool(goals) and all(g["rss_ratio"] <= 3 and g["largest_peak_rss_gib"] < 12
                              and g["time_ratio"] <= g["cells_ratio"] for g in goals.values())
    print(json.dumps({"benchmark": "scale_compare", "results": results, "scaling": goals,
                      "goal": "peak RSS (client + workers) at the largest size <= 3x the "
                              "smallest and < 12 GiB; wall time at most linear in the cells",
                      "met": met}))


if __name__ == "__main__":
    main()
