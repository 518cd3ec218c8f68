"""XGBoost with identity targets (one tree per gene per round) vs a PCA-32 target codec.

    .venv/bin/python benchmarks/target_codec.py [--store STORE.h5] [--rounds 100] [--k 32]

Data: ``--store`` (a store with an embedding + morphology features, e.g. the demo's after
``tabst embed``; features = 64 embedding PCs + tissue + position + morphology, fitted on the
training samples) or, by default, a synthetic set of the demo's size: 4 samples × 3,000 cells,
460 genes, 64 "embedding PCs" + 8 morphology features. Synthetic expression is low-rank and
non-linear in the features: latent programs (cell type, compartment) drive both the features
(noisily) and the expression, plus gene-specific noise and a per-sample batch shift.

Fold: the last sample is the test set; the others train (early stopping on a held-out training
sample). Metric: gene-wise Pearson on the test cells (``tabst.evaluate.genewise_pearson``:
per gene, constant genes count 0, mean over genes). Goal: PCA-k ≥ 10× faster with ≤ 2 %
relative loss of gene-wise Pearson. Ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def synthetic(n_samples=4, cells=3000, n_genes=460, n_pcs=64, n_morph=8, seed=0):
    rng = np.random.default_rng(seed)
    n = n_samples * cells
    samples = np.repeat([f"S{i}" for i in range(n_samples)], cells)
    n_types, n_prog = 6, 12
    types = rng.integers(0, n_types, n)
    type_prog = rng.normal(size=(n_types, n_prog)) * 1.2
    cont = rng.normal(size=(n, 4))                                   # continuous latent state
    latent = np.column_stack([type_prog[types], cont, np.tanh(cont[:, :2] * 2)])  # [n, 18]
    L = latent.shape[1]
    emb = latent @ rng.normal(size=(L, n_pcs)) + rng.normal(size=(n, n_pcs)) * 1.5
    morph = (np.abs(latent[:, :6]) @ rng.normal(size=(6, n_morph))
             + rng.normal(size=(n, n_morph)) * 0.5)
    morph[rng.random(morph.shape) < 0.01] = np.nan                   # a few missing values
    X = np.column_stack([emb, morph]).astype(np.float32)
    loads = rng.normal(size=(L, 10)) @ rng.normal(size=(10, n_genes)) / np.sqrt(10 * L)
    base = rng.normal(size=n_genes) * 0.8
    nonlin = np.maximum(latent, 0) ** 1.5 @ (loads * 0.7)
    batch = rng.normal(size=(n_samples, n_genes)) * 0.15
    si = np.repeat(np.arange(n_samples), cells)
    logmu = base + latent @ loads + nonlin + batch[si]
    Y = np.log1p(np.exp(logmu + rng.normal(size=(n, n_genes)) * 0.6)).astype(np.float32)
    names = [f"emb_pc{i + 1}" for i in range(n_pcs)] + [f"morph_{i}" for i in range(n_morph)]
    groups = ["embedding"] * n_pcs + ["morphology"] * n_morph
    return X, Y, samples, names, groups


def from_store(path):
    from tabst.dataset import FeatureBuilder, load_targets, rows_with_expression
    from tabst.store import cells_frame

    rows = rows_with_expression(path)
    samples = cells_frame(path, ["sample"])["sample"].to_numpy()[rows]
    test_sample = sorted(set(samples))[-1]
    train = rows[samples != test_sample]
    fb = FeatureBuilder({"embedding": {"name": "auto", "pca": 64}}).fit(path, train)
    X = fb.transform(path, rows)
    Y, _ = load_targets(path, rows)
    return X, Y, samples, fb.feature_names_, fb.feature_groups_


def genewise_pearson(y, p):
    try:
        from tabst.evaluate import genewise_pearson as gp

        return float(gp(y, p))
    except ImportError:  # pragma: no cover - evaluate module not there yet
        yc, pc = y - y.mean(0), p - p.mean(0)
        den = np.sqrt((yc ** 2).sum(0) * (pc ** 2).sum(0))
        r = np.where(den > 0, (yc * pc).sum(0) / np.where(den > 0, den, 1), 0.0)
        return float(r.mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=None)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--n-jobs", type=int, default=0)
    a = ap.parse_args(argv)
    from tabst.models import XGBoostModel

    X, Y, samples, names, groups = from_store(a.store) if a.store else synthetic()
    test_sample = sorted(set(samples))[-1]
    te = samples == test_sample
    print(f"data: {'store ' + a.store if a.store else 'synthetic'}: X {X.shape}, Y {Y.shape}, "
          f"test sample {test_sample} ({te.sum()} cells); cpus={os.cpu_count()}", file=sys.stderr)
    common = dict(n_estimators=a.rounds, learning_rate=0.1, max_depth=6,
                  early_stopping_rounds=10, n_jobs=a.n_jobs)
    res = {}
    for label, codec in (("identity", {"codec": "identity"}),
                         (f"pca{a.k}", {"codec": "pca", "codec_k": a.k})):
        m = XGBoostModel(**common, **codec)
        c0 = time.process_time()
        m.fit(X[~te], Y[~te], samples[~te], feature_names=names, feature_groups=groups)
        cpu = time.process_time() - c0
        r = genewise_pearson(Y[te], m.predict(X[te]))
        res[label] = {"fit_s": m.fit_seconds_, "fit_cpu_s": cpu, "pearson": r,
                      "rounds": m.best_iteration_ + 1, "peak_mem_mb": m.peak_mem_mb_}
        print(f"{m.display_name}: fit {m.fit_seconds_:.1f} s wall / {cpu:.1f} s CPU, "
              f"{m.best_iteration_ + 1} rounds, gene-wise Pearson {r:.4f}, "
              f"peak RSS +{m.peak_mem_mb_:.0f} MB", file=sys.stderr)
    ident, pca = res["identity"], res[f"pca{a.k}"]
    speedup = ident["fit_s"] / pca["fit_s"]
    cpu_speedup = ident["fit_cpu_s"] / pca["fit_cpu_s"]
    loss = (ident["pearson"] - pca["pearson"]) / abs(ident["pearson"])
    out = {"benchmark": "target_codec", "data": a.store or "synthetic 4x3000 cells, 460 genes",
           "features": int(X.shape[1]), "k": a.k,
           "identity_fit_s": round(ident["fit_s"], 2), f"pca{a.k}_fit_s": round(pca["fit_s"], 2),
           "identity_pearson": round(ident["pearson"], 4),
           f"pca{a.k}_pearson": round(pca["pearson"], 4),
           "speedup": round(speedup, 1), "cpu_speedup": round(cpu_speedup, 1),
           "relative_pearson_loss": round(loss, 4),
           "goal": f"pca{a.k} >= 10x faster with <= 2% relative loss of gene-wise Pearson",
           "met": bool(speedup >= 10 and loss <= 0.02)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
