"""Shared ingest helpers: reading tables and expression files in chunks, image headers,
and writing the store fields every ingest writes (see docs/conventions.md).

Other ingest modules (Crunch, Visium, HEST...) import from here:

- :func:`table_columns`, :func:`read_table`, :func:`iter_table_batches` -- CSV/TSV/Parquet
  (optionally gzip/bz2-compressed text) through pyarrow, with type errors turned into
  :class:`~tabst.errors.InputError` that name the file, the 1-based data row and the column.
- :func:`check_image_size` -- height/width/channels from the image header only.
- :func:`write_strings`, :func:`write_cells`, :func:`write_image_group` -- ``/cells/*`` and
  ``/images/<sample>`` with the conventional descriptions and units.
- :func:`open_expression` -- one reader class per expression file layout, all with the same
  ``genes`` / ``iter_chunks()`` interface.
- :func:`write_expression_streaming` -- match expression rows to cells by id and fill a
  preallocated, row-chunked ``/expression/X`` in cell order, holding one chunk in memory.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..store import put, set_attr
from ..util import relpath_from

#: rows per expression chunk held in memory while streaming (460 genes -> ~7 MB float32)
DEFAULT_CHUNK_ROWS = 4096
#: bytes of CSV text per pyarrow block
CSV_STREAM_BLOCK_BYTES = 1 << 20

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
TEXT_TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")

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
# tables
# --------------------------------------------------------------------------------------------
def _split_suffix(path: Path) -> tuple[str, str | None]:
    """(table suffix, compression) of e.g. ``x.csv.gz`` -> ('.csv', 'gzip')."""
    sfx = [s.lower() for s in path.suffixes]
    comp = None
    if sfx and sfx[-1] in (".gz", ".bz2"):
        comp = "gzip" if sfx[-1] == ".gz" else "bz2"
        sfx = sfx[:-1]
    return (sfx[-1] if sfx else ""), comp


def table_format(path) -> str:
    """``"csv"`` or ``"parquet"``; raises InputError for anything else."""
    path = Path(path)
    sfx, _ = _split_suffix(path)
    if sfx in TEXT_TABLE_SUFFIXES:
        return "csv"
    if sfx in PARQUET_SUFFIXES:
        return "parquet"
    raise InputError(f"unsupported table format '{sfx or path.name}'", file=path,
                     fix="use CSV (.csv), TSV (.tsv/.tab/.txt, optionally .gz) or Parquet (.parquet)")


def _delimiter(path: Path) -> str:
    sfx, _ = _split_suffix(path)
    return TEXT_TABLE_SUFFIXES.get(sfx, ",")


def _open_text(path: Path):
    _, comp = _split_suffix(path)
    if comp == "gzip":
        return gzip.open(path, "rt", newline="")
    if comp == "bz2":
        return bz2.open(path, "rt", newline="")
    return open(path, "r", newline="", encoding="utf-8-sig")


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{what} not found", file=path, fix="check the path")
    if not path.is_file():
        raise InputError(f"{what} is not a file", file=path, fix="give the path of a file")


def table_columns(path) -> list[str]:
    """Column names of a CSV/TSV/Parquet table (reads the header only)."""
    path = Path(path)
    _require_file(path, "table")
    fmt = table_format(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            cols = list(pq.read_schema(path).names)
        else:
            with _open_text(path) as fh:
                cols = next(csv.reader(fh, delimiter=_delimiter(path)), None)
            if cols is None:
                raise InputError("the file is empty (no header line)", file=path,
                                 fix="write a header line with the column names")
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - unreadable / corrupt
        raise InputError(f"cannot read the table ({type(e).__name__}: {e})", file=path,
                         fix="check that the file is a valid CSV/TSV/Parquet table") from None
    cols = [c.strip() for c in cols]
    seen = set()
    for c in cols:
        if c in seen:
            raise InputError("the column name appears twice in the header", file=path, column=c,
                             fix="give every column a unique name")
        seen.add(c)
    return cols


def _arrow_type(kind: str):
    import pyarrow as pa

    return {"str": pa.string(), "float": pa.float64()}[kind]


def _locate_bad_number(path: Path, column: str) -> tuple[int, str]:
    """Find the first value of ``column`` that is not a number: (1-based data row, value)."""
    import pandas as pd

    row0 = 0
    for batch in iter_table_batches(path, {column: "str"}, batch_rows=65536):
        s = pd.Series(batch.column(0).to_pylist(), dtype=object)
        num = pd.to_numeric(s, errors="coerce")
        bad = num.isna() & s.notna() & (s.astype(str).str.strip() != "")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            return row0 + i + 1, str(s.iloc[i])
        row0 += len(s)
    return 1, "?"


def _arrow_conversion_error(e: Exception, path: Path, names: Sequence[str]) -> InputError:
    """Turn a pyarrow CSV/Parquet conversion error into an InputError naming row + column."""
    import re

    msg = str(e)
    m = re.search(r"column #(\d+)", msg)
    col = None
    if m:
        # CSV column numbers count all columns of the file, 0-based
        try:
            col = table_columns(path)[int(m.group(1))]
        except (IndexError, InputError):
            col = None
    if col is None:
        for n in names:
            if f"'{n}'" in msg or f" {n}:" in msg:
                col = n
                break
    if col is not None:
        row, val = _locate_bad_number(path, col)
        return InputError(f"'{val}' is not a number", file=path, row=row, column=col,
                          fix="this column must hold numbers only; fix or remove that value")
    return InputError(f"cannot read the table: {msg}", file=path,
                      fix="check that numeric columns hold numbers only")


def _csv_options(path: Path, columns: dict[str, str], block_bytes: int, threads: bool = True):
    import pyarrow.csv as pacsv

    ro = pacsv.ReadOptions(block_size=block_bytes, use_threads=threads)
    po = pacsv.ParseOptions(delimiter=_delimiter(path))
    co = pacsv.ConvertOptions(include_columns=list(columns),
                              column_types={c: _arrow_type(k) for c, k in columns.items()},
                              strings_can_be_null=False, quoted_strings_can_be_null=False)
    return ro, po, co


def _input_stream(path: Path):
    import pyarrow as pa

    _, comp = _split_suffix(path)
    return pa.input_stream(str(path), compression=comp)


def _cast_parquet_batch(batch, path: Path, columns: dict[str, str]):
    import pyarrow as pa
    import pyarrow.compute as pc

    arrays = []
    for name, kind in columns.items():
        col = batch.column(name)
        want = _arrow_type(kind)
        if col.type != want:
            if kind == "float" and not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
                                        or pa.types.is_boolean(col.type) or pa.types.is_null(col.type)):
                row, val = _locate_bad_number(path, name)
                raise InputError(f"'{val}' is not a number (column type {col.type})", file=path,
                                 row=row, column=name, fix="this column must hold numbers only")
            col = pc.cast(col, want)
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, names=list(columns))


def read_table(path, columns: dict[str, str]):
    """Read the named columns of a CSV/TSV/Parquet table as a ``pyarrow.Table``.

    Parameters
    ----------
    path : path-like
    columns : dict
        column name -> ``"str"`` or ``"float"``. Strings stay strings (so ``"007"`` stays),
        floats are float64 (empty fields become null/NaN). A value that is not a number raises
        :class:`InputError` naming the 1-based data row and the column.
    """
    import pyarrow as pa

    path = Path(path)
    _require_file(path, "table")
    fmt = table_format(path)
    if not columns:
        raise ValueError("read_table needs at least one column")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            t = pq.read_table(path, columns=list(columns))
            batches = [_cast_parquet_batch(b, path, columns) for b in t.to_batches()]
            return pa.Table.from_batches(batches, schema=pa.schema(
                [(c, _arrow_type(k)) for c, k in columns.items()]))
        import pyarrow.csv as pacsv

        # serial 1 MiB blocks: a little slower, but a bounded, predictable memory peak
        ro, po, co = _csv_options(path, columns, CSV_STREAM_BLOCK_BYTES, threads=False)
        with _input_stream(path) as stream:
            return pacsv.read_csv(stream, read_options=ro, parse_options=po, convert_options=co)
    except InputError:
        raise
    except pa.ArrowInvalid as e:
        raise _arrow_conversion_error(e, path, list(columns)) from None
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"cannot read the table ({e})", file=path,
                         fix="check that the file is a valid CSV/TSV/Parquet table") from None


def iter_table_batches(path, columns: dict[str, str], batch_rows: int = DEFAULT_CHUNK_ROWS
                       ) -> Iterator:
    """Stream the named columns of a table as ``pyarrow.RecordBatch`` es (columns in the given
    order, types as in :func:`read_table`). CSV is parsed block by block, Parquet read batch by
    batch, so memory stays bounded whatever the file size."""
    import pyarrow as pa

    path = Path(path)
    _require_file(path, "table")
    fmt = table_format(path)
    names = list(columns)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            for b in pf.iter_batches(batch_size=batch_rows, columns=names):
                yield _cast_parquet_batch(b, path, columns)
            return
        import pyarrow.csv as pacsv

        # serial parsing of 1 MiB blocks: pyarrow's threaded streaming reader reads ahead
        # without bound on large files (peak memory would grow with the file)
        ro, po, co = _csv_options(path, columns, CSV_STREAM_BLOCK_BYTES, threads=False)
        with _input_stream(path) as stream:
            reader = pacsv.open_csv(stream, read_options=ro, parse_options=po, convert_options=co)
            for b in reader:
                # reorder to the requested column order
                yield pa.RecordBatch.from_arrays([b.column(n) for n in names], names=names)
    except InputError:
        raise
    except pa.ArrowInvalid as e:
        raise _arrow_conversion_error(e, path, names) from None
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"cannot read the table ({e})", file=path,
                         fix="check that the file is a valid CSV/TSV/Parquet table") from None


def parse_gene_list(spec: str | Sequence[str] | None) -> list[str] | None:
    """``"G1,G2"``, ``"@genes.txt"`` (one per line or comma-separated) or a list -> list."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        return [str(g).strip() for g in spec if str(g).strip()]
    if spec.startswith("@"):
        p = Path(spec[1:])
        _require_file(p, "gene list file")
        text = p.read_text()
    else:
        text = spec
    genes = [g.strip() for line in text.splitlines() for g in line.split(",") if g.strip()]
    if not genes:
        raise InputError("the gene list is empty", file=spec[1:] if spec.startswith("@") else None,
                         fix="give gene names separated by commas or one per line")
    return genes


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


def check_image_size(path, *, what: str = "image") -> ImageHeader:
    """Read height, width, channels and sample dtype from an image's header.

    PIL opens lazily (header only); TIFFs PIL cannot parse (BigTIFF, pyramidal OME-TIFF,
    float/uint32) go through ``tifffile``, which also only reads the tags. A missing or
    unreadable file raises :class:`InputError` naming it.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found", file=path,
                         fix="check the file name in the label table and the --images/--masks folder")
    if not path.is_file():
        raise InputError(f"{what} path is not a file", file=path, fix="give an image file")
    err = None
    try:
        from PIL import Image

        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # whole-slide images are fine: we never decode them here
        try:
            with Image.open(path) as im:
                w, h = im.size
                ch, dt = _PIL_MODES.get(im.mode, (len(im.getbands()), "uint8"))
        finally:
            Image.MAX_IMAGE_PIXELS = old
        return ImageHeader(path, int(h), int(w), int(ch), dt)
    except Exception as e:  # noqa: BLE001 - fall back to tifffile
        err = e
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile

            with tifffile.TiffFile(path) as tf:
                s = tf.series[0] if tf.series else tf.pages[0]
                shape, axes = tuple(s.shape), getattr(s, "axes", "")
                dt = str(s.dtype)
            if "Y" in axes and "X" in axes:
                h, w = shape[axes.index("Y")], shape[axes.index("X")]
                ch = shape[axes.index("S")] if "S" in axes else (
                    shape[axes.index("C")] if "C" in axes else 1)
            else:
                h, w = shape[0], shape[1]
                ch = shape[2] if len(shape) > 2 else 1
            return ImageHeader(path, int(h), int(w), int(ch), dt)
        except Exception as e:  # noqa: BLE001
            err = e
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

    ``path`` / ``mask_path`` are made relative to ``store_dir`` (the folder of the final store)
    so the folder can move; ``mask_path`` is ``""`` when there is no mask.
    """
    if kind not in ("file", "per-cell", "spatialdata", "hest-patches"):
        raise ValueError(f"unknown image kind {kind!r}")
    g = f.require_group("images")
    g.attrs["description"] = ("one group per sample: where its H&E image and nucleus mask are "
                              "(paths relative to the store's folder)")
    gs = g.require_group(sample)
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
# expression readers
# --------------------------------------------------------------------------------------------
class ExpressionReader:
    """A cells x genes expression file read in row chunks.

    Attributes
    ----------
    path : Path
    id_column : str
        where the cell ids come from (for messages).
    genes : list of str
        all gene names of the file, in file order.

    ``iter_chunks(genes, chunk_rows)`` yields ``(ids, values, first_row)``: ``ids`` a pyarrow
    string array of cell ids, ``values`` float32 [k, len(genes)] in the order of ``genes``,
    ``first_row`` the 1-based data row of the chunk's first row in the file.
    """

    path: Path
    id_column: str
    genes: list
    row_label = "row"  # how rows of this file are called in messages

    def iter_chunks(self, genes: Sequence[str], chunk_rows: int = DEFAULT_CHUNK_ROWS):
        raise NotImplementedError


class TableExpression(ExpressionReader):
    """CSV/TSV/Parquet: one id column, one numeric column per gene."""

    def __init__(self, path, id_column: str | None = None, gene_columns: Sequence[str] | None = None,
                 id_candidates: Sequence[str] = ("cell_id",)):
        self.path = Path(path)
        cols = table_columns(self.path)
        if id_column is None:
            id_column = next((c for c in id_candidates if c in cols), cols[0])
        elif id_column not in cols:
            raise InputError("cell id column not found in the expression file", file=self.path,
                             column=id_column,
                             fix=f"pass the right id column (columns: {_preview(cols)})")
        self.id_column = id_column
        if gene_columns is None:
            gene_columns = [c for c in cols if c != id_column]
        self.genes = list(gene_columns)
        if not self.genes:
            raise InputError("no gene columns", file=self.path,
                             fix="the file needs a cell id column and one column per gene")

    def iter_chunks(self, genes, chunk_rows=DEFAULT_CHUNK_ROWS):
        import pyarrow as pa

        cols = {self.id_column: "str", **{g: "float" for g in genes}}
        if self.id_column in genes:
            raise InputError("the cell id column is also listed as a gene", file=self.path,
                             column=self.id_column, fix="remove it from the gene list")
        row = 1
        pending, n_pending = [], 0
        for b in iter_table_batches(self.path, cols, batch_rows=chunk_rows):
            pending.append(b)
            n_pending += b.num_rows
            if n_pending < chunk_rows:
                continue
            t = pa.Table.from_batches(pending).combine_chunks()
            start = 0
            while t.num_rows - start >= chunk_rows:
                yield self._emit(t.slice(start, chunk_rows), row)
                row += chunk_rows
                start += chunk_rows
            rest = t.slice(start)
            pending, n_pending = rest.to_batches(), rest.num_rows
        if n_pending:
            yield self._emit(pa.Table.from_batches(pending).combine_chunks(), row)

    @staticmethod
    def _emit(t, row):
        ids = t.column(0).combine_chunks()
        k, G = t.num_rows, t.num_columns - 1
        vals = np.empty((k, G), dtype=np.float32)
        for j in range(G):
            vals[:, j] = t.column(j + 1).to_numpy()
        return ids, vals, row


class H5MatrixExpression(ExpressionReader):
    """HDF5 matrix layout: datasets ``X`` [cells, genes] (numeric), ``cell_id`` [cells] and
    ``genes`` [genes] (strings or integers) at the file's root."""

    def __init__(self, path, id_column: str | None = None):
        import h5py

        self.path = Path(path)
        self.id_column = id_column or "cell_id"
        try:
            with h5py.File(self.path, "r") as f:
                for k in ("X", self.id_column, "genes"):
                    if k not in f or not isinstance(f[k], h5py.Dataset):
                        raise InputError(
                            f"no dataset '/{k}'", file=self.path,
                            fix="an HDF5 expression matrix needs datasets X [cells, genes], "
                                "cell_id [cells] and genes [genes] at its root (or use .h5ad)")
                X, ids, genes = f["X"], f[self.id_column], f["genes"]
                if X.ndim != 2 or X.shape != (ids.shape[0], genes.shape[0]):
                    raise InputError(
                        f"X has shape {X.shape} but there are {ids.shape[0]} cell ids and "
                        f"{genes.shape[0]} genes", file=self.path, column="X",
                        fix="X must be cells x genes, matching cell_id and genes")
                if X.dtype.kind not in "fiub":
                    raise InputError(f"X is not numeric ({X.dtype})", file=self.path, column="X",
                                     fix="store numbers in X")
                self.genes = _h5_strings(genes[()])
                self.n = int(X.shape[0])
        except InputError:
            raise
        except OSError as e:
            raise InputError(f"not a readable HDF5 file ({e})", file=self.path,
                             fix="check the file") from None

    def iter_chunks(self, genes, chunk_rows=DEFAULT_CHUNK_ROWS):
        import h5py
        import pyarrow as pa

        cols = _gene_index(self.genes, genes)
        with h5py.File(self.path, "r") as f:
            X, ids = f["X"], f[self.id_column]
            for a in range(0, self.n, chunk_rows):
                b = min(self.n, a + chunk_rows)
                block = X[a:b]
                yield (pa.array(_h5_strings(ids[a:b]), type=pa.string()),
                       np.ascontiguousarray(block[:, cols], dtype=np.float32), a + 1)


class H5adExpression(ExpressionReader):
    """AnnData ``.h5ad`` read with h5py: dense or CSR ``X`` (or a layer) in row slices; cell ids
    from the obs index (or an obs column); genes from the var index. CSC matrices are read via
    anndata's backed mode."""

    row_label = "obs row"

    def __init__(self, path, id_column: str | None = None, layer: str | None = None):
        import h5py

        self.path = Path(path)
        self.layer = layer
        try:
            with h5py.File(self.path, "r") as f:
                if "obs" not in f or "var" not in f or ("X" not in f and layer is None):
                    raise InputError("not an AnnData file (no obs/var/X)", file=self.path,
                                     fix="write it with anndata's write_h5ad")
                obs, var = f["obs"], f["var"]
                if not isinstance(obs, h5py.Group):
                    raise InputError("AnnData file in the pre-0.7 format", file=self.path,
                                     fix="re-save it with a current anndata (read_h5ad + write_h5ad)")
                self.index_name = _attr_str(obs, "_index", "_index")
                self.id_column = id_column or self.index_name
                if self.id_column not in obs:
                    raise InputError("obs has no such column", file=self.path,
                                     column=self.id_column,
                                     fix=f"obs columns: {_preview(list(obs.keys()))}")
                vname = _attr_str(var, "_index", "_index")
                self.genes = _h5_strings(var[vname][()])
                xpath = "X" if layer is None else f"layers/{layer}"
                if xpath not in f:
                    raise InputError(f"no layer '{layer}'", file=self.path,
                                     fix=f"layers: {_preview(list(f.get('layers', {}).keys()))}")
                self.xpath = xpath
                X = f[xpath]
                if isinstance(X, h5py.Dataset):
                    self.fmt = "dense"
                    self.n = int(X.shape[0])
                else:
                    self.fmt = _attr_str(X, "encoding-type", "")
                    if self.fmt not in ("csr_matrix", "csc_matrix"):
                        raise InputError(f"unsupported X encoding '{self.fmt}'", file=self.path,
                                         fix="store X dense or as a CSR/CSC sparse matrix")
                    self.n = int(X.attrs["shape"][0])
                nobs = obs[self.id_column].shape[0] if isinstance(obs[self.id_column], h5py.Dataset) \
                    else None
                if nobs is not None and nobs != self.n:
                    raise InputError(f"obs has {nobs} rows but X has {self.n}", file=self.path,
                                     fix="the file is inconsistent; re-save it with anndata")
        except InputError:
            raise
        except OSError as e:
            raise InputError(f"not a readable .h5ad file ({e})", file=self.path,
                             fix="check the file") from None

    def _ids(self, obs, a, b):
        import h5py

        node = obs[self.id_column]
        if isinstance(node, h5py.Group):  # categorical obs column
            codes = node["codes"][a:b]
            cats = np.asarray(_h5_strings(node["categories"][()]), dtype=object)
            return [cats[c] if c >= 0 else "" for c in codes]
        return _h5_strings(node[a:b])

    def iter_chunks(self, genes, chunk_rows=DEFAULT_CHUNK_ROWS):
        import h5py
        import pyarrow as pa

        cols = _gene_index(self.genes, genes)
        if self.fmt == "csc_matrix":
            import anndata as ad

            adata = ad.read_h5ad(self.path, backed="r")
            try:
                obs_names = adata.obs_names if self.id_column == self.index_name \
                    else adata.obs[self.id_column].astype(str)
                X = adata.X if self.layer is None else adata.layers[self.layer]
                for a in range(0, self.n, chunk_rows):
                    b = min(self.n, a + chunk_rows)
                    block = X[a:b]
                    block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
                    yield (pa.array([str(v) for v in obs_names[a:b]], type=pa.string()),
                           np.ascontiguousarray(block[:, cols], dtype=np.float32), a + 1)
            finally:
                adata.file.close()
            return
        with h5py.File(self.path, "r") as f:
            X, obs = f[self.xpath], f["obs"]
            if self.fmt == "csr_matrix":
                import scipy.sparse as sp

                indptr = X["indptr"][()]
                ncol = int(X.attrs["shape"][1])
            for a in range(0, self.n, chunk_rows):
                b = min(self.n, a + chunk_rows)
                if self.fmt == "dense":
                    block = X[a:b][:, cols]
                else:
                    lo, hi = int(indptr[a]), int(indptr[b])
                    m = sp.csr_matrix((X["data"][lo:hi], X["indices"][lo:hi], indptr[a:b + 1] - lo),
                                      shape=(b - a, ncol))
                    block = m[:, cols].toarray()
                yield (pa.array(self._ids(obs, a, b), type=pa.string()),
                       np.ascontiguousarray(block, dtype=np.float32), a + 1)


def _attr_str(obj, key, default):
    v = obj.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _h5_strings(arr) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(arr).tolist()]


def _preview(items: Sequence[str], n: int = 12) -> str:
    items = list(items)
    s = ", ".join(map(str, items[:n]))
    return s + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _gene_index(all_genes: Sequence[str], genes: Sequence[str]) -> np.ndarray:
    pos = {g: i for i, g in enumerate(all_genes)}
    return np.asarray([pos[g] for g in genes], dtype=np.int64)


def open_expression(path, *, id_column: str | None = None, layer: str | None = None,
                    id_candidates: Sequence[str] = ("cell_id",)) -> ExpressionReader:
    """Open a separate cells x genes expression file by its suffix.

    ``.csv/.tsv/.tab/.txt[.gz|.bz2]`` and ``.parquet``: an id column (``id_column``, else the
    first of ``id_candidates`` present, else the first column) plus one numeric column per gene.
    ``.h5ad``: AnnData (obs index = cell id unless ``id_column`` names an obs column; ``layer``
    picks ``layers/<name>`` instead of X). ``.h5/.hdf5``: datasets ``X``, ``cell_id``, ``genes``.
    """
    path = Path(path)
    _require_file(path, "expression file")
    sfx = path.suffix.lower()
    if sfx == ".h5ad":
        return H5adExpression(path, id_column=id_column, layer=layer)
    if sfx in (".h5", ".hdf5", ".he5"):
        return H5MatrixExpression(path, id_column=id_column)
    table_format(path)  # raises for unknown suffixes
    return TableExpression(path, id_column=id_column, id_candidates=id_candidates)


def select_genes(readers: Sequence[ExpressionReader], genes: Sequence[str] | None = None,
                 prefix: str | None = None) -> list[str]:
    """The gene list to ingest: every reader must have the same genes (any order); ``genes``
    picks some of them (in that order), ``prefix`` keeps the ones starting with it."""
    first = readers[0]
    base = set(first.genes)
    for r in readers[1:]:
        other = set(r.genes)
        if other != base:
            missing = [g for g in first.genes if g not in other]
            extra = [g for g in r.genes if g not in base]
            raise InputError(
                "its gene list differs from that of " + str(first.path)
                + (f"; missing: {_preview(missing, 8)}" if missing else "")
                + (f"; extra: {_preview(extra, 8)}" if extra else ""),
                file=r.path, fix="give every sample's expression file the same genes")
    out = list(first.genes)
    if prefix:
        out = [g for g in out if g.startswith(prefix)]
        if not out:
            raise InputError(f"no column starts with the gene prefix '{prefix}'", file=first.path,
                             fix=f"columns: {_preview(first.genes)}")
    if genes is not None:
        missing = [g for g in genes if g not in base]
        if missing:
            raise InputError("gene not found", file=first.path, column=missing[0],
                             fix=f"{len(missing)} listed gene(s) are missing: {_preview(missing, 8)}")
        if len(set(genes)) != len(genes):
            dup = next(g for g in genes if list(genes).count(g) > 1)
            raise InputError("gene listed twice", column=dup, fix="list each gene once")
        out = list(genes)
    seen = set()
    for g in out:
        if g in seen:
            raise InputError("gene name appears twice", file=first.path, column=g,
                             fix="give every gene a unique name")
        seen.add(g)
    return out


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


def check_values(values: np.ndarray, *, file, first_row: int, genes: Sequence[str],
                 allow_negative: bool = False) -> None:
    """Raise InputError at the first NaN/inf (or negative) value of a chunk."""
    finite = np.isfinite(values)
    if not finite.all():
        i, j = np.argwhere(~finite)[0]
        v = values[i, j]
        what = "missing or NaN" if np.isnan(v) else "infinite (or too large for float32)"
        raise InputError(f"expression value is {what}", file=file, row=int(first_row + i),
                         column=genes[j], fix="every cell needs a finite value for every gene")
    if not allow_negative and values.size and values.min() < 0:
        i, j = np.argwhere(values < 0)[0]
        raise InputError(f"negative expression value {values[i, j]:g}", file=file,
                         row=int(first_row + i), column=genes[j],
                         fix="give counts or log-normalised values (>= 0), or pass "
                             "--allow-negative if the values are centred/scaled on purpose")


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
                check_values(vals, file=r.path, first_row=row0, genes=genes,
                             allow_negative=allow_negative)
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
