"""Lazy reads of SpatialData raster elements straight from the zarr (no spatialdata import).

:func:`open_zarr_raster` finds an element among the zarr's Images or Labels (single arrays or
OME-NGFF multiscale groups, zarr v2 or v3); :class:`ZarrSampleImage` is the region reader
(``kind="spatialdata"``, see :mod:`tabst.images`) of one sample's H&E image and nucleus mask.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np

from ..chunk_cache import ChunkCache
from ..errors import InputError

IMAGE_ELEMENT = "HE_original"
MASK_ELEMENT = "HE_nuc_original"


@contextlib.contextmanager
def _quiet():
    """Silence the warnings / log lines spatialdata, ome-zarr and zarr print while reading."""
    loggers = [logging.getLogger(n) for n in ("ome_zarr", "spatialdata", "xarray_schema")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _multiscale_meta(attrs) -> dict | None:
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    return ms[0] if ms else None


RASTER_KINDS = ("images", "labels")


def sample_name(path) -> str:
    """Sample name of a zarr: its stem (``data/UC1_NI.zarr`` -> ``UC1_NI``)."""
    name = Path(path).name
    return name[:-5] if name.lower().endswith(".zarr") else Path(path).stem


def open_zarr_raster(zarr_path, kinds, element: str):
    """The full-resolution zarr array of a SpatialData raster element, its axis names and the
    kind it was found under.

    Parameters
    ----------
    zarr_path
        SpatialData zarr folder.
    kinds
        ``"images"``, ``"labels"`` or a sequence of them, searched in order (a Crunch 1 nucleus
        mask is an *Image* ``(1, y, x)``; other tools write it as *Labels* ``(y, x)``).
    element
        Element name, e.g. ``HE_nuc_original``.

    Returns
    -------
    (zarr.Array, tuple of str, str)
        Handles single arrays and OME-NGFF multiscale groups (``0`` or ``s0`` datasets; zarr v2
        or v3).
    """
    import zarr

    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    zarr_path = Path(zarr_path)
    try:
        with _quiet():
            root = zarr.open_group(str(zarr_path), mode="r")
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot open the zarr ({type(e).__name__}: {e}).", file=zarr_path,
                         fix="the store references this SpatialData zarr by a path relative to "
                             "the store; keep them side by side or re-ingest") from None
    kind = next((k for k in kinds if f"{k}/{element}" in root), None)
    if kind is None:
        have = "; ".join(f"{k}: {', '.join(map(repr, root[k].keys())) if k in root else '(none)'}"
                         for k in kinds)
        what = " or ".join(k[:-1] for k in kinds)
        raise InputError(f"no {what} '{element}' in the zarr (it has {have}).", file=zarr_path)
    node = root[f"{kind}/{element}"]
    if isinstance(node, zarr.Array):
        return node, _default_axes(node.ndim), kind
    meta = _multiscale_meta(dict(node.attrs))
    if meta:
        arr = node[meta["datasets"][0]["path"]]
        axes = tuple(a["name"] if isinstance(a, dict) else str(a) for a in meta.get("axes", ())) \
            or _default_axes(arr.ndim)
        return arr, axes, kind
    arrays = sorted(k for k, v in node.arrays())
    if not arrays:
        raise InputError(f"{kind[:-1]} '{element}' holds no array.", file=zarr_path)
    arr = node[arrays[0]]
    return arr, _default_axes(arr.ndim), kind


def _default_axes(ndim: int) -> tuple:
    return ("c", "y", "x") if ndim == 3 else ("y", "x")


def mask_plane(axes, shape, element: str, file) -> int | None:
    """Check a nucleus mask's axes: ``(y, x)`` -> ``None``; ``(c, y, x)`` with one channel (a
    Crunch 1 mask stored as an Image) -> the channel axis, read at index 0. Else InputError."""
    if set(axes) == {"y", "x"}:
        return None
    if set(axes) == {"c", "y", "x"}:
        c = tuple(axes).index("c")
        if int(shape[c]) == 1:
            return c
        raise InputError(f"nucleus mask '{element}' has {shape[c]} channels; a mask image must "
                         "have one (pixel value = cell id).", file=file,
                         fix="name the nucleus mask with --mask-element")
    raise InputError(f"nucleus mask '{element}' has axes {tuple(axes)}, expected (y, x) or "
                     "(c, y, x) with one channel.", file=file)


class ZarrSampleImage:
    """Reader (``kind="spatialdata"``) of one sample's H&E image and nucleus mask inside its
    SpatialData zarr, following the region-reader protocol of :mod:`tabst.images`.

    Only the chunks a region touches are read (and kept in a small LRU cache of decoded chunks,
    ``cache_mb`` per array); the image is never loaded whole. The zarr arrays are opened
    directly with ``zarr`` (no spatialdata import: fast to create in DataLoader workers).

    Parameters
    ----------
    store_path
        The store file; ``attrs["path"]`` (and ``mask_path``) are relative to its folder.
    sample
        Sample name (for messages).
    attrs
        ``/images/<sample>`` attrs: ``path``, ``element``, ``mask_element``, ``mask_path``,
        ``height``, ``width``.

    Use :meth:`from_zarr` to open a zarr without a store.
    """

    kind = "spatialdata"
    patch_based = False

    def __init__(self, store_path, sample: str = "", attrs: dict | None = None, *,
                 cache_mb: float = 256):
        from ..images import recorded_path, resolve_path

        attrs = dict(attrs or {})
        self.sample = sample
        path = recorded_path(store_path, sample, attrs, what="zarr",
                             remedy="Re-run `tabst ingest crunch`.")
        mrel = str(attrs.get("mask_path", "") or "")
        mask_path = resolve_path(store_path, mrel) if mrel else path
        self._open(path, str(attrs.get("element", "") or IMAGE_ELEMENT),
                   str(attrs.get("mask_element", "") or "") or None, mask_path, cache_mb)
        h, w = int(attrs.get("height", 0) or 0), int(attrs.get("width", 0) or 0)
        if h > 0 and w > 0 and (h, w) != (self.height, self.width):
            raise InputError(f"image '{self.element}' is {self.height}x{self.width} px but the "
                             f"store recorded {h}x{w} for sample {sample!r}", file=self.path,
                             fix="the zarr changed since ingest: re-run `tabst ingest crunch`")

    @classmethod
    def from_zarr(cls, path, element: str = IMAGE_ELEMENT,
                  mask_element: str | None = MASK_ELEMENT, *, cache_mb: float = 256):
        """Open a SpatialData zarr directly (no store)."""
        self = cls.__new__(cls)
        self.sample = sample_name(path)
        self._open(Path(path), element, mask_element, Path(path), cache_mb)
        return self

    def _open(self, path: Path, element: str, mask_element: str | None, mask_path: Path,
              cache_mb: float) -> None:
        self.path, self.element, self.mask_element = Path(path), element, mask_element
        if not self.path.exists():
            raise InputError("the sample's SpatialData zarr does not exist", file=self.path,
                             fix="the store records the zarr path relative to its own folder: keep "
                                 "the zarr beside the store, or re-run `tabst ingest crunch`")
        arr, axes, _ = open_zarr_raster(self.path, "images", element)
        if set(axes) != {"c", "y", "x"}:
            raise InputError(f"image '{element}' has axes {axes}, expected (c, y, x).",
                             file=self.path)
        self._c_axis = axes.index("c")
        self._img = ChunkCache(arr, axes.index("y"), axes.index("x"), int(cache_mb * 2**20))
        self.height = self._img.shape[axes.index("y")]
        self.width = self._img.shape[axes.index("x")]
        self.channels = int(arr.shape[self._c_axis])
        self.dtype = np.dtype(arr.dtype)
        self._mask, self.mask_kind, self._mask_c, self._mask_t = None, None, None, False
        if mask_element:
            marr, maxes, self.mask_kind = open_zarr_raster(mask_path, RASTER_KINDS, mask_element)
            self._mask_c = mask_plane(maxes, marr.shape, mask_element, mask_path)
            self._mask = ChunkCache(marr, maxes.index("y"), maxes.index("x"),
                                     int(cache_mb * 2**20))
            self._mask_t = maxes.index("y") > maxes.index("x")
            my, mx = self._mask.shape[maxes.index("y")], self._mask.shape[maxes.index("x")]
            if (my, mx) != (self.height, self.width):
                raise InputError(f"nucleus mask '{mask_element}' is {my}x{mx} px but image "
                                 f"'{element}' is {self.height}x{self.width}", file=mask_path,
                                 fix="the nucleus mask must be in the image's pixel grid")

    @property
    def has_mask(self) -> bool:
        return self._mask is not None

    def read_region(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """RGB pixels of rows ``y0 .. y0+h-1``, columns ``x0 .. x0+w-1`` as uint8 [h, w, 3].

        Parts outside the image are 0. Grey images are repeated to 3 channels, alpha is dropped,
        other dtypes are scaled to 0..255 (:func:`tabst.images.to_uint8_rgb`).
        """
        y0, x0, h, w = int(y0), int(x0), int(h), int(w)
        out = np.zeros((h, w, self.channels), dtype=self.dtype)
        order = [self._img.ya, self._img.xa, self._c_axis]  # chunk axes -> (y, x, c)

        def put(sl, view):
            out[sl] = np.transpose(view, order)

        self._img.read(y0, x0, h, w, out, put)
        if self.dtype == np.uint8 and self.channels == 3:
            return out
        from ..images import to_uint8_rgb

        return to_uint8_rgb(out)

    def read_mask_region(self, y0: int, x0: int, h: int, w: int) -> np.ndarray | None:
        """Nucleus labels (pixel value = cell id, 0 = background, also outside the image) of a
        region as int64 [h, w]; ``None`` when no mask element is recorded."""
        if self._mask is None:
            return None
        y0, x0, h, w = int(y0), int(x0), int(h), int(w)
        out = np.zeros((h, w), dtype=np.int64)
        c_axis, transpose = self._mask_c, self._mask_t

        def put(sl, view):
            if c_axis is not None:
                view = np.take(view, 0, axis=c_axis)
            out[sl] = view.T if transpose else view

        self._mask.read(y0, x0, h, w, out, put)
        return out

    def close(self) -> None:
        for c in (getattr(self, "_img", None), getattr(self, "_mask", None)):
            if c is not None:
                c._cache.clear()
                c._bytes = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"ZarrSampleImage({str(self.path)!r}, element={self.element!r}, "
                f"mask_element={self.mask_element!r}, {self.height}x{self.width}x{self.channels})")

