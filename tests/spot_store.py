"""A tiny spot-platform store (legacy-ST-like) for the report and info tests.

Spots sit on a regular grid (pitch 16 px, diameter 9 px) over a synthetic H&E image: a pink
background (:data:`PINK`, a colour viridis never draws) with a dark purple block, written as
PNG beside the store. ``tissue`` is 'unknown' for every spot (as `tabst ingest st` writes it
when no tissue is given) and the provenance records ``platform: ST``. Expression depends
linearly on the embedding plus noise, so a ridge has something to learn.
"""
from __future__ import annotations

import os

import numpy as np

from tabst.store import build_provenance, create_store, put, set_attr
from tabst.util import relpath_from

PINK = (250, 170, 215)
DARK = (70, 30, 90)
DARK_BLOCK = (slice(40, 70), slice(50, 90))  # rows, columns of the dark block in each image
SPOT_D = 9.0


def he_image(size: int = 176) -> np.ndarray:
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = PINK
    img[DARK_BLOCK] = DARK
    return img


def write_spot_store(path, sizes=(30, 40, 48, 56), n_genes=8, emb_dim=8, image_size=176,
                     seed=0) -> str:
    """Store with ``len(sizes)`` sections S0.. of ``sizes[i]`` spots each; returns the path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    grid = np.array([(24 + 16 * i, 24 + 16 * j) for j in range(8) for i in range(8)], float)
    samples, xs, ys = [], [], []
    for k, n in enumerate(sizes):
        samples += [f"S{k}"] * n
        xs.append(grid[:n, 0])
        ys.append(grid[:n, 1])
    n = len(samples)
    x, y = np.concatenate(xs), np.concatenate(ys)
    emb = rng.normal(size=(n, emb_dim)).astype(np.float32)
    W = rng.normal(size=(emb_dim, n_genes)) / np.sqrt(emb_dim)
    expr = np.log1p(np.exp(emb @ W + 0.3 * rng.normal(size=(n, n_genes)))).astype(np.float32)
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    prov = build_provenance([], command=["tests"], platform="ST")
    with create_store(path, provenance=prov) as f:
        c = f.create_group("cells")
        put(c, "cell_id", np.array([f"s{i}" for i in range(n)], dtype=object),
            description="unique spot identifier")
        put(c, "sample", np.array(samples, dtype=object), description="section of the spot")
        put(c, "tissue", np.array(["unknown"] * n, dtype=object),
            description="tissue type ('unknown' when not given)")
        put(c, "x", x, description="spot centre x in the sample image", unit="px")
        put(c, "y", y, description="spot centre y in the sample image", unit="px")
        g = f.create_group("images")
        for s in dict.fromkeys(samples):
            p = os.path.join(base, f"{s}.png")
            Image.fromarray(he_image(image_size)).save(p)
            gs = g.create_group(s)
            for k, v in dict(kind="file", path=relpath_from(p, base), mask_path="",
                             height=image_size, width=image_size, channels=3,
                             pixel_size_um=100.0 / SPOT_D, spot_diameter_px=SPOT_D,
                             description=f"H&E image of section {s}").items():
                set_attr(gs, k, v)
        e = f.create_group("expression")
        put(e, "X", expr, description="expression, spots x genes", unit="log1p(count/total*100)",
            transform="log1p(count/total*100)")
        put(e, "genes", np.array([f"GENE{i}" for i in range(n_genes)], dtype=object),
            description="gene names, columns of X")
        eg = f.create_group("embeddings")
        put(eg, "test", emb, description="synthetic embedding (tests)", encoder="synthetic",
            layer="none", weights="random", patch_size="spot", complete=True)
        fg = f.create_group("features")
        put(fg, "morphology", rng.uniform(0, 1, (n, 2)).astype(np.float32),
            description="synthetic stain features", names=["hematoxylin_mean", "eosin_mean"],
            groups=["stain", "stain"])
    return path
