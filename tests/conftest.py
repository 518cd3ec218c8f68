"""Shared fixtures: tiny synthetic stores written directly through the store API."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tests share 2 cores; keep BLAS/torch polite

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

import numpy as np
import pytest

from tabst.store import build_provenance, create_store, put, set_attr
from tabst.util import relpath_from

SHARED_DATA = Path(os.environ.get("TABST_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))
if not SHARED_DATA.is_dir():
    SHARED_DATA = Path("/work/shared/data")
MOB = SHARED_DATA / "stutility-mob"  # four legacy-ST mouse olfactory bulb sections


def mob_section_args(sections) -> list[str]:
    """``--section COUNTS,ALIGNMENT,IMAGE,NAME`` arguments of ``tabst ingest st`` for the shared
    MOB sections (e.g. ``["MOB1", "MOB2"]``)."""
    out = []
    for s in sections:
        out += ["--section", f"{MOB}/{s}.tsv.gz,{MOB}/alignment_table_{s}.tsv,{MOB}/{s}.jpg,{s}"]
    return out


def write_tiny_store(path, *, n_samples=3, cells_per_sample=60, n_genes=12, emb_dim=16,
                     image_size=96, with_images=True, with_embedding=True, with_features=True,
                     seed=0, with_masks=False):
    """A small valid store: /cells, /images (PNG files beside it), /expression,
    optionally /embeddings/test and /features/morphology. ``with_masks``: each sample also gets
    a nucleus label TIFF (``mask_path``) with a disc of radius 3 px (label = row + 1) centred on
    the centre pixel of every even-numbered cell; odd cells have no nucleus of their own.
    Expression depends linearly on the embedding plus noise, so models have something to learn.
    Returns the path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    n = n_samples * cells_per_sample
    samples = np.repeat([f"S{i}" for i in range(n_samples)], cells_per_sample)
    tissues = np.where(np.arange(n) // cells_per_sample % 2 == 0, "tissueA", "tissueB")
    x = rng.uniform(4, image_size - 4, n)
    y = rng.uniform(4, image_size - 4, n)
    emb = rng.normal(size=(n, emb_dim)).astype(np.float32)
    W = rng.normal(size=(emb_dim, n_genes)) / np.sqrt(emb_dim)
    morph = np.column_stack([rng.uniform(20, 200, n), rng.uniform(0, 1, n), rng.uniform(0, 0.2, n)])
    expr = emb @ W + 0.02 * (morph[:, :1] - 100) + 0.3 * rng.normal(size=(n, n_genes))
    expr = np.log1p(np.exp(expr)).astype(np.float32)  # positive, log-like
    genes = np.array([f"GENE{i}" for i in range(n_genes)], dtype=object)
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    with create_store(path, provenance=build_provenance([], command=["tests"])) as f:
        c = f.create_group("cells")
        put(c, "cell_id", np.array([f"c{i}" for i in range(n)], dtype=object),
            description="unique cell identifier")
        put(c, "sample", samples.astype(object), description="sample (section) the cell belongs to")
        put(c, "tissue", tissues.astype(object), description="tissue type")
        put(c, "x", x, description="centroid x in the sample image", unit="px")
        put(c, "y", y, description="centroid y in the sample image", unit="px")
        g = f.create_group("images")
        for s in np.unique(samples):
            gs = g.create_group(s)
            if with_images:
                img = rng.integers(0, 255, size=(image_size, image_size, 3), dtype=np.uint8)
                p = os.path.join(base, f"{s}.png")
                Image.fromarray(img).save(p)
                mask_rel = ""
                if with_masks:
                    import tifffile

                    lab = np.zeros((image_size, image_size), dtype=np.uint32)
                    yy, xx = np.mgrid[0:image_size, 0:image_size]
                    for i in np.flatnonzero(samples == s):
                        if i % 2 == 0:
                            cy, cx = int(np.floor(y[i])), int(np.floor(x[i]))
                            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = i + 1
                    mp = os.path.join(base, f"{s}_mask.tif")
                    tifffile.imwrite(mp, lab)
                    mask_rel = relpath_from(mp, base)
                for k, v in dict(kind="file", path=relpath_from(p, base), mask_path=mask_rel,
                                 height=image_size, width=image_size, channels=3,
                                 pixel_size_um=float("nan"), spot_diameter_px=float("nan"),
                                 description=f"H&E image of sample {s}").items():
                    set_attr(gs, k, v)
        e = f.create_group("expression")
        put(e, "X", expr, description="expression, cells x genes", unit="log1p(count/total*100)",
            transform="log1p(count/total*100)")
        put(e, "genes", genes, description="gene names, columns of X")
        if with_embedding:
            eg = f.create_group("embeddings")
            put(eg, "test", emb, description="synthetic embedding (tests)", encoder="synthetic",
                layer="none", weights="random", patch_size=32, complete=True)
        if with_features:
            fg = f.create_group("features")
            put(fg, "morphology", morph.astype(np.float32), description="synthetic morphology",
                names=["nucleus_area", "hematoxylin_mean", "eosin_std"],
                groups=["morphology", "stain", "stain"])
    return path


@pytest.fixture
def tiny_store(tmp_path):
    return write_tiny_store(tmp_path / "tiny.h5")
