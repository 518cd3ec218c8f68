"""The `context` model (a deep set on the cell and its spatial neighbours): neighbour lists,
learning from the neighbours only, the k = 0 ablation, save/load, attributions split."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
from conftest import write_tiny_store

from tabst.compare import run_compare
from tabst.context_features import context_columns, knn_rows

CTX = {"hidden": 32, "width": 16, "epochs": 40, "patience": 8, "n_models": 1, "k": 8,
       "components": 2, "batch_size": 64, "learning_rate": 3e-3, "explain_steps": 8,
       "device": "cpu"}


def test_neighbours_stay_in_their_sample():
    """Two samples at the same coordinates: every neighbour is of the cell's own sample, the
    cell itself is never one, and a sample too small for k leaves -1."""
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, size=(30, 2))
    samples = np.array(["A"] * 30 + ["B"] * 30 + ["C"] * 3)
    xs = np.concatenate([xy[:, 0], xy[:, 0], [1, 2, 3]])
    ys = np.concatenate([xy[:, 1], xy[:, 1], [1, 2, 3]])
    rows = np.arange(len(samples))
    nbr, dist = knn_rows(samples, xs, ys, rows, 5)
    for i in rows:
        ok = nbr[i][nbr[i] >= 0]
        assert (samples[ok] == samples[i]).all() and i not in ok
    assert (nbr[:60] >= 0).all() and (nbr[60:, 2:] == -1).all() and np.isnan(dist[60:, 2:]).all()
    assert (np.diff(dist[:60], axis=1) >= 0).all()  # nearest first


def _neighbour_target(path, k=8):
    """Every gene = a_g * (mean nucleus_area of the cell's k nearest neighbours) + noise: the
    cell's own features carry nothing about it."""
    rng = np.random.default_rng(3)
    with h5py.File(path, "r+") as f:
        s = np.asarray(f["cells/sample"][()]).astype(str)
        x, y = f["cells/x"][()], f["cells/y"][()]
        m = f["features/morphology"][()]
        m[:, 0] = rng.normal(size=len(m))                     # nucleus_area: pure noise per cell
        f["features/morphology"][...] = m
        nbr, _ = knn_rows(s, x, y, np.arange(len(s)), k)
        z = m[nbr, 0].mean(axis=1)
        X = f["expression/X"][()]
        a = rng.uniform(0.5, 1.5, size=X.shape[1]) * rng.choice([-1, 1], size=X.shape[1])
        f["expression/X"][...] = (2 + a * z[:, None] + 0.05 * rng.normal(size=X.shape)
                                  ).astype(X.dtype)


def test_context_learns_from_the_neighbours_and_k0_cannot(tmp_path):
    p = write_tiny_store(tmp_path / "s.h5", n_samples=3, cells_per_sample=200, n_genes=8)
    _neighbour_target(p)
    sets = ["features.neighbourhood=null", "features.metadata={tissue: false, position: false}",
            "features.embedding.pca=4"]
    sets += [f"context.{k}={json.dumps(v)}" for k, v in CTX.items()]
    sets += [f"context-k0.{k}={json.dumps(v)}" for k, v in CTX.items() if k != "k"]
    run = run_compare(p, "quick", tmp_path / "run", models="context,context-k0", overrides=sets,
                      show_progress=False, render=False)
    lb = pd.read_csv(run / "leaderboard.csv").set_index("model")
    full, k0 = lb.loc["context", "genewise_pearson_mean"], lb.loc["context-k0",
                                                                   "genewise_pearson_mean"]
    print(f"gene-wise Pearson: context {full:.3f}, context-k0 {k0:.3f}")
    assert full > 0.5 and k0 < 0.2 and full > k0 + 0.3, (full, k0)
    # its own feature set (with the neighbours' block) is saved beside the model, and
    # reloading model + builder reproduces predictions.h5
    from tabst.dataset import FeatureBuilder
    from tabst.models import load_model

    fb = FeatureBuilder.load(run / "features" / "context" / "fold_0")
    cell, nbr = context_columns(fb.feature_names_, fb.feature_groups_)
    assert nbr.shape[0] == 8 and not (run / "features" / "context-k0").exists()
    with h5py.File(run / "predictions.h5") as f:
        rows, pred = f["fold_0/row"][()], f["fold_0/pred/context"][()]
    m = load_model(run / "models" / "context" / "fold_0")
    order = np.argsort(rows)
    X = np.empty((len(rows), len(fb.feature_names_)), np.float32)
    X[order] = fb.transform(p, rows[order])
    assert np.allclose(np.maximum(m.predict(X), 0), pred, atol=1e-5)
    # attributions: the neighbours' morphology carries the prediction, completeness holds
    from tabst.explain.run import explain_run

    res, _ = explain_run(run, models=["context"], top_genes=2, show_progress=False)
    r = res["context"]
    g = np.asarray(r.groups)
    mass = np.abs(r.values).sum(axis=(0, 2))
    share = mass[g == "context:morphology"].sum() / mass.sum()
    assert share > 0.5, share
    assert r.max_additivity_error < 1e-3


def test_deterministic_with_a_seed_and_shared_phi(tmp_path):
    """Two fits with the same seed give the same predictions on the CPU; shared_phi shares φ's
    body between the cell and its neighbours (fewer parameters), and round-trips save/load."""
    from tabst.models import load_model, make_model

    rng = np.random.default_rng(0)
    n, k, w = 240, 4, 3
    names = ["a", "b"] + [f"ctx{j}_{c}" for j in range(1, k + 1) for c in ("pc1", "m", "dist")]
    groups = ["embedding", "morphology"] + ["context:embedding", "context:morphology",
                                            "context:position"] * k
    X = rng.normal(size=(n, len(names))).astype(np.float32)
    Y = X[:, 2:].reshape(n, k, w)[:, :, 1].mean(axis=1, keepdims=True) * np.array([[1.0, -2.0]])
    grp = np.repeat(["s0", "s1", "s2"], n // 3)
    p = dict(CTX, k=k, epochs=5)
    kw = dict(groups=grp, feature_names=names, feature_groups=groups)
    a = make_model("context", p).fit(X, Y, **kw)
    b = make_model("context", p).fit(X, Y, **kw)
    assert np.array_equal(a.predict(X), b.predict(X)) and a.nbr_idx_.shape == (k, w)
    s = make_model("context", dict(p, shared_phi=True)).fit(X, Y, **kw)
    count = [sum(t.numel() for t in m.nets_[0].parameters()) for m in (a, s)]
    assert count[1] < count[0]
    s.save(tmp_path / "m")
    assert np.array_equal(load_model(tmp_path / "m").predict(X), s.predict(X))
