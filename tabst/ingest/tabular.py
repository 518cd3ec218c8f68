"""Reading CSV/TSV/Parquet tables in bounded memory, with errors a person can act on.

- :func:`table_columns`, :func:`read_table`, :func:`iter_table_batches` -- CSV/TSV/Parquet
  (optionally gzip/bz2-compressed text) through pyarrow, with type errors turned into
  :class:`~tabst.errors.InputError` that name the file, the 1-based data row and the column.
- A header that splits into one column but holds another separator (``;``, tab, ``,``, ``|``)
  is reported as "the file looks semicolon-separated" instead of a missing column.
- Bytes that are not UTF-8 are reported with their data row and "save as UTF-8"
  (:func:`not_utf8_error` does the same for readers built on pandas).
"""
from __future__ import annotations

import bz2
import csv
import gzip
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import InputError

#: rows per expression chunk held in memory while streaming (460 genes -> ~7 MB float32)
DEFAULT_CHUNK_ROWS = 4096
#: bytes of CSV text per pyarrow block
CSV_STREAM_BLOCK_BYTES = 1 << 20

TEXT_TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")
_SEPARATOR_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
UTF8_FIX = ("save the file as UTF-8 (e.g. in Excel 'CSV UTF-8', or "
            "`iconv -f latin1 -t utf-8 in.csv > out.csv`)")


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


def open_binary(path):
    """A binary file object of ``path``, decompressing ``.gz`` / ``.bz2``."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{what} not found", file=path, fix="check the path")
    if not path.is_file():
        raise InputError(f"{what} is not a file", file=path, fix="give the path of a file")


def _decoded_records(fh, delimiter: str):
    """csv records of a binary file, decoded line by line (bad bytes kept as surrogates)."""
    def lines():
        first = True
        for raw in fh:
            yield raw.decode("utf-8-sig" if first else "utf-8", errors="surrogateescape")
            first = False
    return csv.reader(lines(), delimiter=delimiter)


def _has_bad_bytes(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def first_non_utf8(path, delimiter: str | None = None) -> tuple[int | None, str | None]:
    """(1-based data row, column name) of the first field that is not valid UTF-8.

    Row ``None`` means the header line itself; ``(None, None)`` when every byte decodes.
    Reads the file once with Python's csv module (only called when a reader already failed).
    """
    path = Path(path)
    delimiter = delimiter or _delimiter(path)
    with open_binary(path) as fh:
        header = None
        for k, rec in enumerate(_decoded_records(fh, delimiter)):
            if k == 0:
                header = rec
                if any(_has_bad_bytes(c) for c in rec):
                    return None, None
                continue
            for j, v in enumerate(rec):
                if _has_bad_bytes(v):
                    return k, (header[j].strip() if header and j < len(header) else None)
    return None, None


def not_utf8_error(path, *, row: int | None = None, column: str | None = None,
                   delimiter: str | None = None) -> InputError:
    """The InputError for a text table with bytes that are not UTF-8, naming the data row
    (found by scanning the file when ``row`` is not given)."""
    path = Path(path)
    if row is None:
        try:
            row, found = first_non_utf8(path, delimiter)
            column = column or found
        except (OSError, csv.Error, EOFError):
            row = None
    where = "its header line is" if row is None else "this row is"
    return InputError(f"{where} not valid UTF-8 text (a byte such as 0xE9 from Latin-1 / "
                      "Windows-1252 encoding)", file=path, row=row, column=column, fix=UTF8_FIX)


def _separator_error(path: Path, header: str, expected: str) -> InputError | None:
    """A 'looks X-separated' error when the header splits into one column with the expected
    separator but into several with another."""
    for d in (";", "\t", ",", "|"):
        if d != expected and d in header:
            name = _SEPARATOR_NAMES[d]
            if d == ";":
                fix = ("save it comma-separated with '.' as the decimal point (or tab-separated as "
                       ".tsv); e.g. pandas: pd.read_csv(f, sep=';', decimal=',')"
                       ".to_csv('fixed.csv', index=False)")
            elif d == "\t":
                fix = "rename it to .tsv (tabst reads .tsv/.tab/.txt as tab-separated)"
            elif d == ",":
                fix = "rename it to .csv (tabst reads .csv as comma-separated)"
            else:
                fix = "save it comma-separated (.csv) or tab-separated (.tsv)"
            shown = header if len(header) <= 60 else header[:57] + "..."
            return InputError(f"the file looks {name}-separated (header: '{shown}'), but a "
                              f"{path.name} file is read as {_SEPARATOR_NAMES[expected]}-separated",
                              file=path, fix=fix)
    return None


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
            delim = _delimiter(path)
            with open_binary(path) as fh:
                cols = next(_decoded_records(fh, delim), None)
            if cols is None:
                raise InputError("the file is empty (no header line)", file=path,
                                 fix="write a header line with the column names")
            if any(_has_bad_bytes(c) for c in cols):
                raise not_utf8_error(path, row=None)
            if len(cols) == 1:
                err = _separator_error(path, cols[0], delim)
                if err is not None:
                    raise err
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


def _locate_bad_number(path: Path, column: str) -> tuple[int, str] | None:
    """Find the first value of ``column`` that is not a number: (1-based data row, value).

    Reads the column as text with the raw batch reader (never through the error conversion,
    so a second failure cannot recurse); None when it cannot be read either.
    """
    import pandas as pd
    import pyarrow as pa

    row0 = 0
    try:
        for batch in _raw_batches(path, {column: "str"}, 65536):
            s = pd.Series(batch.column(0).to_pylist(), dtype=object)
            num = pd.to_numeric(s, errors="coerce")
            bad = num.isna() & s.notna() & (s.astype(str).str.strip() != "")
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                return row0 + i + 1, str(s.iloc[i])
            row0 += len(s)
    except (OSError, pa.ArrowException):
        return None
    return None


def _arrow_conversion_error(e: Exception, path: Path, names: Sequence[str]) -> InputError:
    """Turn a pyarrow CSV/Parquet conversion error into an InputError naming row + column.

    pyarrow counts the header as row 1 (``Row #N``): our 1-based data row is ``N - 1``.
    """
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
    if "UTF8" in msg or "UTF-8" in msg:
        r = re.search(r"Row #(\d+)", msg)
        row = int(r.group(1)) - 1 if r and int(r.group(1)) > 1 else None
        return not_utf8_error(path, row=row, column=col)
    if col is not None:
        found = _locate_bad_number(path, col)
        if found is not None:
            row, val = found
            return InputError(f"'{val}' is not a number", file=path, row=row, column=col,
                              fix="this column must hold numbers only; fix or remove that value")
    return InputError(f"cannot read the table: {msg}", file=path, column=col,
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
                row, val = _locate_bad_number(path, name) or (None, "?")
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
    with _table_errors(path, columns):
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


@contextmanager
def _table_errors(path: Path, columns):
    """pyarrow's read failures as one InputError naming the file (and row / column)."""
    import pyarrow as pa

    try:
        yield
    except InputError:
        raise
    except pa.ArrowInvalid as e:
        raise _arrow_conversion_error(e, path, list(columns)) from None
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"cannot read the table ({e})", file=path,
                         fix="check that the file is a valid CSV/TSV/Parquet table") from None


def _raw_batches(path: Path, columns: dict[str, str], batch_rows: int) -> Iterator:
    """Record batches of the named columns, in the given order; pyarrow errors pass through."""
    import pyarrow as pa

    names = list(columns)
    if table_format(path) == "parquet":
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
            yield pa.RecordBatch.from_arrays([b.column(n) for n in names], names=names)


def iter_table_batches(path, columns: dict[str, str], batch_rows: int = DEFAULT_CHUNK_ROWS
                       ) -> Iterator:
    """Stream the named columns of a table as ``pyarrow.RecordBatch`` es (columns in the given
    order, types as in :func:`read_table`). CSV is parsed block by block, Parquet read batch by
    batch, so memory stays bounded whatever the file size."""

    path = Path(path)
    _require_file(path, "table")
    with _table_errors(path, columns):
        yield from _raw_batches(path, columns, batch_rows)


def parse_gene_list(spec: str | Sequence[str] | None) -> list[str] | None:
    """``"G1,G2"``, ``"@genes.txt"`` (one per line or comma-separated) or a list -> list."""
    if spec is None:
        return None
    if not isinstance(spec, (str, list, tuple)):
        raise InputError(f"the gene list must be text or a list of names, not {spec!r}",
                         fix="give G1,G2,... or @genes.txt (one name per line)")
    if not isinstance(spec, str):
        return [str(g).strip() for g in spec if str(g).strip()]
    if spec.startswith("@"):
        p = Path(spec[1:])
        _require_file(p, "gene list file")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise not_utf8_error(p, delimiter=",") from None
    else:
        text = spec
    genes = [g.strip() for line in text.splitlines() for g in line.split(",") if g.strip()]
    if not genes:
        raise InputError("the gene list is empty", file=spec[1:] if spec.startswith("@") else None,
                         fix="give gene names separated by commas or one per line")
    return genes
