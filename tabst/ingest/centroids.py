"""Centroid and area of every label of a 2-D nucleus label image, read tile by tile.

Per tile the pixel count and the row / column sums of every label are accumulated, so a centroid
is exactly the whole-image :func:`skimage.measure.regionprops` centroid (mean of the pixel
coordinates, ``x`` = column, ``y`` = row) and a nucleus cut by tile borders is counted once.
Memory grows with the tile size, never with the image size. :func:`values_at` reads another
raster (e.g. a region mask) at given pixels, tile by tile, the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import TabstError

DEFAULT_TILE = 2048

@dataclass
class Centroids:
    """Per-label statistics of a label image (labels ascending, background 0 excluded)."""

    label: np.ndarray   # int64 [n]
    area: np.ndarray    # int64 [n], pixels
    y: np.ndarray       # float64 [n], mean row (regionprops centroid[0])
    x: np.ndarray       # float64 [n], mean column (regionprops centroid[1])
    n_tiles: int = 0

    def __len__(self) -> int:
        return len(self.label)


def _read_tile(labels, y0, y1, x0, x1) -> np.ndarray:
    part = labels[y0:y1, x0:x1]
    if hasattr(part, "compute"):  # dask: one synchronous read, no thread pool buffers
        part = part.compute(scheduler="synchronous")
    return np.asarray(part)


def _tile_sums(t: np.ndarray, y0: int, x0: int, strip_pixels: int = 1 << 19):
    """Labels present in tile ``t`` (origin y0, x0) with pixel counts and coordinate sums.

    The tile is processed in strips of about ``strip_pixels`` pixels, so the temporaries
    (indices, coordinate weights) stay small next to the tile itself.
    """
    h, w = t.shape
    if t.dtype.kind not in "iu":
        if t.dtype.kind == "f" and np.all(np.mod(t, 1) == 0):
            t = t.astype(np.int64)
        else:
            raise TabstError(f"nucleus label image has dtype {t.dtype}; labels must be integers.")
    lo, hi = int(t.min()), int(t.max())
    if lo < 0:
        raise TabstError(f"nucleus label image has negative label {lo} near row {y0}, column {x0}; "
                         "labels must be >= 0 (0 = background).")
    if hi == 0:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0), np.zeros(0)
    dense = hi - lo <= 4 * t.size + (1 << 16)
    if dense:  # dense label range: bincount straight on the values (fast, no sort)
        labels = np.arange(lo, hi + 1, dtype=np.int64)
    else:      # sparse huge ids: compact them first
        labels = np.unique(t).astype(np.int64)
    size = len(labels)
    count = np.zeros(size, np.int64)
    sy = np.zeros(size)
    sx = np.zeros(size)
    cols = np.arange(x0, x0 + w, dtype=np.float64)
    step = max(1, strip_pixels // max(w, 1))
    for r0 in range(0, h, step):
        part = t[r0:r0 + step]
        k = part.shape[0]
        idx = (part.ravel() - lo).astype(np.intp) if dense else \
            np.searchsorted(labels, part.ravel()).astype(np.intp)
        c = np.bincount(idx, minlength=size)
        count += c
        # row sums: each row contributes (row index x its label counts); exact in float64
        per_row = np.bincount(idx, weights=np.repeat(np.arange(y0 + r0, y0 + r0 + k,
                                                               dtype=np.float64), w),
                              minlength=size)
        sy += per_row
        sx += np.bincount(idx, weights=np.tile(cols, k), minlength=size)
    keep = (count > 0) & (labels != 0)
    return labels[keep], count[keep], sy[keep], sx[keep]


def _merge(parts):
    lab = np.concatenate([p[0] for p in parts])
    uniq, inv = np.unique(lab, return_inverse=True)
    n = len(uniq)
    cnt = np.bincount(inv, weights=np.concatenate([p[1] for p in parts]), minlength=n)
    sy = np.bincount(inv, weights=np.concatenate([p[2] for p in parts]), minlength=n)
    sx = np.bincount(inv, weights=np.concatenate([p[3] for p in parts]), minlength=n)
    return uniq, cnt.astype(np.int64), sy, sx


def label_centroids(labels, tile: int = DEFAULT_TILE, *, progress=None, description: str = "nuclei"
                    ) -> Centroids:
    """Centroid and area of every label of a 2-D label image, reading one tile at a time.

    Parameters
    ----------
    labels
        2-D array-like that supports slicing (dask / xarray / zarr / numpy), values = labels,
        0 = background. Only ``tile x tile`` pixels are materialised at once.
    tile
        Tile edge in pixels.
    progress
        Optional :func:`tabst.util.progress` instance; one task advances per tile.

    Returns
    -------
    Centroids
        Equal to whole-image ``skimage.measure.regionprops``: ``y, x = region.centroid``,
        ``area = region.area`` (a label split across tiles or in several pieces is one region).
    """
    if tile < 16:
        raise TabstError(f"--tile must be at least 16 pixels (got {tile}).")
    if getattr(labels, "ndim", 2) != 2:
        raise TabstError(f"nucleus label image must be 2-D (y, x); it has shape {labels.shape}.")
    H, W = (int(s) for s in labels.shape)
    ny, nx = math.ceil(H / tile), math.ceil(W / tile)
    task = progress.add_task(f"centroids {description}", total=ny * nx) if progress else None
    parts, pending = [], 0
    for ty in range(ny):
        for tx in range(nx):
            y0, x0 = ty * tile, tx * tile
            t = _read_tile(labels, y0, min(H, y0 + tile), x0, min(W, x0 + tile))
            parts.append(_tile_sums(t, y0, x0))
            del t
            pending += len(parts[-1][0])
            if len(parts) > 1 and pending > 250_000:  # keep partial sums compact
                parts = [_merge(parts)]
                pending = len(parts[0][0])
            if task is not None:
                progress.advance(task)
    if not parts:
        e = np.zeros(0, np.int64)
        return Centroids(e, e, np.zeros(0), np.zeros(0), 0)
    lab, cnt, sy, sx = _merge(parts)
    return Centroids(lab, cnt, sy / cnt, sx / cnt, ny * nx)



def values_at(raster, y, x, tile: int = DEFAULT_TILE, fill=0) -> np.ndarray:
    """Values of a 2-D raster at pixels ``(floor(y), floor(x))``, reading one tile at a time and
    only the tiles that hold a point (e.g. a region mask looked up at nucleus centroids).

    Points outside the raster get ``fill``. Returns an array of the raster's dtype (or of
    ``fill``'s type when the raster is empty).
    """
    H, W = (int(s) for s in raster.shape)
    iy = np.floor(np.asarray(y, dtype=np.float64)).astype(np.int64)
    ix = np.floor(np.asarray(x, dtype=np.float64)).astype(np.int64)
    inside = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    out = np.full(len(iy), fill, dtype=np.dtype(getattr(raster, "dtype", type(fill))))
    key = np.where(inside, (iy // tile) * (W // tile + 1) + ix // tile, -1)
    for k in np.unique(key[inside]):
        sel = np.flatnonzero(key == k)
        ty, tx = int(iy[sel[0]] // tile), int(ix[sel[0]] // tile)
        y0, x0 = ty * tile, tx * tile
        t = _read_tile(raster, y0, min(H, y0 + tile), x0, min(W, x0 + tile))
        out[sel] = t[iy[sel] - y0, ix[sel] - x0]
    return out
