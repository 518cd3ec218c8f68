"""Synthetic demo data with a known ground truth, in the formats a user brings.

:func:`generate_demo_inputs` writes, under ``<out>/raw/``:

- ``images/<sample>.png`` -- H&E-like RGB images: hematoxylin-purple nuclei of varied size and
  shape on eosin-pink, fibrous stroma, with a few white gaps; rendered in HED stain space
  (:func:`skimage.color.hed2rgb`) so colour deconvolution (``rgb2hed``) gets the stains back;
- ``masks/<sample>_mask.tif`` -- nucleus label image (uint16, or uint32 above 65,535 cells):
  0 = background, ``k`` = the k-th cell of that sample in ``labels.csv`` (1-based);
- ``labels.csv`` -- cell_id, sample, tissue, x, y (nucleus centroid, px);
- ``expression.h5ad`` -- AnnData, rows in a *shuffled* order (ingest matches by cell id):
  X = log1p(count / total x 100) as in Crunch 1, ``layers["counts"]`` = raw counts (CSR).

and the ground truth beside ``raw/``:

- ``truth.json`` -- the generative model: cell types (nuclear area, elongation, hematoxylin),
  compartments, and for each *driver gene* (``MORPH_AREA_*``, ``MORPH_ECC_*``, ``STAIN_H_*``)
  the interpretable feature that drives it, its sign and strength, with the feature's exact
  definition, so explanations can be checked against it;
- ``truth_cells.csv`` -- per cell: latent type, compartment and the realised driver values.

Generative model (per sample; 2 tissues with different compartment mixes):
cells sit on a jittered grid, thinned with compartment-dependent density; compartments
(tumour / stroma / immune) come from smooth random fields; cell types are drawn from a
tissue x compartment composition; each type has its own nuclear area, aspect ratio and
hematoxylin load, area and aspect ratio varying independently within a type (so no axis length
is a near-copy of the area). After rendering, the driver features are *measured* from the mask and the
image exactly as a feature extractor would, and expression is drawn from them:
``log mu = gene baseline + type program + compartment + tissue + sample batch`` for every gene
but the driver genes, whose mean is set so that their *normalised* expression is linear in the
measured driver: ``E[X] ~ 1.2 + 0.3 x effect x z(driver)`` (a driver gene's expected share of
the cell's counts is ``expm1(that) / 100``; see :func:`_driver_means`); counts ~ negative
binomial (dispersion 5) around ``size_factor x mu``, with the other genes scaled to 400 counts
per cell on average whatever the panel size. Linear in X, because X is what the models
predict and explain: a log-linear driver effect at these expression levels makes X convex in
the driver, and then a monotone transform of it (an axis length for nuclear area) is a better
linear proxy than the driver itself.

:func:`run_demo` = generate + ingest (later: embed -> compare -> explain).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from .errors import TabstError

TRANSFORM = "log1p(count/total*100)"
PATCH = 32  # px, side of the patch used for the hematoxylin_mean driver
_R_MAX = 14  # px, largest nuclear semi-axis drawn
PIXEL_SIZE_UM = 1.0
NB_DISPERSION = 5.0
# driver genes: expected X = DRIVER_LEVEL + DRIVER_SCALE x effect x z(driver), clipped
DRIVER_LEVEL, DRIVER_SCALE, DRIVER_MIN, DRIVER_MAX = 1.2, 0.3, 0.05, 2.6
LIBRARY_COUNTS = 400.0  # mean counts per cell of the genes other than the driver genes

DEFAULT_SIZE = {"n_samples": 4, "cells_per_sample": 3000, "n_genes": 460}
QUICK_SIZE = {"n_samples": 3, "cells_per_sample": 150, "n_genes": 40}

TISSUES = ("tissue_A", "tissue_B")
COMPARTMENTS = ("tumour", "stroma", "immune")
# name, nuclear area (px^2, median), log-sd of area, aspect ratio (major/minor, median),
# hematoxylin OD. Within a type, area and aspect ratio vary independently with similar log-sds
# (area: the column; aspect: ASPECT_LOG_SD), so neither axis length is a near-copy of the area
# or of the elongation: each driver is identifiable from its own feature.
CELL_TYPES = (
    ("epithelial", 72.0, 0.28, 1.35, 0.085),
    ("lymphocyte", 26.0, 0.22, 1.08, 0.130),
    ("fibroblast", 42.0, 0.28, 3.20, 0.070),
    ("macrophage", 55.0, 0.26, 1.45, 0.055),
    ("endothelial", 34.0, 0.26, 2.60, 0.080),
)
ASPECT_LOG_SD = 0.28
# P(type | tissue, compartment); rows = compartments, columns = CELL_TYPES
COMPOSITION = {
    "tissue_A": [[0.78, 0.07, 0.06, 0.06, 0.03],
                 [0.05, 0.15, 0.50, 0.15, 0.15],
                 [0.04, 0.72, 0.08, 0.12, 0.04]],
    "tissue_B": [[0.66, 0.10, 0.08, 0.13, 0.03],
                 [0.04, 0.10, 0.58, 0.10, 0.18],
                 [0.05, 0.62, 0.08, 0.20, 0.05]],
}
COMPARTMENT_BIAS = {"tissue_A": (0.35, 0.0, -0.25), "tissue_B": (-0.1, 0.35, -0.15)}
DENSITY = {"tumour": 1.3, "stroma": 0.55, "immune": 1.8}

# driver genes: name -> (driver, effect); E[X] moves by DRIVER_SCALE x effect per SD of the driver
DRIVER_GENES = {
    "MORPH_AREA_1": ("nucleus_area", +1.0),
    "MORPH_AREA_2": ("nucleus_area", +0.7),
    "MORPH_AREA_3": ("nucleus_area", -0.8),
    "STAIN_H_1": ("hematoxylin_mean", +1.0),
    "STAIN_H_2": ("hematoxylin_mean", +0.7),
    "STAIN_H_3": ("hematoxylin_mean", -0.8),
    "MORPH_ECC_1": ("nucleus_eccentricity", +0.9),
    "MORPH_ECC_2": ("nucleus_eccentricity", -0.7),
}
DRIVERS = {
    "nucleus_area": "number of pixels of the cell's label in the nucleus mask (px^2)",
    "nucleus_eccentricity": "eccentricity of the nucleus mask region, sqrt(1 - l2/l1) of its "
                            "pixel-coordinate covariance (as skimage.measure.regionprops)",
    "hematoxylin_mean": f"mean of skimage.color.rgb2hed(image)[..., 0] over the {PATCH}x{PATCH} "
                        f"px patch centred on the centroid (rows round(y)-{PATCH // 2} .. "
                        f"round(y)+{PATCH // 2 - 1}, same for columns)",
}
MARKERS = {
    "epithelial": ["EPCAM", "KRT8", "KRT18", "CDH1", "KRT19", "CLDN4", "ELF3", "MUC1"],
    "lymphocyte": ["PTPRC", "CD3E", "CD2", "CD52", "CCR7", "MS4A1", "CD79A", "IL7R"],
    "fibroblast": ["COL1A1", "COL1A2", "DCN", "LUM", "PDGFRA", "FBLN1", "ACTA2", "TAGLN"],
    "macrophage": ["CD68", "CD163", "LYZ", "C1QA", "C1QB", "MRC1", "CSF1R", "AIF1"],
    "endothelial": ["PECAM1", "VWF", "CDH5", "CLDN5", "EMCN", "KDR", "PLVAP", "RAMP2"],
}
COMPARTMENT_GENES = {
    "tumour": ["VEGFA", "CA9", "SLC2A1", "NDRG1", "BNIP3", "PGK1"],
    "stroma": ["POSTN", "MMP2", "SPARC", "TIMP1", "CTHRC1", "COL11A1"],
    "immune": ["CXCL13", "CCL19", "CCL21", "LTB", "CXCL9", "IDO1"],
}


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------
def _smooth_field(rng, shape, sigma):
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.normal(size=shape), sigma, mode="reflect")
    return (f - f.mean()) / (f.std() + 1e-12)


def _layout(rng, n_cells: int, tissue: str):
    """Positions, compartments and image side for one sample."""
    spacing = 14.0
    margin = PATCH // 2 + 2
    slack = 2.2  # grid points per cell, thinned by compartment density
    side = int(np.ceil((np.sqrt(n_cells * slack) * spacing + 2 * margin) / 16.0) * 16)
    gy, gx = np.mgrid[margin + spacing / 2: side - margin - spacing / 2: spacing,
                      margin + spacing / 2: side - margin - spacing / 2: spacing]
    gx = gx.ravel() + rng.uniform(-0.25, 0.25, gx.size) * spacing
    gy = gy.ravel() + rng.uniform(-0.25, 0.25, gy.size) * spacing
    # compartments from three smooth fields at 1/8 resolution
    low = -(-side // 4)
    fields = np.stack([_smooth_field(rng, (low, low), low / 6) for _ in COMPARTMENTS])
    fields += np.asarray(COMPARTMENT_BIAS[tissue])[:, None, None]
    comp_map = np.repeat(np.repeat(fields.argmax(0), 4, 0), 4, 1)[:side, :side]
    comp = comp_map[np.clip(np.round(gy).astype(int), 0, side - 1),
                    np.clip(np.round(gx).astype(int), 0, side - 1)]
    w = np.asarray([DENSITY[c] for c in COMPARTMENTS])[comp]
    if gx.size < n_cells:  # cannot happen with slack > 1; kept as a guard
        raise RuntimeError("demo layout too small")
    pick = np.sort(rng.choice(gx.size, size=n_cells, replace=False, p=w / w.sum()))
    return gx[pick], gy[pick], comp[pick], side, comp_map


def _draw_nuclei(rng, x, y, types, side):
    """Ellipse parameters per cell and the label mask (value k = cell k, 1-based).

    Vectorised: every cell tests the pixels of a fixed window around its centre against its
    ellipse; where nuclei touch, the later cell wins.
    """
    n = len(x)
    med_area = np.array([t[1] for t in CELL_TYPES])[types]
    sd = np.array([t[2] for t in CELL_TYPES])[types]
    aspect0 = np.array([t[3] for t in CELL_TYPES])[types]
    area = med_area * np.exp(rng.normal(0, 1, n) * sd)
    aspect = np.maximum(1.0, aspect0 * np.exp(rng.normal(0, ASPECT_LOG_SD, n)))
    a = np.minimum(np.sqrt(area * aspect / np.pi), _R_MAX - 0.5)  # semi-major, px
    b = np.maximum(np.sqrt(area / (np.pi * aspect)), 1.0)  # semi-minor, px
    rot = rng.uniform(-np.pi, np.pi, n)
    dtype = np.uint16 if n < 65535 else np.uint32
    mask = np.zeros((side, side), dtype=dtype)
    off = np.arange(-_R_MAX, _R_MAX + 1)
    dr, dc = np.meshgrid(off, off, indexing="ij")
    dr, dc = dr.ravel(), dc.ravel()
    cy, cx = np.round(y).astype(np.int64), np.round(x).astype(np.int64)
    for lo in range(0, n, 2048):  # bounded temporary memory
        hi = min(n, lo + 2048)
        rr = cy[lo:hi, None] + dr[None, :]
        cc = cx[lo:hi, None] + dc[None, :]
        ddy, ddx = rr - y[lo:hi, None], cc - x[lo:hi, None]
        cos, sin = np.cos(rot[lo:hi, None]), np.sin(rot[lo:hi, None])
        u = ddx * cos + ddy * sin
        v = -ddx * sin + ddy * cos
        inside = (u / a[lo:hi, None]) ** 2 + (v / b[lo:hi, None]) ** 2 <= 1.0
        inside &= (rr >= 0) & (rr < side) & (cc >= 0) & (cc < side)
        k = np.nonzero(inside)
        mask[rr[k], cc[k]] = (np.arange(lo, hi) + 1).astype(dtype)[k[0]]
    return mask


def _render(rng, mask, h_level, comp_map, side):
    """H&E-like RGB uint8 image from the mask and per-cell hematoxylin levels."""
    from scipy.ndimage import gaussian_filter
    from skimage.color import hed2rgb
    from skimage.draw import ellipse

    f32 = np.float32
    lab = mask.astype(np.int64)
    nuc = lab > 0
    half = side // 2
    # stroma: eosin with fibres (anisotropic noise at half resolution), white gaps
    fib = gaussian_filter(rng.standard_normal((half, half), dtype=f32), (0.6, 3.0))
    fib += 0.6 * gaussian_filter(rng.standard_normal((half, half), dtype=f32), (2.0, 0.6))
    fib = np.repeat(np.repeat(np.tanh(fib / (fib.std() + 1e-9)), 2, 0), 2, 1)[:side, :side]
    E = np.asarray([0.026, 0.045, 0.034], dtype=f32)[comp_map] * (1 + 0.35 * fib)
    gaps = np.zeros((side, side), dtype=bool)  # lumina / fat: a few white ellipses
    for _ in range(int(rng.poisson(side * side / 60000.0)) + 1):
        rr, cc = ellipse(rng.uniform(0, side), rng.uniform(0, side), rng.uniform(4, 16),
                         rng.uniform(4, 22), shape=gaps.shape, rotation=rng.uniform(0, np.pi))
        gaps[rr, cc] = True
    E[gaps & ~nuc] *= 0.06
    texture = rng.standard_normal((side, side), dtype=f32)
    H = np.asarray([0.016, 0.005, 0.009], dtype=f32)[comp_map] * (1 + 0.25 * np.abs(texture))
    chrom = 1 + 0.18 * gaussian_filter(texture, 0.8) / 0.2
    H[nuc] = np.concatenate([[0.0], h_level]).astype(f32)[lab[nuc]] * chrom[nuc]
    E[nuc] *= 0.5
    H = gaussian_filter(H, 0.6)
    hed = np.stack([np.clip(H, 0, None), np.clip(E, 0, None), np.zeros_like(H)], -1)
    rgb = hed2rgb(hed) * 255.0 + rng.normal(0, 2.0, (side, side, 1))
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _measure(mask, rgb, x, y, n):
    """Realised driver features, measured the way a feature extractor does."""
    from skimage.color import rgb2hed

    lab = mask.ravel().astype(np.int64)
    yy, xx = np.divmod(np.arange(lab.size), mask.shape[1])
    sel = lab > 0
    lab, xx, yy = lab[sel], xx[sel].astype(np.float64), yy[sel].astype(np.float64)
    cnt = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    safe = np.maximum(cnt, 1)

    def s(w):
        return np.bincount(lab, weights=w, minlength=n + 1)[1:] / safe
    mx, my = s(xx), s(yy)
    cxx = s(xx * xx) - mx ** 2
    cyy = s(yy * yy) - my ** 2
    cxy = s(xx * yy) - mx * my
    tr, det = cxx + cyy, cxx * cyy - cxy ** 2
    disc = np.sqrt(np.maximum(tr ** 2 / 4 - det, 0))
    l1, l2 = tr / 2 + disc, tr / 2 - disc
    ecc = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / np.where(l1 > 0, l1, 1), 0, 1)), 0.0)
    hmap = rgb2hed(rgb)[..., 0]
    ii = np.pad(hmap.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    r0 = np.clip(np.round(y).astype(int) - PATCH // 2, 0, mask.shape[0] - PATCH)
    c0 = np.clip(np.round(x).astype(int) - PATCH // 2, 0, mask.shape[1] - PATCH)
    r1, c1 = r0 + PATCH, c0 + PATCH
    hmean = (ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]) / PATCH ** 2
    return {"nucleus_area": cnt, "nucleus_eccentricity": ecc, "hematoxylin_mean": hmean}


def _gene_panel(n_genes: int):
    """Gene names and their roles: drivers, type markers, compartment genes, the rest."""
    drivers = list(DRIVER_GENES)
    per_type = 3 if n_genes < 100 else 8
    per_comp = 2 if n_genes < 100 else 6
    markers = {t: MARKERS[t][:per_type] for t in MARKERS}
    comps = {c: COMPARTMENT_GENES[c][:per_comp] for c in COMPARTMENT_GENES}
    named = drivers + [g for v in markers.values() for g in v] + [g for v in comps.values()
                                                                  for g in v]
    if n_genes < len(named):
        raise ValueError(f"n_genes must be at least {len(named)}")
    rest = [f"GENE{i:04d}" for i in range(1, n_genes - len(named) + 1)]
    return named + rest, markers, comps


def _expression(rng, n_genes, cells, feats, sample_of, tissue_of, n_samples):
    """Counts and normalised expression from the generative model."""
    genes, markers, comps = _gene_panel(n_genes)
    G, N = len(genes), len(cells["type"])
    gi = {g: i for i, g in enumerate(genes)}
    T, C = len(CELL_TYPES), len(COMPARTMENTS)
    base = rng.normal(np.log(0.5), 0.9, G)
    W_type = np.where(rng.random((G, T)) < 0.35, rng.normal(0, 0.5, (G, T)), 0.0)
    W_comp = np.where(rng.random((G, C)) < 0.25, rng.normal(0, 0.35, (G, C)), 0.0)
    W_tissue = np.where(rng.random((G, 2)) < 0.3, rng.normal(0, 0.35, (G, 2)), 0.0)
    W_batch = rng.normal(0, 0.08, (G, n_samples))
    tnames = [t[0] for t in CELL_TYPES]
    for t, gs in markers.items():
        for g in gs:
            j = gi[g]
            base[j] = np.log(0.15)
            W_type[j] = 0.0
            W_type[j, tnames.index(t)] = 2.8
    for c, gs in comps.items():
        for g in gs:
            j = gi[g]
            base[j] = np.log(0.3)
            W_comp[j] = 0.0
            W_comp[j, COMPARTMENTS.index(c)] = 1.8
    eta = (base[None, :] + W_type.T[cells["type"]] + W_comp.T[cells["compartment"]]
           + W_tissue.T[tissue_of] + W_batch.T[sample_of])
    size = np.exp(rng.normal(0, 0.25, N)) * (feats["nucleus_area"] / feats["nucleus_area"].mean()
                                            ) ** 0.3
    mu = size[:, None] * np.exp(eta)
    cols = [gi[g] for g in DRIVER_GENES]
    # sequencing depth independent of the panel size: the other genes average LIBRARY_COUNTS
    mu *= LIBRARY_COUNTS / np.delete(mu, cols, axis=1).sum(1).mean()
    mu[:, cols] = _driver_means(feats, mu, cols)
    p = NB_DISPERSION / (NB_DISPERSION + mu)
    counts = rng.negative_binomial(NB_DISPERSION, p).astype(np.int32)
    total = counts.sum(1, keepdims=True).astype(np.float64)
    norm = np.log1p(counts / np.maximum(total, 1) * 100.0).astype(np.float32)
    return genes, counts, norm, markers, comps


def _driver_targets(feats) -> np.ndarray:
    """Expected normalised expression of each driver gene, [N, len(DRIVER_GENES)].

    ``DRIVER_LEVEL + DRIVER_SCALE x effect x z(driver)``, linear in the *measured* driver
    (z = standardised over all cells), clipped to [``DRIVER_MIN``, ``DRIVER_MAX``].
    """
    z = {k: (v - v.mean()) / (v.std() + 1e-12) for k, v in feats.items()}
    t = np.stack([DRIVER_LEVEL + DRIVER_SCALE * beta * z[drv]
                  for drv, beta in DRIVER_GENES.values()], 1)
    return np.clip(t, DRIVER_MIN, DRIVER_MAX)


def _driver_means(feats, mu, cols) -> np.ndarray:
    """Mean counts of the driver genes so that their *normalised* expression is linear in
    their drivers.

    The target ``t`` (:func:`_driver_targets`) is on the scale of X = log1p(count/total x 100),
    so a driver gene's expected share of the cell's counts is ``f = expm1(t) / 100``. With
    ``R`` the summed mean of the other genes, ``mu_g = f_g R / (1 - sum f)`` gives each driver
    gene exactly share ``f_g`` of the expected total: no driver leaks into another driver
    gene through the total (a log-linear mean would make X ~ exp(effect) at these expression
    levels -- convex in the driver, so a monotone transform such as an axis length, not the
    driver itself, would be the best linear proxy).
    """
    f = np.expm1(_driver_targets(feats)) / 100.0
    rest = np.delete(mu, cols, axis=1).sum(1, keepdims=True)
    return f * rest / (1.0 - f.sum(1, keepdims=True))


def _spearman(a, b) -> float:
    import pandas as pd

    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def _paths(out: Path) -> dict:
    raw = out / "raw"
    return {"out": out, "raw": raw, "images": raw / "images", "masks": raw / "masks",
            "labels": raw / "labels.csv", "expression": raw / "expression.h5ad",
            "truth": out / "truth.json", "truth_cells": out / "truth_cells.csv"}


def generate_demo_inputs(out_dir, seed: int = 0, quick: bool = False, *,
                         n_samples: int | None = None, cells_per_sample: int | None = None,
                         n_genes: int | None = None, show_progress: bool = True) -> dict:
    """Write the demo's raw inputs and ground truth under ``out_dir``.

    Deterministic from ``seed``. Defaults: 4 samples (2 tissues) x 3,000 cells x 460 genes;
    ``quick``: 3 samples x 150 cells x 40 genes with small images (for tests).

    Returns
    -------
    dict
        Paths: ``out, raw, images, masks, labels, expression, truth, truth_cells`` and
        ``samples`` (list of sample names).
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    import tifffile
    from PIL import Image

    from .util import progress

    size = dict(QUICK_SIZE if quick else DEFAULT_SIZE)
    for k, v in (("n_samples", n_samples), ("cells_per_sample", cells_per_sample),
                 ("n_genes", n_genes)):
        if v is not None:
            size[k] = int(v)
    S, n_per = size["n_samples"], size["cells_per_sample"]
    if S < 2:
        raise ValueError("the demo needs at least 2 samples")
    out = Path(out_dir)
    P = _paths(out)
    for k in ("images", "masks"):
        P[k].mkdir(parents=True, exist_ok=True)
    root_rng = np.random.default_rng(seed)
    sample_seeds = root_rng.integers(0, 2 ** 63 - 1, size=S)
    samples, tissues = [], []
    for s in range(S):
        t = TISSUES[s % 2]
        samples.append(f"{'AB'[s % 2]}{s // 2 + 1}")
        tissues.append(t)

    per = {"cell_id": [], "sample": [], "tissue": [], "x": [], "y": [], "type": [],
           "compartment": []}
    feats = {k: [] for k in DRIVERS}
    bar_cm = progress(unit="samples", transient=True) if show_progress else None
    if bar_cm:
        bar_cm.start()
        task = bar_cm.add_task("demo images", total=S)
    try:
        for s, (name, tissue) in enumerate(zip(samples, tissues)):
            rng = np.random.default_rng(sample_seeds[s])
            x, y, comp, side, comp_map = _layout(rng, n_per, tissue)
            probs = np.asarray(COMPOSITION[tissue])[comp]
            u = rng.random(n_per)[:, None]
            types = (u > probs.cumsum(1)).sum(1).clip(0, len(CELL_TYPES) - 1)
            mask = _draw_nuclei(rng, x, y, types, side)
            h0 = np.array([t[4] for t in CELL_TYPES])[types]
            h_level = h0 * np.exp(rng.normal(0, 0.22, n_per))
            rgb = _render(rng, mask, h_level, comp_map, side)
            Image.fromarray(rgb).save(P["images"] / f"{name}.png", compress_level=1)
            tifffile.imwrite(P["masks"] / f"{name}_mask.tif", mask, compression="zlib")
            f = _measure(mask, rgb, x, y, n_per)
            for k in DRIVERS:
                feats[k].append(f[k])
            per["cell_id"] += [f"{name}_{i:05d}" for i in range(n_per)]
            per["sample"] += [name] * n_per
            per["tissue"] += [tissue] * n_per
            per["x"].append(np.round(x, 2))
            per["y"].append(np.round(y, 2))
            per["type"].append(types)
            per["compartment"].append(comp)
            if bar_cm:
                bar_cm.advance(task)
    finally:
        if bar_cm:
            bar_cm.stop()
    cells = {k: (np.concatenate(v) if isinstance(v[0], np.ndarray) else np.asarray(v, object))
             for k, v in per.items()}
    feats = {k: np.concatenate(v) for k, v in feats.items()}
    N = len(cells["cell_id"])
    sample_of = np.repeat(np.arange(S), n_per)
    tissue_of = np.asarray([TISSUES.index(t) for t in tissues])[sample_of]
    rng = np.random.default_rng(root_rng.integers(0, 2 ** 63 - 1))
    genes, counts, norm, markers, comps = _expression(rng, size["n_genes"], cells, feats,
                                                      sample_of, tissue_of, S)

    labels = pd.DataFrame({"cell_id": cells["cell_id"], "sample": cells["sample"],
                           "tissue": cells["tissue"], "x": cells["x"], "y": cells["y"]})
    labels.to_csv(P["labels"], index=False)
    order = rng.permutation(N)  # the expression file is in another order than the labels
    adata = ad.AnnData(X=norm[order], obs=pd.DataFrame(index=pd.Index(cells["cell_id"][order],
                                                                      name="cell_id")),
                       var=pd.DataFrame(index=pd.Index(genes, name="gene")))
    adata.layers["counts"] = sp.csr_matrix(counts[order])
    adata.uns["transform"] = TRANSFORM
    adata.uns["layers_counts"] = "raw counts (negative binomial draws)"
    adata.write_h5ad(P["expression"])

    tnames = [t[0] for t in CELL_TYPES]
    truth_cells = pd.DataFrame({
        "cell_id": cells["cell_id"], "sample": cells["sample"],
        "cell_type": np.asarray(tnames, object)[cells["type"]],
        "compartment": np.asarray(COMPARTMENTS, object)[cells["compartment"]],
        **{k: np.round(v, 6) for k, v in feats.items()},
        "total_counts": counts.sum(1)})
    truth_cells.to_csv(P["truth_cells"], index=False)
    gi = {g: i for i, g in enumerate(genes)}
    driver_genes = {}
    for g, (drv, beta) in DRIVER_GENES.items():
        rho = _spearman(feats[drv], norm[:, gi[g]])
        driver_genes[g] = {"driver": drv, "sign": int(np.sign(beta)),
                           "effect": beta,
                           "expected_X_per_sd": round(beta * DRIVER_SCALE, 4),
                           "observed_spearman": round(float(rho), 3)}
    names = list(DRIVERS)
    corr = np.corrcoef(np.stack([feats[k] for k in names]))
    truth = {
        "seed": seed, "quick": quick, "size": size, "samples": samples,
        "tissues": dict(zip(samples, tissues)), "pixel_size_um": PIXEL_SIZE_UM,
        "transform": TRANSFORM,
        "mask_values": "k = the k-th cell (1-based) of that sample in raw/labels.csv; 0 = background",
        "driver_genes": driver_genes,
        "drivers": DRIVERS,
        "driver_correlation": {a: {b: round(float(corr[i, j]), 3) for j, b in enumerate(names)}
                               for i, a in enumerate(names)},
        "cell_types": {t[0]: {"nucleus_area_median_px2": t[1], "aspect_ratio": t[3],
                              "hematoxylin_od": t[4], "markers": markers[t[0]]}
                       for t in CELL_TYPES},
        "compartments": {c: {"genes": comps[c], "density": DENSITY[c]} for c in COMPARTMENTS},
        "composition": COMPOSITION,
        "model": "log mu = baseline + type program + compartment + tissue + sample batch "
                 "(genes other than the driver genes); driver gene g: expected X = "
                 f"clip({DRIVER_LEVEL} + {DRIVER_SCALE} x effect_g x z(driver_g), {DRIVER_MIN}, "
                 f"{DRIVER_MAX}) with z the measured driver standardised over all cells, i.e. "
                 "mu_g = f_g x (sum of the other genes' mu) / (1 - sum of f), "
                 "f = expm1(expected X) / 100; counts ~ NB(mean = size x mu, "
                 f"dispersion {NB_DISPERSION}); X = {TRANSFORM}",
        "n_cells": int(N), "genes": genes,
    }
    P["truth"].write_text(json.dumps(truth, indent=2))
    P["samples"] = samples
    return P


def ingest_demo(paths: dict, store=None, *, force: bool = False, show_progress: bool = True,
                command=None) -> Path:
    """Ingest the raw demo inputs (from :func:`generate_demo_inputs`) with the label-table
    ingest, exactly as a user would (``tabst ingest table``). Returns the store path."""
    from .ingest.table import ingest_table

    store = Path(store) if store is not None else Path(paths["out"]) / "store.h5"
    ingest_table(paths["labels"], out=store, images=paths["images"], masks=paths["masks"],
                 expression=paths["expression"], transform=TRANSFORM,
                 pixel_size_um=PIXEL_SIZE_UM, force=force, show_progress=show_progress,
                 command=command if command is not None else sys.argv)
    return store


STAGES = ("data", "embed", "compare", "explain")


def run_demo(out, seed: int = 0, quick: bool = False, force: bool = False,
             show_progress: bool = True, stages=STAGES) -> dict:
    """The whole demo: generate raw inputs -> ingest -> embed -> compare -> explain.

    ``stages`` picks a prefix of :data:`STAGES` (``("data",)`` only generates and ingests).
    The embedding uses ResNet50 layer3 on 32 px patches with **random** weights (no download
    here); the reports say so in a banner. Returns the paths of everything written (``store``,
    ``truth``, raw inputs, ``run``, ``report``, ``explain``, ``driver_check``).
    """
    import time

    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages or list(stages) != list(STAGES[:len(stages)]):
        raise TabstError(f"demo stages must be a prefix of {', '.join(STAGES)} (got {stages}).")
    t0 = time.perf_counter()
    from .outputs import prepare_output

    out = prepare_output(out, "dir", exist_ok=True)  # a folder (or nothing yet), writable
    P = _paths(out)
    existing = [p for p in (out / "store.h5", P["raw"], P["truth"], out / "run") if p.exists()]
    if existing and not force:
        raise TabstError(f"{existing[0]} already exists. Pass --force to regenerate the demo "
                         "there, or choose another --out.")
    if P["raw"].exists():
        shutil.rmtree(P["raw"])
    paths = generate_demo_inputs(out, seed=seed, quick=quick, show_progress=show_progress)
    paths["store"] = ingest_demo(paths, out / "store.h5", force=True, show_progress=show_progress)
    if "embed" in stages:
        from .embed import embed_store

        paths["embedding"] = embed_store(paths["store"], encoder="resnet50", layer="layer3",
                                         patch_size=PATCH, weights="random", force=True,
                                         show_progress=show_progress)
    if "compare" in stages:
        from .compare import run_compare

        paths["run"] = run_compare(paths["store"], "quick", out / "run", force=True,
                                   show_progress=show_progress,
                                   command=["tabst", "demo", "--out", str(out)])
        paths["report"] = Path(paths["run"]) / "report.html"
    if "explain" in stages:
        from .explain import run_explain

        genes = list(DRIVER_GENES)
        paths["explain"] = run_explain(paths["run"], genes=genes, top_genes=0, seed=seed,
                                       show_progress=show_progress)
        paths["driver_check"] = check_drivers(paths["run"], paths["truth"])
    paths["seconds"] = time.perf_counter() - t0
    return paths


def check_drivers(run_dir, truth_path) -> Path:
    """For each ground-truth driver gene: the top readable feature each explained model names.

    Writes ``driver_check.json`` in the run folder: per gene the true driver, the gene's best
    model (highest gene-wise Pearson on it, whose explanation the report shows) with its top
    named feature and whether it is the driver, and the same for every other explained model.
    """
    import h5py

    from .explain import read_attributions, top_readable_feature
    from .store import get_str_list

    truth = json.loads(Path(truth_path).read_text())["driver_genes"]
    att = Path(run_dir) / "attributions.h5"
    with h5py.File(att, "r") as f:  # read the file once; rank from the in-memory results
        best = str(f.attrs.get("best_model", ""))
        per_gene = (dict(zip(get_str_list(f, "genes"), get_str_list(f, "best_model_per_gene")))
                    if "best_model_per_gene" in f.attrs else {})
    results = read_attributions(att)
    models = ([best] if best in results else []) + [m for m in results if m != best]
    rows = []
    for gene, t in truth.items():
        per_model = {}
        for m in models:
            top = top_readable_feature(results, gene, m)
            per_model[m] = {"top_feature": top, "match": top == t["driver"]}
        gene_best = per_gene.get(gene, best)  # whose explanation the report shows
        top = per_model[gene_best]["top_feature"]
        rows.append({"gene": gene, "driver": t["driver"], "sign": t["sign"],
                     "best_model": gene_best, "top_feature": top, "match": top == t["driver"],
                     "models": per_model})
    out = Path(run_dir) / "driver_check.json"
    out.write_text(json.dumps({"best_model": best, "models": models, "genes": rows,
                               "recovered": sum(r["match"] for r in rows), "of": len(rows)},
                              indent=2))
    return out
