"""The H&E thumbnail behind the report's spatial maps.

A thumbnail is a block-averaged copy of the part of a sample's image that holds its test
spots/cells (their bounding box plus a margin), read through the sample's image reader
(:func:`tabst.images.open_sample_image`) tile by tile, so a whole-slide image is never decoded
whole into memory. Its pixel frame is: thumbnail pixel ``(u, v)`` covers image pixels
``x0 + u*factor .. x0 + (u+1)*factor`` (and the same in y), so a spot at image position ``(x, y)``
is drawn at ``((x - x0) / factor, (y - y0) / factor)``.

The page must rebuild from the run folder alone, so the first report that can read the store
keeps the thumbnail in the run folder (``report_map_thumbnail.jpg`` + ``.json``, the image attrs
it came from beside the frame); later rebuilds use that copy when it is of the same sample and
region. Patch-based stores (one stored patch per spot, no section image) have no thumbnail.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import TabstError

CACHE_IMAGE = "report_map_thumbnail.jpg"
CACHE_META = "report_map_thumbnail.json"
MAX_SIDE = 1200  # thumbnail pixels along the longer side of the region
TILE = 2048  # image pixels per side of one read (rounded down to a multiple of the factor)


def region_of(x: np.ndarray, y: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box ``(x0, y0, x1, y1)`` of the points plus a margin: the median distance to the
    nearest other point (about one spot pitch, so edge spots are drawn whole) and 4 % of the
    span. It depends on the points alone, so a rebuilt page finds its kept thumbnail."""
    from scipy.spatial import cKDTree

    xy = np.column_stack([x, y]).astype(np.float64)
    span = max(float(np.ptp(x)), float(np.ptp(y)), 1.0)
    nn = float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1])) if len(xy) > 1 else 0.0
    m = (nn if np.isfinite(nn) else 0.0) + 0.04 * span
    return (int(math.floor(np.min(x) - m)), int(math.floor(np.min(y) - m)),
            int(math.ceil(np.max(x) + m)), int(math.ceil(np.max(y) + m)))


def read_thumbnail(store_path, sample: str, region, max_side: int = MAX_SIDE):
    """``(rgb uint8 [h, w, 3], meta)`` of ``region`` of ``sample``'s image, block-averaged so the
    longer side is at most ``max_side``; ``(None, reason)`` when the sample has no section image
    (patch-based store). ``meta`` holds the pixel frame (``x0``, ``y0``, ``factor``) and the
    image attrs (``kind``, ``path``, ``height``, ``width``, ``spot_diameter_px``,
    ``pixel_size_um``). Raises :class:`TabstError` when the image cannot be read."""
    from ..images import open_sample_image, sample_attrs

    attrs = sample_attrs(store_path, sample)
    reader = open_sample_image(store_path, attrs, sample)
    try:
        if getattr(reader, "patch_based", False):
            return None, (f"the store keeps one image patch per spot/cell (kind "
                          f"{attrs.get('kind')!r}), not a section image")
        H, W = int(reader.height), int(reader.width)
        x0, y0 = max(0, int(region[0])), max(0, int(region[1]))
        x1, y1 = min(W, int(region[2])), min(H, int(region[3]))
        if x1 <= x0 or y1 <= y0:
            return None, f"the spots lie outside the sample's {W}x{H} px image"
        f = max(1, math.ceil(max(x1 - x0, y1 - y0) / max_side))
        w, h = (x1 - x0) // f, (y1 - y0) // f  # drop a last partial block (< f px)
        if w < 1 or h < 1:
            return None, "the region of the spots is thinner than one thumbnail pixel"
        thumb = _block_mean(reader, x0, y0, w, h, f)
    finally:
        reader.close()
    meta = {"sample": sample, "x0": x0, "y0": y0, "factor": f, "thumb_width": w,
            "thumb_height": h, "kind": str(attrs.get("kind", "file")),
            "path": str(attrs.get("path", "")), "height": H, "width": W,
            "spot_diameter_px": _num(attrs.get("spot_diameter_px")),
            "pixel_size_um": _num(attrs.get("pixel_size_um"))}
    return thumb, meta


def _num(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _block_mean(reader, x0: int, y0: int, w: int, h: int, f: int) -> np.ndarray:
    """``[h, w, 3]`` mean of each ``f x f`` block of the image from ``(x0, y0)``, read in tiles."""
    out = np.empty((h, w, 3), dtype=np.uint8)
    step = max(1, TILE // f) * f  # image pixels per tile side, a multiple of f
    for ty in range(0, h * f, step):
        th = min(step, h * f - ty)
        for tx in range(0, w * f, step):
            tw = min(step, w * f - tx)
            win = reader.read_region(y0 + ty, x0 + tx, th, tw).astype(np.float32)
            blocks = win.reshape(th // f, f, tw // f, f, 3).mean(axis=(1, 3))
            out[ty // f: (ty + th) // f, tx // f: (tx + tw) // f] = np.rint(blocks)
    return out


def load_cached(run_dir: Path, sample: str, region):
    """The thumbnail kept in the run folder, if it is of ``sample`` and covers ``region``."""
    meta_p, img_p = run_dir / CACHE_META, run_dir / CACHE_IMAGE
    if not (meta_p.is_file() and img_p.is_file()):
        return None, None
    try:
        meta = json.loads(meta_p.read_text(encoding="utf-8"))
        if meta.get("sample") != sample or meta.get("region") != list(map(int, region)):
            return None, None
        from PIL import Image

        with Image.open(img_p) as im:
            thumb = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, TypeError):
        return None, None
    if thumb.shape[:2] != (meta.get("thumb_height"), meta.get("thumb_width")):
        return None, None
    return thumb, meta


def save_cached(run_dir: Path, thumb: np.ndarray, meta: dict, region) -> None:
    """Keep the thumbnail in the run folder (best effort: a read-only folder keeps none)."""
    from PIL import Image

    meta = {**meta, "region": list(map(int, region)),
            "description": "H&E thumbnail behind the report's maps (tabst report); see "
                           "tabst/report/thumbnail.py for its pixel frame"}
    tmp_img = run_dir / f".{CACHE_IMAGE}.tmp-{os.getpid()}"
    tmp_meta = run_dir / f".{CACHE_META}.tmp-{os.getpid()}"
    try:
        Image.fromarray(thumb).save(tmp_img, format="JPEG", quality=90)
        tmp_meta.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.replace(tmp_img, run_dir / CACHE_IMAGE)
        os.replace(tmp_meta, run_dir / CACHE_META)
    except OSError:
        for p in (tmp_img, tmp_meta):
            p.unlink(missing_ok=True)


def section_thumbnail(run_dir: Path, store_path, sample: str, region):
    """``(thumb, meta, note)``: the H&E of ``region`` from the run folder's copy or the store.

    ``thumb`` is None when there is none to draw; ``note`` then says why (for the caption)."""
    thumb, meta = load_cached(run_dir, sample, region)
    if thumb is not None:
        return thumb, meta, ""
    if not store_path or not Path(store_path).is_file():
        return None, None, (f"the store ({store_path or 'unknown'}) is not readable here, so the "
                            "maps are drawn without the H&E; rebuild the report where the store "
                            "is to add it")
    try:
        thumb, meta = read_thumbnail(store_path, sample, region)
    except TabstError as e:
        return None, None, f"the H&E image could not be read ({str(e).splitlines()[0]})"
    if thumb is None:
        return None, None, meta
    save_cached(run_dir, thumb, meta, region)
    return thumb, meta, ""


def cached_spot_diameter(run_dir: Path) -> float | None:
    """``spot_diameter_px`` recorded with the run folder's kept thumbnail (None: none)."""
    try:
        meta = json.loads((Path(run_dir) / CACHE_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return _num(meta.get("spot_diameter_px")) if isinstance(meta, dict) else None
