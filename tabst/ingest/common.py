"""Shared ingest helpers: image headers, writing the store fields every ingest writes (see
docs/conventions.md), and streaming expression into ``/expression/X``.

Other ingest modules (Crunch, Visium, HEST...) import from here:

- :func:`check_image_size` -- height/width/channels from the image header only (refusing
  headers beyond the pixel limit of :func:`tabst.images.max_image_pixels`).
- :func:`write_strings`, :func:`write_cells`, :func:`write_image_group` -- ``/cells/*`` and
  ``/images/<sample>`` with the conventional descriptions and units.
- :func:`write_expression_streaming` -- match expression rows to cells by id and fill a
  preallocated, row-chunked ``/expression/X`` in cell order, holding one chunk in memory.

Tables (:mod:`.tabular`), expression file readers (:mod:`.expression`) and value checks
(:mod:`.checks`) live in their own modules; the names below are re-exported from here.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..store import put, set_attr
from ..util import relpath_from
from .checks import check_expression_block, check_sample_name
from .expression import (  # noqa: F401 - re-exported
    ExpressionReader,
    H5adExpression,
    H5MatrixExpression,
    TableExpression,
    _preview,
    open_expression,
    select_genes,
)
from .tabular import (  # noqa: F401 - re-exported
    CSV_STREAM_BLOCK_BYTES,
    DEFAULT_CHUNK_ROWS,
    PARQUET_SUFFIXES,
    TEXT_TABLE_SUFFIXES,
    iter_table_batches,
    parse_gene_list,
    read_table,
    table_columns,
    table_format,
)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
# conventional descriptions of the /cells fields
CELL_FIELD_DOCS = {
    "cell_id": ("unique cell identifier", None),
    "sample": ("sample (tissue section) the cell belongs to; key of /images/<sample>", None),
    "tissue": ("tissue type of the sample ('unknown' when not given)", None),
    "x": ("nucleus centroid x (column) in the sample image", "px"),
    "y": ("nucleus centroid y (row) in the sample image", "px"),
    "group": ("user split / group of the cell (e.g. train, validation, test)", None),
    "image": ("per-cell patch image, path relative to the store's folder", None),
    "patch_index": ("row of the cell's patch in the sample's HEST patches file", None),
    "has_expression": ("True where the cell has measured expression (else NaN in X)", None),
}

# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
@dataclass
class ImageHeader:
    """What the header of an image file says: no pixels are decoded."""

    path: Path
    height: int
    width: int
    channels: int
    dtype: str  # numpy dtype name of one sample value, e.g. "uint8", "uint16"


_PIL_MODES = {"1": (1, "bool"), "L": (1, "uint8"), "P": (1, "uint8"), "RGB": (3, "uint8"),
              "RGBA": (4, "uint8"), "CMYK": (4, "uint8"), "YCbCr": (3, "uint8"), "LA": (2, "uint8"),
              "I": (1, "int32"), "F": (1, "float32"), "I;16": (1, "uint16"), "I;16B": (1, "uint16"),
              "I;16L": (1, "uint16"), "I;16N": (1, "uint16")}


TIFF_NAME_ENDINGS = (".tif", ".tiff", ".btf", ".tf8", ".tf2", ".svs")


def check_image_size(path, *, what: str = "image") -> ImageHeader:
    """Read height, width, channels and sample dtype from an image's header.

    TIFFs (incl. BigTIFF, pyramidal OME-TIFF, float/uint32) go through ``tifffile``, which only
    reads the tags and is also what reads them later (by region); their photometric tag must be
    one tabst converts to RGB (RGB, grey, palette, CMYK; see :func:`tabst.image_files.tiff_colour`).
    Other formats through PIL, which opens lazily (header only). Every header is checked
    against the pixel limit (:func:`tabst.image_files.max_image_pixels`). A missing,
    unreadable or oversized file raises :class:`InputError` naming it.
    """
    from ..image_files import open_pil, tiff_header

    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found", file=path,
                         fix="check the file name in the label table and the --images/--masks folder")
    if not path.is_file():
        raise InputError(f"{what} path is not a file", file=path, fix="give an image file")
    err = None
    if path.name.lower().endswith(TIFF_NAME_ENDINGS):
        try:
            t = tiff_header(path, what=what)
            return ImageHeader(path, t["height"], t["width"], t["channels"], t["dtype"])
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - not a TIFF tifffile can parse: try PIL
            err = e
    try:
        with open_pil(path, what=what) as im:
            w, h = im.size
            ch, dt = _PIL_MODES.get(im.mode, (len(im.getbands()), "uint8"))
        return ImageHeader(path, int(h), int(w), int(ch), dt)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        err = err or e
    raise InputError(f"cannot read the {what} ({type(err).__name__}: {err})", file=path,
                     fix="check that the file is a valid PNG/TIFF/JPEG image and not truncated")


def find_sample_file(folder, stems: Sequence[str], *, what: str, sample: str) -> Path | None:
    """The single image file in ``folder`` whose name (without suffix) is one of ``stems``.

    Returns None when there is none; raises InputError when several match.
    """
    folder = Path(folder)
    hits = []
    for stem in stems:
        for sfx in IMAGE_SUFFIXES:
            for cand in (folder / f"{stem}{sfx}", folder / f"{stem}{sfx.upper()}"):
                if cand.is_file() and cand not in hits:
                    hits.append(cand)
        if hits:
            break
    if len(hits) > 1:
        raise InputError(f"several {what} files for sample '{sample}': "
                         f"{', '.join(h.name for h in hits)}", file=folder,
                         fix="keep one, or name the file in the label table's image column")
    return hits[0] if hits else None


# --------------------------------------------------------------------------------------------
# writing /cells and /images
# --------------------------------------------------------------------------------------------
def _as_str_chunk(values, a: int, b: int) -> np.ndarray:
    """Rows a:b of a pyarrow array / pandas categorical / numpy array as object str array."""
    import pyarrow as pa

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        part = values.slice(a, b - a).to_pylist()
        return np.asarray(["" if v is None else str(v) for v in part], dtype=object)
    part = values[a:b]
    return np.asarray([str(v) for v in part], dtype=object)


def write_strings(group, name: str, values, *, description: str, chunk_rows: int = 8192,
                  **attrs):
    """Write a 1-D UTF-8 string dataset from a pyarrow array, pandas Categorical/Series or
    numpy array, converting ``chunk_rows`` values at a time (no full list of Python strings)."""
    n = len(values)
    ds = put(group, name, shape=(n,), dtype=str, description=description, **attrs)
    for a in range(0, n, chunk_rows):
        b = min(n, a + chunk_rows)
        ds[a:b] = _as_str_chunk(values, a, b)
    return ds


def write_cells(f, fields: dict, *, descriptions: dict | None = None):
    """Write ``/cells/<name>`` for every entry of ``fields`` (all of equal length N).

    Strings (pyarrow string arrays, pandas Categoricals, object/str numpy arrays) become UTF-8
    datasets, numbers keep their dtype (``x``/``y`` as float64). Descriptions and units come
    from :data:`CELL_FIELD_DOCS` unless given in ``descriptions`` (name -> text or
    (text, unit)). Returns the ``/cells`` group.
    """
    import pyarrow as pa

    lengths = {k: len(v) for k, v in fields.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"/cells fields differ in length: {lengths}")
    g = f.require_group("cells")
    g.attrs["description"] = "one row per cell; every dataset here has the same length N"
    for name, values in fields.items():
        doc = (descriptions or {}).get(name) or CELL_FIELD_DOCS.get(name) or (name, None)
        text, unit = (doc, None) if isinstance(doc, str) else doc
        is_str = isinstance(values, (pa.Array, pa.ChunkedArray)) and (
            pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
            or pa.types.is_dictionary(values.type))
        if not is_str and not isinstance(values, (pa.Array, pa.ChunkedArray)):
            arr = values
            is_str = getattr(arr, "dtype", None) is not None and (
                getattr(arr.dtype, "kind", "") in ("U", "O", "S") or str(arr.dtype) == "category")
        if is_str:
            write_strings(g, name, values, description=text)
        else:
            arr = values.to_numpy(zero_copy_only=False) if isinstance(
                values, (pa.Array, pa.ChunkedArray)) else np.asarray(values)
            if name in ("x", "y"):
                arr = arr.astype(np.float64)
            put(g, name, arr, description=text, unit=unit)
    return g


def write_image_group(f, sample: str, *, store_dir, kind: str, path, mask_path=None,
                      height: int = 0, width: int = 0, channels: int = 0,
                      pixel_size_um: float = float("nan"), spot_diameter_px: float = float("nan"),
                      description: str | None = None, **extra):
    """Write ``/images/<sample>`` with the conventional attrs.

    ``sample`` must pass :func:`~tabst.ingest.checks.check_sample_name` (no ``/``, ``..``).

    ``path`` / ``mask_path`` are made relative to ``store_dir`` (the folder of the final store)
    so the folder can move; ``mask_path`` is ``""`` when there is no mask.
    """
    if kind not in ("file", "per-cell", "spatialdata", "hest-patches"):
        raise ValueError(f"unknown image kind {kind!r}")
    g = f.require_group("images")
    g.attrs["description"] = ("one group per sample: where its H&E image and nucleus mask are "
                              "(paths relative to the store's folder)")
    gs = g.require_group(check_sample_name(sample))
    attrs = {"kind": kind, "path": relpath_from(path, store_dir),
             "mask_path": relpath_from(mask_path, store_dir) if mask_path else "",
             "height": int(height), "width": int(width), "channels": int(channels),
             "pixel_size_um": float(pixel_size_um), "spot_diameter_px": float(spot_diameter_px),
             "description": description or f"H&E image of sample {sample} ({kind})"}
    attrs.update(extra)
    for k, v in attrs.items():
        set_attr(gs, k, v)
    return gs

# --------------------------------------------------------------------------------------------
# cell id index
# --------------------------------------------------------------------------------------------
def fixed_width_ids(arr, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A pyarrow string array as a numpy fixed-width bytes array (``S<width>``, UTF-8).

    Built straight from the Arrow buffers (no Python string objects), so 200k ids cost a few
    MB. Returns ``(ids, too_long)``: ids longer than ``width`` are truncated and flagged. Nulls
    become empty ids.
    """
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    n = len(arr)
    bufs = arr.buffers()
    off_dt = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(bufs[1], dtype=off_dt)[arr.offset: arr.offset + n + 1].astype(np.int64) \
        if n else np.zeros(1, np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    if arr.null_count:
        lengths = np.where(arr.is_null().to_numpy(zero_copy_only=False), 0, lengths)
    w = int(lengths.max()) if width is None and n else int(width or 1)
    w = max(w, 1)
    out = np.zeros((n, w), dtype=np.uint8)
    starts = offsets[:-1]
    for j in range(min(w, int(lengths.max()) if n else 0)):
        m = lengths > j
        out[m, j] = data[starts[m] + j]
    return out.view(f"S{w}").ravel(), lengths > w


class IdIndex:
    """Sorted index of cell ids for exact matching by id (binary search, no hash table).

    Memory: one fixed-width copy of the ids plus one int64 per id (a hash set of 200k Arrow
    strings costs several times more).
    """

    def __init__(self, ids):
        self.keys, _ = fixed_width_ids(ids)
        self.width = self.keys.dtype.itemsize
        self.order = np.argsort(self.keys, kind="stable")
        self.keys = self.keys[self.order]
        self.n = len(self.keys)

    def first_duplicate(self) -> tuple[int, int] | None:
        """Rows (0-based, in input order) of the first repeated id: (earlier, later)."""
        same = np.flatnonzero(self.keys[1:] == self.keys[:-1])
        if len(same) == 0:
            return None
        rows = [(int(self.order[i]), int(self.order[i + 1])) for i in same]
        return min(rows, key=lambda r: r[1])

    def id_at(self, row: int) -> str:
        """The id of input row ``row``."""
        return self.keys[int(np.flatnonzero(self.order == row)[0])].decode("utf-8", "replace")

    def lookup(self, ids) -> np.ndarray:
        """Row of each id in the indexed order, -1 where the id is unknown."""
        q, too_long = fixed_width_ids(ids, self.width)
        if self.n == 0:
            return np.full(len(q), -1, dtype=np.int64)
        i = np.minimum(np.searchsorted(self.keys, q), self.n - 1)
        hit = (self.keys[i] == q) & ~too_long
        return np.where(hit, self.order[i], -1).astype(np.int64)


# --------------------------------------------------------------------------------------------
# streaming expression writer
# --------------------------------------------------------------------------------------------
class _RowScatterWriter:
    """Fill a row-chunked 2-D HDF5 dataset with rows arriving in any order.

    Rows arriving in long contiguous runs are written straight into the dataset. Scattered rows
    go to an anonymous scratch file with ``os.pwrite`` (no page of it counts in our RSS) and are
    copied into the dataset block by block at the end. Memory: one block.
    """

    def __init__(self, ds, scratch_dir=None):
        self.ds = ds
        self.n, self.G = ds.shape
        self.row_bytes = self.G * 4
        self.scratch = None
        self.scratch_dir = scratch_dir
        self.in_scratch = None

    def write(self, pos: np.ndarray, values: np.ndarray) -> None:
        if len(pos) == 0:
            return
        order = np.argsort(pos, kind="stable")
        p, v = pos[order], values[order]
        breaks = np.flatnonzero(np.diff(p) != 1) + 1
        starts = np.r_[0, breaks]
        ends = np.r_[breaks, len(p)]
        if len(starts) <= max(8, len(p) // 256):
            for s, e in zip(starts, ends):
                self.ds[int(p[s]):int(p[s]) + int(e - s)] = v[s:e]
            return
        if self.scratch is None:
            self.scratch = tempfile.TemporaryFile(  # noqa: SIM115 - closed in finish()
                dir=self.scratch_dir, prefix=".tabst-scratch-")
            self.in_scratch = np.zeros(self.n, dtype=bool)
        fd = self.scratch.fileno()
        v = np.ascontiguousarray(v, dtype=np.float32)
        for s, e in zip(starts, ends):
            os.pwrite(fd, v[s:e].tobytes(), int(p[s]) * self.row_bytes)
        self.in_scratch[p] = True

    def finish(self, progress_cb=None) -> None:
        if self.scratch is None:
            return
        try:
            step = max(self.ds.chunks[0] if self.ds.chunks else 1024, 1)
            step *= max(1, DEFAULT_CHUNK_ROWS // step)
            fd = self.scratch.fileno()
            for a in range(0, self.n, step):
                b = min(self.n, a + step)
                m = self.in_scratch[a:b]
                if not m.any():
                    continue
                raw = os.pread(fd, (b - a) * self.row_bytes, a * self.row_bytes)
                scr = np.frombuffer(raw, dtype=np.float32)
                if scr.size < (b - a) * self.G:  # sparse tail never written
                    scr = np.concatenate([scr, np.zeros((b - a) * self.G - scr.size, np.float32)])
                scr = scr.reshape(b - a, self.G)
                if m.all():
                    self.ds[a:b] = scr
                else:
                    blk = self.ds[a:b]
                    blk[m] = scr[m]
                    self.ds[a:b] = blk
                if progress_cb:
                    progress_cb(b - a)
        finally:
            self.scratch.close()
            self.scratch = None


def release_arrow_memory() -> None:
    """Hand memory that pyarrow's pool keeps after frees back to the OS (lower peaks later)."""
    import pyarrow as pa

    try:
        pa.default_memory_pool().release_unused()
    except AttributeError:  # older pyarrow
        pass


def write_expression_streaming(f, readers: Sequence[ExpressionReader], cell_ids=None, *,
                               genes: Sequence[str], transform: str = "as given",
                               labels_file=None, cell_id_column: str = "cell_id",
                               allow_negative: bool = False,
                               chunk_rows: int = DEFAULT_CHUNK_ROWS, scratch_dir=None,
                               description: str | None = None, show_progress: bool = True,
                               id_index: IdIndex | None = None):
    """Write ``/expression/X`` [N, G] and ``/expression/genes`` from expression files whose rows
    are matched to ``cell_ids`` (the /cells order) by id, never by position.

    Reads one chunk of ``chunk_rows`` rows at a time, checks it (finite, non-negative unless
    ``allow_negative``, id known, id not seen before) and writes it at the rows of its cells in a
    preallocated, row-chunked float32 dataset. Afterwards every cell must have been filled.
    Errors are :class:`InputError` naming the expression file, its 1-based data row and the
    column (id column or gene); the caller's :func:`~tabst.store.create_store` then removes the
    half-written store.

    ``id_index`` (an :class:`IdIndex` of the cell ids) can be passed instead of ``cell_ids``
    when the caller already built one (e.g. to check the labels for duplicates); the caller
    may then free its own copy of the ids before streaming.

    Returns the number of expression rows read.
    """
    import pyarrow as pa

    from ..util import progress

    if id_index is None:
        if cell_ids is None:
            raise ValueError("give cell_ids or id_index")
        id_index = IdIndex(cell_ids if isinstance(cell_ids, (pa.Array, pa.ChunkedArray))
                           else pa.array([str(c) for c in cell_ids], type=pa.string()))
    N, G = id_index.n, len(genes)
    eg = f.require_group("expression")
    eg.attrs["description"] = "measured expression: X (cells x genes), rows follow /cells"
    ds = put(eg, "X", shape=(N, G), dtype=np.float32,
             description=description or "expression, cells x genes (rows = /cells order, "
                                        "columns = /expression/genes)",
             transform=transform)
    put(eg, "genes", np.asarray(list(genes), dtype=object), description="gene names: columns of X")
    writer = _RowScatterWriter(ds, scratch_dir=scratch_dir)
    filled = np.zeros(N, dtype=bool)
    src_file = np.zeros(N, dtype=np.int32)  # which reader / file row filled each cell (messages)
    src_row = np.zeros(N, dtype=np.int64)
    n_read = 0
    bar = progress(unit="cells") if show_progress else None
    try:
        task = bar.add_task("expression", total=N) if bar else None
        if bar:
            bar.start()
        for ri, r in enumerate(readers):
            rows_here = 0
            for ids, vals, row0 in r.iter_chunks(genes, chunk_rows):
                k = len(ids)
                n_read += k
                rows_here += k
                pos = id_index.lookup(ids)
                if (pos < 0).any():
                    i = int(np.flatnonzero(pos < 0)[0])
                    raise InputError(
                        f"cell id '{ids[i].as_py()}' is not in the label table"
                        + (f" {labels_file}" if labels_file else ""),
                        file=r.path, row=row0 + i, column=r.id_column,
                        fix="every expression row must belong to a cell of the label table: "
                            "remove the row or add the cell to the labels")
                _, first_idx = np.unique(pos, return_index=True)
                again = np.ones(k, dtype=bool)
                again[first_idx] = False
                bad = again | filled[pos]
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    if filled[pos[i]]:
                        prev = f"row {int(src_row[pos[i]])} of {readers[src_file[pos[i]]].path}"
                    else:
                        prev = f"row {row0 + int(np.flatnonzero(pos == pos[i])[0])}"
                    raise InputError(
                        f"cell id '{ids[i].as_py()}' appears a second time (first at {prev})",
                        file=r.path, row=row0 + i, column=r.id_column,
                        fix="give each cell exactly one expression row")
                check_expression_block(vals, file=r.path, row_offset=row0 - 1, genes=genes,
                                       allow_negative=allow_negative, what="expression value",
                                       row_ids=ids)
                writer.write(pos, vals)
                filled[pos] = True
                src_file[pos] = ri
                src_row[pos] = row0 + np.arange(k)
                if bar:
                    bar.advance(task, k)
            if rows_here == 0:
                raise InputError("the expression file has no data rows", file=r.path,
                                 fix="remove the empty file or fill it (one row per cell)")
        if not filled.all():
            i = int(np.flatnonzero(~filled)[0])
            n_miss = int((~filled).sum())
            files = ", ".join(str(r.path) for r in readers)
            raise InputError(
                f"cell '{id_index.id_at(i)}' has no row in the expression file(s) {files}"
                + (f" ({n_miss} cells lack expression)" if n_miss > 1 else ""),
                file=labels_file, row=i + 1, column=cell_id_column,
                fix="add the missing cells to the expression file or drop them from the labels")
        writer.finish()
    finally:
        if writer.scratch is not None:
            writer.scratch.close()
        if bar:
            bar.stop()
    return n_read
