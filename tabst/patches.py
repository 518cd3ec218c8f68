"""Cell patches: square crops centred on each cell's ``x, y``, zero-padded at image edges.

Centre convention (pinned by tests)
-----------------------------------
Pixel ``(row i, column j)`` covers ``[j, j+1) x [i, i+1)`` in image coordinates, so the point
``(x, y)`` lies in pixel ``(floor(y), floor(x))``: the *centre pixel*. A patch of size ``P``
spans rows ``floor(y) - P//2 .. floor(y) - P//2 + P - 1`` (same for columns), so the centre
pixel sits at index ``P//2`` of the patch: the exact middle for odd ``P``, the lower-right pixel
of the central 2x2 block for even ``P`` (as ``img[y-16:y+16, x-16:x+16]`` with integer ``x, y``
in the Crunch 1 quickstarter). Pixels outside the image are 0.

Per-cell patch images (``per-cell`` / ``hest-patches`` kinds) are fitted to ``P x P`` with the
same convention around their own centre pixel ``(h//2, w//2)``: centre-cropped when larger,
zero-padded when smaller (``fit="crop"``, keeps the pixel scale), or resized
(``fit="resize"``). ``resize`` (optional) then rescales every patch to ``resize x resize``
(bilinear), e.g. 224 for ImageNet-sized inputs.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import TabstError


def patch_origin(x, y, size: int):
    """Top-left ``(y0, x0)`` (int64) of the ``size`` patch centred on ``(x, y)`` (vectorised)."""
    size = int(size)
    cy = np.floor(np.asarray(y, dtype=np.float64)).astype(np.int64)
    cx = np.floor(np.asarray(x, dtype=np.float64)).astype(np.int64)
    return cy - size // 2, cx - size // 2


def valid_box(y0: int, x0: int, size: int, height: int, width: int):
    """Slices ``(rows, cols)`` of the patch that lie inside a ``height x width`` image."""
    ra, rb = max(0, -y0), min(size, height - y0)
    ca, cb = max(0, -x0), min(size, width - x0)
    return slice(ra, max(ra, rb)), slice(ca, max(ca, cb))


def crop_patch(reader, x: float, y: float, size: int):
    """Crop the ``size x size`` patch centred on ``(x, y)`` from a region reader.

    Returns
    -------
    patch : uint8 ``[size, size, 3]``, zero outside the image.
    box : ``(row_slice, col_slice)`` of the patch part inside the image (for statistics that
        must ignore the padding).
    """
    y0, x0 = patch_origin(x, y, size)
    y0, x0 = int(y0), int(x0)
    patch = reader.read_region(y0, x0, size, size)
    return patch, valid_box(y0, x0, size, reader.height, reader.width)


def fit_patch(img: np.ndarray, size: int, fit: str = "crop"):
    """Fit a stored per-cell patch (any ``h x w``) to ``size x size``.

    ``fit="crop"``: the ``size`` window around the centre pixel ``(h//2, w//2)``, zero-padded
    where the image is smaller. ``fit="resize"``: centre-crop to a square of side ``min(h, w)``,
    then resize to ``size`` (bilinear). Returns ``(patch, box)`` like :func:`crop_patch`.
    """
    from .images import _Plane

    img = np.asarray(img)
    h, w = img.shape[:2]
    if fit == "resize":
        s = min(h, w)
        sq = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out = sq if s == size else resize_patch(sq, size)
        return out, (slice(0, size), slice(0, size))
    if fit != "crop":
        raise ValueError(f"fit must be 'crop' or 'resize', got {fit!r}")
    if (h, w) == (size, size):
        return img, (slice(0, size), slice(0, size))
    y0, x0 = h // 2 - size // 2, w // 2 - size // 2
    out = _Plane(img, "YXS" if img.ndim == 3 else "YX").read(y0, x0, size, size)
    if img.ndim == 2:
        out = out[:, :, 0]
    return out, valid_box(y0, x0, size, h, w)


def resize_patch(patch: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a uint8 ``[h, w, 3]`` patch to ``[size, size, 3]`` (PIL)."""
    from PIL import Image

    if patch.shape[0] == size and patch.shape[1] == size:
        return patch
    return np.asarray(Image.fromarray(patch).resize((size, size), Image.BILINEAR))


def parse_patch_size(value) -> int | str:
    """``32`` / ``"32"`` -> 32; ``"spot"`` -> ``"spot"`` (the sample's spot diameter);
    ``"auto"`` -> ``"auto"`` (resolved by ``tabst embed``: spot on spot stores, else 32);
    ``"112um"`` -> ``"112um"`` (a physical size: px from each sample's ``pixel_size_um``)."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("spot", "auto"):
            return v
        if v.endswith(("um", "µm")):
            try:
                um = float(v[:-2])
            except ValueError:
                um = float("nan")
            if not (math.isfinite(um) and um > 0):
                raise TabstError(f"--patch-um must be a positive number of micrometres, got "
                                 f"{value!r}")
            return f"{um:g}um"
        try:
            value = int(v)
        except ValueError:
            raise TabstError(f"--patch-size must be a number of pixels, 'spot' or 'auto', got "
                             f"{value!r}") \
                from None
    value = int(value)
    if value < 1:
        raise TabstError(f"--patch-size must be >= 1 px, got {value}")
    return value


def sample_patch_sizes(patch_size, images: dict) -> dict:
    """Patch size in px per sample. ``images`` maps sample -> ``/images/<sample>`` attrs.

    ``"spot"`` uses each sample's ``spot_diameter_px`` (rounded); ``"<X>um"`` is X µm over the
    sample's ``pixel_size_um`` (rounded; HEST's 112 µm at 0.5 µm/px = 224 px). A sample without
    the value it needs raises.
    """
    ps = parse_patch_size(patch_size)
    out = {}
    for s, a in images.items():
        if isinstance(ps, str) and ps.endswith("um"):
            um, px_um = float(ps[:-2]), float(a.get("pixel_size_um", float("nan")))
            if not (math.isfinite(px_um) and px_um > 0):
                raise TabstError(f"--patch-um {ps[:-2]}: sample {s!r} has no pixel size "
                                 "(pixel_size_um is NaN). Give the size in pixels "
                                 "(--patch-size N), or re-ingest with the pixel size.")
            out[s] = max(1, int(round(um / px_um)))
        elif ps == "spot":
            d = float(a.get("spot_diameter_px", float("nan")))
            if not math.isfinite(d) or d < 1:
                raise TabstError(f"--patch-size spot: sample {s!r} has no spot diameter "
                                 "(spot_diameter_px is NaN: cell-level data). Give a size in "
                                 "pixels, e.g. --patch-size 32.")
            out[s] = int(round(d))
        else:
            out[s] = int(ps)
    return out
