"""Opening the pixels of a sample recorded under ``/images/<sample>``.

The store never holds pixels: ``/images/<sample>`` is an empty group whose attrs (see
``docs/conventions.md``) say where the pixels are and how to read them (``kind``). This module
turns those attrs into a *reader*; :mod:`tabst.patches` crops cell patches from readers and
:mod:`tabst.embed` / :mod:`tabst.morphology` consume the patches.

Reader protocol
---------------
A reader class is registered for a ``kind`` in :data:`READERS` as a lazy import string
``"package.module:ClassName"`` (the module is imported only when a sample of that kind is
opened, so e.g. ``spatialdata`` is never imported for PNG stores). Other modules add their kinds
by editing :data:`READERS` or calling :func:`register_reader`, e.g.::

    register_reader("spatialdata", "tabst.ingest.crunch:ZarrSampleImage")
    register_reader("hest-patches", "tabst.ingest.hest:HestPatches")

Every reader class must provide:

``__init__(self, store_path: pathlib.Path, sample: str, attrs: dict)``
    ``store_path`` is the store file (relative paths in ``attrs`` are relative to its folder:
    use :func:`resolve_path`); ``sample`` the sample name; ``attrs`` the plain-Python attrs of
    ``/images/<sample>``. The constructor must be cheap-ish and must not read the whole image
    of a large file. Readers are created inside DataLoader worker processes, never pickled.
``patch_based: bool`` (class attribute)
    ``False`` for *region* readers (a whole-slide image addressed by pixel coordinates),
    ``True`` for *patch* readers (one stored patch per cell: ``per-cell``, ``hest-patches``).
``close(self) -> None``
    Release file handles and caches (may be a no-op).

Region readers (``patch_based = False``) additionally provide:

``height: int``, ``width: int``
    Image size in pixels (level 0, the resolution in which ``/cells/x, y`` are given).
``has_mask: bool``
    Whether a nucleus label image exists for this sample.
``read_region(self, y0, x0, h, w) -> np.ndarray``
    ``uint8 [h, w, 3]`` RGB pixels of rows ``y0 .. y0+h-1`` and columns ``x0 .. x0+w-1``.
    The window may extend beyond the image (negative ``y0``/``x0`` included): pixels outside
    are 0. Grey images are repeated to 3 channels, alpha is dropped, 16-bit/float data are
    scaled to 0..255.
``read_mask_region(self, y0, x0, h, w) -> np.ndarray | None``
    Integer labels ``[h, w]`` (0 = background, also outside the image) of the nucleus mask in
    the same pixel grid, or ``None`` when the sample has no mask.

Patch readers (``patch_based = True``) additionally provide:

``row_fields: tuple[str, ...]`` (class attribute)
    Names of ``/cells`` datasets the reader needs per row (e.g. ``("image",)`` or
    ``("patch_index",)``); the pipeline reads them once and passes them to ``read_patch``.
``read_patch(self, row: int, fields: dict) -> np.ndarray``
    ``uint8 [h, w, 3]`` patch of store row ``row`` (0-based index into ``/cells``); ``fields``
    maps each name in ``row_fields`` to that row's value. Any size: the pipeline centre-crops /
    zero-pads (or resizes, ``per_cell_fit="resize"``) it to the requested patch size. A missing
    or unreadable patch raises :class:`tabst.errors.InputError` naming the file and the row
    (1-based, as in ``/cells``).
``read_mask_patch(self, row: int, fields: dict) -> np.ndarray | None``
    Labels aligned with ``read_patch``'s pixels, or ``None`` (optional; absent means ``None``).
``has_mask: bool``
    As above.

Use :func:`open_sample_image` to get a reader; :func:`sample_attrs` to read the attrs.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from .errors import InputError, StoreError

#: kind -> lazy "module:Class" import string. Other modules register their own kinds here.
READERS: dict[str, str] = {
    "file": "tabst.images:FileImage",
    "per-cell": "tabst.images:PerCellImages",
    "spatialdata": "tabst.ingest.crunch:ZarrSampleImage",
    "hest-patches": "tabst.ingest.hest:HestPatches",
}

#: Decoded PNG/JPEG images (no region access) are cached per reader; TIFFs never are.
SMALL_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")


def register_reader(kind: str, target: str) -> None:
    """Register (or replace) the reader class for an ``/images/<sample>`` ``kind``.

    ``target`` is a lazy import string ``"package.module:ClassName"``.
    """
    if ":" not in target:
        raise ValueError(f"reader target must look like 'package.module:Class', got {target!r}")
    READERS[kind] = target


def reader_class(kind: str):
    """The reader class for ``kind`` (imports its module on first use)."""
    if kind not in READERS:
        raise StoreError(f"image kind {kind!r} is not known to this tabst (known: "
                         f"{', '.join(sorted(READERS))}). Re-ingest with a supported image kind.")
    mod_name, cls_name = READERS[kind].split(":")
    try:
        mod = importlib.import_module(mod_name)
        return getattr(mod, cls_name)
    except (ImportError, AttributeError) as e:
        raise StoreError(f"images of kind {kind!r} need {READERS[kind]}, which cannot be loaded "
                         f"({e}). Install the missing extra (e.g. `pip install tabst[spatial]`).") \
            from None


def resolve_path(store_path, rel: str) -> Path:
    """A path recorded in the store (relative to the store's folder, or absolute)."""
    p = Path(rel)
    return p if p.is_absolute() else Path(store_path).resolve().parent / p


def recorded_path(store_path, sample: str, attrs: dict, *, what: str, remedy: str) -> Path:
    """The required ``path`` attr of ``/images/<sample>``, resolved; a StoreError naming the
    sample and ``remedy`` (e.g. "re-run `tabst ingest hest`") when it is missing."""
    rel = str(attrs.get("path", "") or "")
    if not rel:
        raise StoreError(f"/images/{sample} has no 'path' attr: no {what} recorded for this "
                         f"sample. {remedy}")
    return resolve_path(store_path, rel)


def sample_attrs(store, sample: str) -> dict:
    """Plain-Python attrs of ``/images/<sample>`` of an open store or store path."""
    from .store import attrs_dict, opened

    with opened(store) as f:
        key = f"images/{sample}"
        if key not in f:
            raise StoreError(f"{getattr(f, 'filename', store)}: sample {sample!r} has cells but no "
                             f"/images/{sample} group; re-run the ingest that wrote this store.")
        return attrs_dict(f[key])


def open_sample_image(store_path, sample_attrs: dict, sample: str = ""):
    """Open the pixels of one sample: a reader following the protocol in the module docstring.

    Parameters
    ----------
    store_path : path of the store (relative paths in the attrs are relative to its folder).
    sample_attrs : attrs of ``/images/<sample>`` (see :func:`sample_attrs`).
    sample : the sample's name (for messages).
    """
    kind = str(sample_attrs.get("kind", "file") or "file")
    cls = reader_class(kind)
    return cls(Path(store_path), sample, dict(sample_attrs))


# ----------------------------------------------------------------------------------------------
# Pixel planes: a numpy array or a lazily read zarr array, addressed as [y, x(, c)]
# ----------------------------------------------------------------------------------------------

def to_uint8_rgb(a: np.ndarray) -> np.ndarray:
    """Any ``[h, w]`` / ``[h, w, c]`` array as ``uint8 [h, w, 3]`` (grey repeated, alpha dropped).

    uint8 passes through; other integer types are scaled by their maximum value; floats are
    taken as 0..1 when their maximum is <= 1, else as 0..255.
    """
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 2:  # grey + alpha
        a = np.repeat(a[:, :, :1], 3, axis=2)
    elif a.shape[2] > 3:
        a = a[:, :, :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        scale = 255.0 / float(np.iinfo(a.dtype).max)
        return np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    f = a.astype(np.float64)
    if f.size and np.nanmax(f) <= 1.0:
        f = f * 255.0
    return np.clip(np.rint(np.nan_to_num(f)), 0, 255).astype(np.uint8)


CHUNK_CACHE_BYTES = 128 << 20  # decoded TIFF tiles kept per open plane (image or mask)


class _Plane:
    """An image addressed as ``[y, x(, c)]``: a decoded numpy array or a zarr array view.

    ``axes`` is the tifffile axes string of ``arr`` (e.g. ``"YXS"``, ``"SYX"``, ``"CYX"``,
    ``"TCZYX"``); non-spatial, non-channel axes are read at index 0.
    """

    def __init__(self, arr, axes: str = "YXS"):
        self.arr, self.axes = arr, axes.upper()
        self.colour, self.colormap = "rgb", None  # see tabst.image_files.tiff_colour
        if "Y" not in self.axes or "X" not in self.axes:
            raise ValueError(f"image axes {axes!r} have no Y and X")
        self.height = int(arr.shape[self.axes.index("Y")])
        self.width = int(arr.shape[self.axes.index("X")])
        chan = [a for a in self.axes if a in "SC"]
        self.chan_axis = chan[-1] if chan else None
        self._cache = None
        if not isinstance(arr, np.ndarray) and hasattr(arr, "chunks"):  # zarr: cache chunks
            from .chunk_cache import ChunkCache

            self._cache = ChunkCache(arr, self.axes.index("Y"), self.axes.index("X"),
                                     CHUNK_CACHE_BYTES)

    def _cached(self, y0: int, x0: int, h: int, w: int, dt) -> np.ndarray:
        """The window as ``[h, w, c]`` assembled from cached chunks (zero outside)."""
        nc = 1 if self.chan_axis is None else int(self.arr.shape[self.axes.index(self.chan_axis)])
        out = np.zeros((h, w, nc), dtype=dt)
        index = tuple(slice(None) if ax in ("Y", "X", self.chan_axis) else 0 for ax in self.axes)
        kept = [ax for ax in self.axes if ax in ("Y", "X", self.chan_axis)]
        order = [kept.index("Y"), kept.index("X")] + ([kept.index(self.chan_axis)]
                                                      if self.chan_axis else [])

        def put(sl, view):
            v = np.transpose(view[index], order)
            out[sl] = v if v.ndim == 3 else v[:, :, None]

        self._cache.read(int(y0), int(x0), int(h), int(w), out, put)
        return out

    def read(self, y0: int, x0: int, h: int, w: int, dtype=None) -> np.ndarray:
        """Window ``[y0:y0+h, x0:x0+w]`` as ``[h, w, c]``, zero outside the image."""
        if self._cache is not None:
            return self._cached(y0, x0, h, w, dtype or np.dtype(self.arr.dtype))
        ya, yb = max(0, y0), min(self.height, y0 + h)
        xa, xb = max(0, x0), min(self.width, x0 + w)
        index, kept = [], []
        for ax in self.axes:
            if ax == "Y":
                index.append(slice(ya, max(ya, yb)))
                kept.append(ax)
            elif ax == "X":
                index.append(slice(xa, max(xa, xb)))
                kept.append(ax)
            elif ax == self.chan_axis:
                index.append(slice(None))
                kept.append(ax)
            else:
                index.append(0)
        if yb > ya and xb > xa:
            win = np.asarray(self.arr[tuple(index)])
            order = [kept.index("Y"), kept.index("X")] + ([kept.index(self.chan_axis)]
                                                          if self.chan_axis else [])
            win = np.transpose(win, order)
            if win.ndim == 2:
                win = win[:, :, None]
        else:
            win = None
        nc = 1 if self.chan_axis is None else int(self.arr.shape[self.axes.index(self.chan_axis)])
        dt = dtype or (win.dtype if win is not None else np.uint8)
        if win is not None and ya == y0 and xa == x0 and win.shape[0] == h and win.shape[1] == w:
            return win.astype(dt, copy=False)
        out = np.zeros((h, w, nc), dtype=dt)
        if win is not None:
            out[ya - y0: yb - y0, xa - x0: xb - x0] = win
        return out


def _open_plane(path: Path, what: str, cache_small: bool = True):
    """Open an image file as a :class:`_Plane`: TIFF lazily by region, others decoded once.

    Every header is checked against :func:`tabst.image_files.max_image_pixels` before any pixel
    is decoded; TIFFs are never decoded whole. The plane's ``colour`` (see
    :func:`tabst.image_files.tiff_colour`) says how :class:`FileImage` turns samples into RGB.
    """
    if not path.exists():
        raise InputError(f"the {what} does not exist", file=path,
                         fix="the store records image paths relative to its own folder: keep the "
                             "images beside the store, or re-run the ingest")
    suffix = "".join(path.suffixes[-2:]).lower() if path.name.lower().endswith(".ome.tif") \
        else path.suffix.lower()
    if suffix in TIFF_SUFFIXES or suffix.endswith((".tif", ".tiff")):
        return _open_tiff(path, what)
    from .image_files import open_pil

    try:
        with open_pil(path, what=what) as im:
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            arr = np.asarray(im)
    except InputError:
        raise
    except Exception as e:  # PIL raises many types for corrupt files
        raise InputError(f"cannot decode the {what} ({type(e).__name__}: {e})", file=path,
                         fix="check that the file is a readable PNG/JPEG/TIFF image") from None
    return _Plane(arr, "YXS" if arr.ndim == 3 else "YX")


def _open_tiff(path: Path, what: str):
    import tifffile
    import zarr

    from .image_files import tiff_header

    try:
        hdr = tiff_header(path, what=what)
        store = tifffile.imread(path, aszarr=True, series=0, level=0)
        z = zarr.open(store, mode="r")
        if not hasattr(z, "shape"):  # a group of pyramid levels
            z = z[sorted(z.keys(), key=lambda k: int(k) if k.isdigit() else 1 << 30)[0]]
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"cannot open the {what} TIFF ({type(e).__name__}: {e})", file=path,
                         fix="check that the file is a readable (OME-)TIFF") from None
    plane = _Plane(z, hdr["axes"])
    plane.colour, plane.colormap = hdr["colour"], hdr["colormap"]
    plane._store = store  # keep the tifffile handle alive; closed by FileImage.close
    return plane


class FileImage:
    """Reader for ``kind="file"``: one image file per sample (PNG, JPEG, TIFF, OME-TIFF).

    TIFF / OME-TIFF are read by region through ``tifffile`` + ``zarr`` (level 0 of a pyramid),
    never whole into memory; PNG/JPEG (no region access possible) are decoded once when first
    read and kept for the reader's lifetime. The optional ``mask_path`` is a label image
    (TIFF/PNG) in the same pixel grid.
    """

    patch_based = False

    def __init__(self, store_path: Path, sample: str, attrs: dict):
        self.store_path, self.sample, self.attrs = Path(store_path), sample, attrs
        self.path = recorded_path(store_path, sample, attrs, what="image",
                                  remedy="Re-run the ingest with the sample's image.")
        mrel = str(attrs.get("mask_path", "") or "")
        self.mask_file = resolve_path(store_path, mrel) if mrel else None
        self.has_mask = self.mask_file is not None
        self._img = _open_plane(self.path, f"image of sample {sample!r}")
        self._mask = None
        self.height, self.width = self._img.height, self._img.width
        h, w = int(attrs.get("height", 0) or 0), int(attrs.get("width", 0) or 0)
        if h > 0 and w > 0 and (h, w) != (self.height, self.width):
            raise InputError(f"the image is {self.height}x{self.width} px but the store recorded "
                             f"{h}x{w} for sample {sample!r}", file=self.path,
                             fix="the file changed since ingest: re-run the ingest")

    def read_region(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        win = self._img.read(int(y0), int(x0), int(h), int(w))
        if self._img.colour != "rgb":  # CMYK, palette, white-is-zero TIFFs
            from .image_files import to_rgb_colour

            win = to_rgb_colour(win, self._img.colour, self._img.colormap)
        return to_uint8_rgb(win)

    def read_mask_region(self, y0: int, x0: int, h: int, w: int):
        if not self.has_mask:
            return None
        if self._mask is None:
            self._mask = _open_plane(self.mask_file, f"nucleus mask of sample {self.sample!r}")
            if (self._mask.height, self._mask.width) != (self.height, self.width):
                raise InputError(
                    f"the nucleus mask is {self._mask.height}x{self._mask.width} px but the image "
                    f"is {self.height}x{self.width}", file=self.mask_file,
                    fix="the mask must be a label image in the same pixel grid as the H&E image")
        m = self._mask.read(int(y0), int(x0), int(h), int(w))
        return m[:, :, 0].astype(np.int64, copy=False)

    def close(self) -> None:
        for p in (self._img, self._mask):
            st = getattr(p, "_store", None)
            if st is not None:
                try:
                    st.close()
                except Exception:
                    pass
        self._img = self._mask = None


class PerCellImages:
    """Reader for ``kind="per-cell"``: one patch image per cell, path in ``/cells/image``.

    ``/cells/image`` paths are relative to the store's folder (or absolute), as every ingest
    writes them. ``attrs["path"]`` (the folder the patches came from) is a fallback base for
    paths that do not resolve against the store's folder (stores written by other tools).
    """

    patch_based = True
    row_fields = ("image",)
    has_mask = False

    def __init__(self, store_path: Path, sample: str, attrs: dict):
        self.store_path, self.sample, self.attrs = Path(store_path), sample, attrs
        self.store_dir = Path(store_path).resolve().parent
        base = str(attrs.get("path", "") or "")
        self.base = resolve_path(store_path, base) if base else None
        if self.base is not None and not self.base.is_dir():
            self.base = None

    def _resolve(self, rel: str) -> Path:
        p = Path(rel)
        if p.is_absolute():
            return p
        first = self.store_dir / p
        if first.exists() or self.base is None:
            return first
        alt = self.base / p
        return alt if alt.exists() else first

    def read_patch(self, row: int, fields: dict) -> np.ndarray:
        from .image_files import open_pil

        rel = fields.get("image")
        if rel is None or str(rel) == "":
            raise InputError("no per-cell image path", file=self.store_path, row=row + 1,
                             column="image", fix="every cell of a per-cell sample needs an image")
        p = self._resolve(str(rel))
        try:
            with open_pil(p, what="per-cell patch image") as im:
                if im.mode not in ("RGB", "L", "RGBA", "LA", "I;16", "I", "F"):
                    im = im.convert("RGB")  # CMYK, palette, YCbCr ... converted, never truncated
                arr = np.asarray(im)
        except InputError as e:
            msg, prefix = str(e).split("\n")[0], f"{p}: "
            raise InputError(msg[len(prefix):] if msg.startswith(prefix) else msg, file=p,
                             row=row + 1, column="image", fix=e.fix) from None
        except FileNotFoundError:
            raise InputError("the per-cell patch image does not exist", file=p,
                             row=row + 1, column="image",
                             fix="per-cell image paths are relative to the store's folder") \
                from None
        except Exception as e:
            raise InputError(f"cannot decode the patch image ({type(e).__name__}: {e})", file=p,
                             row=row + 1, column="image") from None
        return to_uint8_rgb(arr)

    def read_mask_patch(self, row: int, fields: dict):
        return None

    def close(self) -> None:
        pass
