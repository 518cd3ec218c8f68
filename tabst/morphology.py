"""Interpretable per-cell features -> ``/features/morphology`` (float32 [N, K]; names, groups).

Three groups, so that explanations speak biology rather than "embedding dimension 731":

``morphology`` (only when at least one sample has a nucleus mask)
    From the nucleus label under the cell's centre pixel (see :mod:`tabst.patches`), or, when
    that pixel is background, the nearest labelled pixel within the patch. The label's region is
    measured with :func:`skimage.measure.regionprops` in a window around the cell that grows
    (up to :data:`MAX_MASK_WINDOW` px) until the nucleus does not touch its border:
    ``nucleus_area`` (px²), ``nucleus_perimeter`` (px), ``nucleus_eccentricity``,
    ``nucleus_solidity``, ``nucleus_major_axis``, ``nucleus_minor_axis`` (px). Cells of samples
    without a mask, and cells with no nucleus in their patch, get NaN (never 0).
``stain``
    Colour deconvolution of the patch with :func:`skimage.color.rgb2hed` over the pixels inside
    the image (zero padding excluded): ``hematoxylin_mean/std``, ``eosin_mean/std``
    (optical-density units of rgb2hed).
``neighbourhood`` (µm columns only when some sample has a pixel size)
    Within the cell's sample (:class:`scipy.spatial.cKDTree` on ``x, y``): ``density_r{R}px``,
    other cells within R px per 10,000 px²; ``density_r{R}um``, within R µm per 10,000 µm² (NaN
    when the sample's pixel size is unknown); ``knn{k}_distance_px`` / ``_um``, distance to the
    k-th nearest other cell (NaN when the sample has fewer than k+1 cells or, for µm, no pixel
    size). No edge correction at tissue borders.

:func:`compute_features` runs one streaming, resumable pass over the patches (no encoder);
``tabst embed`` computes the same features in its own pass over the patches
(:func:`tabst.embed.embed_store`).
"""
from __future__ import annotations

import math

import numpy as np

MASK_FEATURES = ["nucleus_area", "nucleus_perimeter", "nucleus_eccentricity", "nucleus_solidity",
                 "nucleus_major_axis", "nucleus_minor_axis"]
MASK_UNITS = ["px^2", "px", "1", "1", "px", "px"]
STAIN_FEATURES = ["hematoxylin_mean", "hematoxylin_std", "eosin_mean", "eosin_std"]
MIN_MASK_WINDOW = 64
MAX_MASK_WINDOW = 512
FEATURES_NAME = "morphology"
DEFAULT_RADIUS_PX = 64.0
DEFAULT_RADIUS_UM = 50.0
DEFAULT_K = 5


def neighbourhood_names(radius_px: float = DEFAULT_RADIUS_PX, radius_um: float = DEFAULT_RADIUS_UM,
                        k: int = DEFAULT_K) -> list[str]:
    return [f"density_r{radius_px:g}px", f"density_r{radius_um:g}um", f"knn{k}_distance_px",
            f"knn{k}_distance_um"]


def feature_layout(with_mask: bool, with_um: bool = True, radius_px=DEFAULT_RADIUS_PX,
                   radius_um=DEFAULT_RADIUS_UM, k=DEFAULT_K, neighbourhood: bool = True):
    """``(names, groups, units, neighbourhood_columns)`` of the feature columns in order.

    Mask columns only when some sample has a nucleus mask, µm columns only when some sample
    has a pixel size (a column that is NaN for every cell helps no model), no neighbourhood
    columns with ``neighbourhood=False`` (spot stores: on a regular spot grid the density
    only marks the tissue edge). ``neighbourhood_columns`` indexes the columns of
    :func:`neighbourhood_features` kept.
    """
    names, groups, units = [], [], []
    if with_mask:
        names += MASK_FEATURES
        groups += ["morphology"] * len(MASK_FEATURES)
        units += MASK_UNITS
    names += STAIN_FEATURES
    groups += ["stain"] * len(STAIN_FEATURES)
    units += ["optical density"] * len(STAIN_FEATURES)
    cols = ([0, 1, 2, 3] if with_um else [0, 2]) if neighbourhood else []
    nn = neighbourhood_names(radius_px, radius_um, k)
    nu = ["cells / 10^4 px^2", "cells / 10^4 um^2", "px", "um"]
    names += [nn[c] for c in cols]
    groups += ["neighbourhood"] * len(cols)
    units += [nu[c] for c in cols]
    return names, groups, units, cols


# ---------------------------------------------------------------------------------------------
# per-cell pieces
# ---------------------------------------------------------------------------------------------

def stain_features(patch: np.ndarray, box=None) -> np.ndarray:
    """Mean/std of hematoxylin and eosin (rgb2hed) over ``patch[box]``; NaN if no pixels."""
    from skimage.color import rgb2hed

    px = patch if box is None else patch[box[0], box[1]]
    if px.size == 0:
        return np.full(4, np.nan, dtype=np.float32)
    hed = rgb2hed(px.reshape(-1, 1, 3))[:, 0, :2]
    return np.array([hed[:, 0].mean(), hed[:, 0].std(), hed[:, 1].mean(), hed[:, 1].std()],
                    dtype=np.float32)


def pick_label(mask: np.ndarray, cy: int, cx: int, search: int) -> int:
    """Label at ``mask[cy, cx]``; if background, the label of the nearest labelled pixel within
    the ``search x search`` box centred there (ties: smallest label); 0 when none."""
    lab = int(mask[cy, cx])
    if lab:
        return lab
    h, w = mask.shape
    y0, x0 = max(0, cy - search // 2), max(0, cx - search // 2)
    sub = mask[y0:min(h, cy - search // 2 + search), x0:min(w, cx - search // 2 + search)]
    ys, xs = np.nonzero(sub)
    if len(ys) == 0:
        return 0
    d2 = (ys + y0 - cy) ** 2 + (xs + x0 - cx) ** 2
    best = d2 == d2.min()
    return int(sub[ys[best], xs[best]].min())


def region_features(region: np.ndarray) -> np.ndarray:
    """The :data:`MASK_FEATURES` of a binary region (skimage regionprops)."""
    from skimage.measure import regionprops

    props = regionprops(region.astype(np.uint8))
    if not props:
        return np.full(len(MASK_FEATURES), np.nan, dtype=np.float32)
    p = props[0]
    return np.array([p.area, p.perimeter, p.eccentricity, p.solidity, p.axis_major_length,
                     p.axis_minor_length], dtype=np.float32)


_PERIMETER_WEIGHTS = np.zeros(50, dtype=np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + math.sqrt(2)) / 2
_CROSS = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], dtype=bool)
_PERIMETER_KERNEL = np.array([[[10, 2, 10], [2, 1, 2], [10, 2, 10]]], dtype=np.uint8)


def regions_features(stack: np.ndarray) -> np.ndarray:
    """:data:`MASK_FEATURES` of a stack of binary regions ``[b, h, w]`` at once.

    Equal (to float rounding) to :func:`region_features` on each region, i.e. to skimage's
    ``regionprops``: area = pixel count; the axes and eccentricity from the eigenvalues of the
    inertia tensor of the central moments; the perimeter is skimage's 4-neighbourhood
    ``perimeter`` (border pixels weighted by their configuration); solidity = area / area of
    ``convex_hull_image`` of the region's bounding box (the only per-region step). A region
    with no pixel gives NaN.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import convex_hull_image

    R = _packed(np.asarray(stack, dtype=bool))
    b, h, w = R.shape
    out = np.full((b, len(MASK_FEATURES)), np.nan, dtype=np.float32)
    if b == 0:
        return out
    area = R.sum(axis=(1, 2)).astype(np.float64)
    ok = area > 0
    a = np.where(ok, area, 1.0)
    prof_r, prof_c = R.sum(axis=2).astype(np.float64), R.sum(axis=1).astype(np.float64)
    r, c = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    rc, cc = prof_r @ r / a, prof_c @ c / a
    dr, dc = r[None, :] - rc[:, None], c[None, :] - cc[:, None]
    mu20 = (prof_r * dr * dr).sum(axis=1)
    mu02 = (prof_c * dc * dc).sum(axis=1)
    mu11 = np.einsum("bhw,bh,bw->b", R, dr, dc)
    tensor = np.empty((b, 2, 2))
    tensor[:, 0, 0], tensor[:, 1, 1] = mu02 / a, mu20 / a
    tensor[:, 0, 1] = tensor[:, 1, 0] = -mu11 / a
    ev = np.clip(np.linalg.eigvalsh(tensor), 0, None)  # ascending
    l1, l2 = ev[:, 1], ev[:, 0]
    ecc = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / np.where(l1 > 0, l1, 1), 0, None)), 0.0)
    border = R.astype(np.uint8) - ndi.binary_erosion(R, _CROSS, border_value=0)
    conf = ndi.convolve(border, _PERIMETER_KERNEL, mode="constant", cval=0)
    perimeter = _PERIMETER_WEIGHTS[conf].sum(axis=(1, 2))
    convex = np.ones(b)
    for j in np.flatnonzero(ok):  # the one per-region step (Qhull)
        convex[j] = np.count_nonzero(convex_hull_image(R[j]))
    feats = np.column_stack([area, perimeter, ecc, area / convex, 4 * np.sqrt(l1),
                             4 * np.sqrt(l2)])
    out[ok] = feats[ok]
    return out


def _packed(R: np.ndarray) -> np.ndarray:
    """The regions moved to the top-left of the smallest common canvas (one empty pixel
    around each): every feature is translation invariant, and the stack shrinks from the
    read windows (64+ px) to the nuclei's size."""
    b = R.shape[0]
    rows, cols = R.any(axis=2), R.any(axis=1)
    has = rows.any(axis=1)
    if b == 0 or not has.any():
        return R[:, :1, :1] if b else R
    r0, r1 = rows.argmax(axis=1), R.shape[1] - rows[:, ::-1].argmax(axis=1)
    c0, c1 = cols.argmax(axis=1), R.shape[2] - cols[:, ::-1].argmax(axis=1)
    hh, ww = int((r1 - r0)[has].max()) + 2, int((c1 - c0)[has].max()) + 2
    out = np.zeros((b, hh, ww), dtype=bool)
    for j in np.flatnonzero(has):
        out[j, 1:1 + r1[j] - r0[j], 1:1 + c1[j] - c0[j]] = R[j, r0[j]:r1[j], c0[j]:c1[j]]
    return out


def batch_nucleus_features(read_mask, xs, ys, patch_size: int) -> np.ndarray:
    """:func:`nucleus_features` of many cells: ``float32 [b, 6]``, the same values.

    Each cell's label is picked in a ``max(64, 2P)`` window as there; the regions that do not
    touch the window's border (nearly all nuclei) are measured together by
    :func:`regions_features`; the rest take the per-cell path that grows the window.
    """
    win = max(MIN_MASK_WINDOW, 2 * int(patch_size))
    out = np.full((len(xs), len(MASK_FEATURES)), np.nan, dtype=np.float32)
    stack, where = [], []
    for j, (x, y) in enumerate(zip(xs, ys)):
        cy, cx = int(math.floor(y)), int(math.floor(x))
        m = read_mask(cy - win // 2, cx - win // 2, win, win)
        if m is None:
            continue
        lab = pick_label(m, win // 2, win // 2, int(patch_size))
        if lab == 0:
            continue
        region = m == lab
        if region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any():
            out[j] = nucleus_features(read_mask, x, y, patch_size)
        else:
            stack.append(region)
            where.append(j)
    if stack:
        out[where] = regions_features(np.stack(stack))
    return out


def nucleus_features(read_mask, x: float, y: float, patch_size: int) -> np.ndarray:
    """Mask features of the cell at ``(x, y)``.

    ``read_mask(y0, x0, h, w)`` returns labels of that window (a region reader's
    ``read_mask_region``). The nucleus is chosen within the ``patch_size`` patch; it is measured
    in a window that doubles until the nucleus does not touch the border.
    """
    cy, cx = int(math.floor(y)), int(math.floor(x))
    win = max(MIN_MASK_WINDOW, 2 * int(patch_size))
    lab = None
    while True:
        y0, x0 = cy - win // 2, cx - win // 2
        m = read_mask(y0, x0, win, win)
        if m is None:
            return np.full(len(MASK_FEATURES), np.nan, dtype=np.float32)
        if lab is None:
            lab = pick_label(m, win // 2, win // 2, int(patch_size))
            if lab == 0:
                return np.full(len(MASK_FEATURES), np.nan, dtype=np.float32)
        region = m == lab
        touches = region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any()
        if not touches or win >= MAX_MASK_WINDOW:
            return region_features(region)
        win *= 2


def patch_nucleus_features(mask: np.ndarray, patch_size: int) -> np.ndarray:
    """Mask features from a label patch aligned with a per-cell patch (centre ``(h//2, w//2)``)."""
    if mask is None:
        return np.full(len(MASK_FEATURES), np.nan, dtype=np.float32)
    h, w = mask.shape[:2]
    lab = pick_label(mask, h // 2, w // 2, int(patch_size))
    if lab == 0:
        return np.full(len(MASK_FEATURES), np.nan, dtype=np.float32)
    return region_features(mask == lab)


def neighbourhood_features(x, y, samples, pixel_size_um: dict, radius_px=DEFAULT_RADIUS_PX,
                           radius_um=DEFAULT_RADIUS_UM, k=DEFAULT_K) -> np.ndarray:
    """``float32 [N, 4]`` neighbourhood features (see module docstring), computed per sample."""
    from scipy.spatial import cKDTree

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    samples = np.asarray(samples)
    out = np.full((len(x), 4), np.nan, dtype=np.float32)
    for s in np.unique(samples):
        idx = np.flatnonzero(samples == s)
        pts = np.column_stack([x[idx], y[idx]])
        tree = cKDTree(pts)
        n_px = tree.query_ball_point(pts, r=radius_px, return_length=True) - 1
        out[idx, 0] = n_px / (math.pi * radius_px ** 2) * 1e4
        if len(idx) > k:
            d, _ = tree.query(pts, k=k + 1)
            out[idx, 2] = d[:, k]
        pus = float(pixel_size_um.get(s, float("nan")))
        if math.isfinite(pus) and pus > 0:
            r = radius_um / pus
            n_um = tree.query_ball_point(pts, r=r, return_length=True) - 1
            out[idx, 1] = n_um / (math.pi * radius_um ** 2) * 1e4
            out[idx, 3] = out[idx, 2] * pus
    return out


def compute_features(store_path, patch_size=32, *, batch_size: int = 256, workers=None,
                     per_cell_fit: str = "crop", force: bool = False, show_progress: bool = True,
                     radius_px: float = DEFAULT_RADIUS_PX, radius_um: float = DEFAULT_RADIUS_UM,
                     k: int = DEFAULT_K, cluster: str | None = None,
                     _stop_after_batches=None) -> str:
    """Compute ``/features/morphology`` in one streaming, resumable pass (no encoder);
    ``cluster``: on Dask workers (:mod:`tabst.embed_dask`), the same values.

    Interrupted runs resume from the attr ``rows_done``; ``complete`` is set at the end. An
    existing complete result with the same settings is kept (returns at once); different
    settings need ``force=True``. Returns the feature set's name (``"morphology"``).
    """
    from .embed import run_pipeline

    run_pipeline(store_path, encoder=None, patch_size=patch_size, batch_size=batch_size,
                 workers=workers, per_cell_fit=per_cell_fit, force=force, features=True,
                 cluster=cluster, show_progress=show_progress,
                 feature_params=dict(radius_px=float(radius_px), radius_um=float(radius_um),
                                     k=int(k)),
                 _stop_after_batches=_stop_after_batches)
    return FEATURES_NAME
