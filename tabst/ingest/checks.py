"""Value checks shared by every ingest reader (table, Visium, ST, HEST, Crunch).

Each check raises :class:`~tabst.errors.InputError` at the *first* bad value, naming the file,
the 1-based data row, the column (gene / coordinate column / config key) and a fix, so a bad
value never reaches a store silently:

- :func:`check_expression_block` -- NaN, inf or (unless allowed) negative expression values in a
  dense or sparse block of rows;
- :func:`check_coordinates` -- NaN or inf spot / cell centres;
- :func:`check_sample_name` -- names that would nest HDF5 groups or point outside a folder;
- :func:`check_config_types` -- values of a YAML config by declared type (booleans must be YAML
  ``true`` / ``false``, numbers numbers, ...);
- :func:`json_number` -- one numeric field of a JSON file (e.g. Visium scale factors).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError

#: characters and substrings a sample name must not contain
SAMPLE_NAME_FORBIDDEN = ("..", "/", "\\", "\x00")


def _row_of(i: int, row_offset: int | None, rows) -> int | None:
    if rows is not None:
        return int(np.asarray(rows)[i])
    if row_offset is None:
        return None
    return int(row_offset) + int(i) + 1


def _id_note(i: int, row_ids, label: str = "id") -> str:
    if row_ids is None:
        return ""
    try:
        v = row_ids[int(i)]
    except (IndexError, TypeError, KeyError):
        return ""
    v = v.as_py() if hasattr(v, "as_py") else v
    v = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return f" ({label} '{v}')"


def _first_bad_sparse(block, bad_data: np.ndarray) -> tuple[int, int, float]:
    """(row, column, value) of the first flagged stored value of a CSR matrix."""
    k = int(np.flatnonzero(bad_data)[0])
    i = int(np.searchsorted(block.indptr, k, side="right") - 1)
    return i, int(block.indices[k]), float(block.data[k])


def check_expression_block(block, *, file, row_offset: int | None, genes: Sequence[str],
                           allow_negative: bool = False, what: str = "count", rows=None,
                           row_ids=None, id_label: str = "id",
                           negative_fix: str | None = None) -> None:
    """Raise :class:`InputError` at the first NaN, infinite or negative value of a block.

    Parameters
    ----------
    block : array-like or scipy.sparse matrix, shape (k, G)
        Rows of an expression matrix as read from ``file`` (a dense array or any scipy sparse
        matrix; for sparse input only the stored values are checked -- zeros are fine).
    file : path-like or None
        The input file the block was read from (named in the message).
    row_offset : int or None
        Number of data rows of ``file`` before the block: block row ``i`` is reported as data
        row ``row_offset + i + 1`` (1-based, header excluded). ``None``: no row number (e.g.
        a matrix without rows in the file's own sense); ignored when ``rows`` is given.
    genes : sequence of str, length G
        Name of each block column, reported as the column (gene names; for a genes x spots
        file read as-is, the spot ids).
    allow_negative : bool, default False
        Accept negative values (centred / scaled data).
    what : str, default "count"
        What the values are, used in the message: ``"count"`` (raw counts) or e.g.
        ``"expression value"``.
    rows : array-like of int, optional
        Explicit 1-based data row of each block row (when the block is a subset of the file).
    row_ids : sequence, optional
        Cell / spot id of each block row, named in the message.
    id_label : str, default "id"
        What the ids are called in the message (``"barcode"``, ``"spot"``, ...).
    negative_fix : str, optional
        The fix shown for a negative value (default depends on ``what``).

    Raises
    ------
    InputError
        Naming the file, data row, gene and the fix.
    """
    import scipy.sparse as sp

    if sp.issparse(block):
        m = sp.csr_matrix(block)
        data = np.asarray(m.data)
        finite = np.isfinite(data)
        bad = None if finite.all() else _first_bad_sparse(m, ~finite)
        neg = None
        if bad is None and not allow_negative and data.size and data.min() < 0:
            neg = _first_bad_sparse(m, data < 0)
    else:
        a = np.asarray(block)
        if a.ndim == 1:
            a = a[None, :]
        finite = np.isfinite(a)
        bad = neg = None
        if not finite.all():
            i, j = np.argwhere(~finite)[0]
            bad = int(i), int(j), float(a[i, j])
        elif not allow_negative and a.size and a.min() < 0:
            i, j = np.argwhere(a < 0)[0]
            neg = int(i), int(j), float(a[i, j])
    if bad is not None:
        i, j, v = bad
        desc = "missing or NaN" if math.isnan(v) else "infinite (or too large for float32)"
        fix = ("fill missing counts with 0 (a gene not detected in a spot has count 0)"
               if what == "count" else "every cell needs a finite value for every gene")
        raise InputError(f"{what} is {desc}{_id_note(i, row_ids, id_label)}", file=file,
                         row=_row_of(i, row_offset, rows), column=str(genes[j]), fix=fix)
    if neg is not None:
        i, j, v = neg
        if negative_fix is None:
            negative_fix = ("give raw (non-negative) counts" if what == "count" else
                            "give counts or log-normalised values (>= 0), or pass "
                            "--allow-negative if the values are centred/scaled on purpose")
        raise InputError(f"negative {what} {v:g}{_id_note(i, row_ids, id_label)}", file=file,
                         row=_row_of(i, row_offset, rows), column=str(genes[j]), fix=negative_fix)


def check_coordinates(x, y, *, file, row_offset: int | None = 0,
                      columns: Sequence[str] = ("x", "y"), rows=None, row_ids=None,
                      what: str = "coordinate", id_label: str = "id",
                      unit: str = "pixels") -> None:
    """Raise :class:`InputError` at the first NaN or infinite x / y coordinate.

    Parameters
    ----------
    x, y : array-like of float, length n
        Coordinates as read from ``file``.
    file : path-like or None
        The input file (named in the message).
    row_offset : int or None, default 0
        Data rows of ``file`` before ``x[0]``; row ``i`` is reported as ``row_offset + i + 1``
        (``None``: no row number); ignored when ``rows`` is given.
    columns : (str, str)
        Names of the x and y columns in ``file``.
    rows : array-like of int, optional
        Explicit 1-based data row of each coordinate.
    row_ids : sequence, optional
        Cell / spot id of each row, named in the message.
    what : str
        What the coordinates are (``"coordinate"``, ``"spot centre"`` ...).
    id_label : str
        What the ids are called in the message.
    unit : str
        Their unit, for the fix.
    """
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    bad = ~(np.isfinite(xs) & np.isfinite(ys))
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    name, v = (columns[0], xs[i]) if not np.isfinite(xs[i]) else (columns[1], ys[i])
    desc = "missing (NaN)" if math.isnan(v) else f"infinite ({v:g})"
    raise InputError(f"{what} is {desc}{_id_note(i, row_ids, id_label)}", file=file,
                     row=_row_of(i, row_offset, rows), column=str(name),
                     fix=f"every row needs finite x and y ({unit}); fill in or remove that row")


def check_sample_name(name, *, file=None, row=None, column=None, what: str = "sample name") -> str:
    """Refuse a sample name that would nest HDF5 groups or point outside an input folder.

    ``/images/<sample>`` is an HDF5 group and ``<images>/<sample>.<ext>`` a file name, so a name
    must not contain ``/``, ``\\``, ``..`` or a NUL byte, nor be empty. Returns the name (str).

    Parameters
    ----------
    name : object
        The sample name (converted with ``str``).
    file, row, column : optional
        Where the name comes from (a label table row, a manifest, ...), for the message.
    what : str
        How the name is called in the message (``"sample name"``, ``"HEST id"`` ...).
    """
    s = "" if name is None else str(name)
    if not s.strip():
        raise InputError(f"empty {what}", file=file, row=row, column=column,
                         fix="give every sample a name")
    bad = next((b for b in SAMPLE_NAME_FORBIDDEN if b in s), None)
    if bad is not None or s in (".",):
        shown = {"\x00": "a NUL byte"}.get(bad, f"'{bad}'" if bad else "'.'")
        raise InputError(f"{what} '{s}' contains {shown}: it would create nested groups in the "
                         "store or point outside the input folder", file=file, row=row,
                         column=column,
                         fix="rename the sample using letters, digits, '_', '-' and single dots "
                             "(e.g. replace '/' by '_')")
    return s


# ---------------------------------------------------------------------------------------------
# configs and JSON fields
# ---------------------------------------------------------------------------------------------
_KIND_TEXT = {
    "bool": "true or false (a YAML boolean, unquoted)",
    "number": "a number",
    "positive number": "a positive number",
    "str": "a text value",
    "str list": "a text value or a list of text values",
    "mapping": "a mapping of name: text value",
}


def _type_ok(value, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind in ("number", "positive number"):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        return math.isfinite(value) and (kind == "number" or value > 0)
    if kind == "str":
        return isinstance(value, str)
    if kind == "str list":
        return isinstance(value, str) or (isinstance(value, list) and all(
            isinstance(v, str) for v in value))
    if kind == "mapping":
        return isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    raise ValueError(f"unknown config kind {kind!r}")


def check_config_types(cfg: Mapping, schema: Mapping[str, str], *, file,
                       examples: Mapping[str, str] | None = None) -> None:
    """Check the type of every value of a parsed YAML config.

    Parameters
    ----------
    cfg : mapping
        The parsed config (keys already known to be valid).
    schema : mapping
        key -> kind: ``"bool"`` (YAML ``true``/``false`` only: the text ``"no"`` is refused,
        not read as true), ``"number"``, ``"positive number"``, ``"str"``, ``"str list"`` (a
        text or a list of texts) or ``"mapping"`` (name: text).
    file : path-like or None
        The config file (named in the message); None for values given as arguments.
    examples : mapping, optional
        key -> an example line for the fix.

    Raises
    ------
    InputError
        Naming the file and the key, the expected type and the value found.
    """
    for key, value in cfg.items():
        kind = schema.get(key)
        if kind is None or value is None or _type_ok(value, kind):
            continue
        shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
        example = (examples or {}).get(key) or {
            "bool": f"{key}: true", "number": f"{key}: 0.5", "positive number": f"{key}: 0.5",
            "str": f"{key}: some_name", "str list": f"{key}: [A, B]",
            "mapping": f"{key}: {{field: column}}"}[kind]
        label = f"config key '{key}'" if file is not None else f"'{key}'"
        raise InputError(f"{label} must be {_KIND_TEXT[kind]}, not {shown}", file=file,
                         fix=f"write e.g.  {example}")


def numeric_columns(df, columns, *, file, fix: str, required=(), missing: str = "missing value",
                    missing_fix: str = "") -> None:
    """Convert ``df[columns]`` to numbers in place; one InputError (1-based data row, column)
    for text that is not a number, or for an empty value in a ``required`` column."""
    import pandas as pd

    for col in columns:
        v = pd.to_numeric(df[col], errors="coerce")
        text = v.isna() & df[col].notna()
        if text.any():
            r = int(np.flatnonzero(text.to_numpy())[0])
            raise InputError(f"not a number: '{df[col].iloc[r]}'", file=file, row=r + 1,
                             column=col, fix=fix)
        if col in required and v.isna().any():
            r = int(np.flatnonzero(v.isna().to_numpy())[0])
            raise InputError(missing, file=file, row=r + 1, column=col, fix=missing_fix)
        df[col] = v


def read_json_object(path, *, fix: str, expected: str) -> dict:
    """A UTF-8 JSON file holding one object, or one InputError naming the file: not valid
    JSON (``fix``) or not an object (``expected`` shows the shape wanted)."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid JSON ({e})", file=path, fix=fix) from None
    if not isinstance(obj, dict):
        raise InputError("the file does not hold a JSON object", file=path,
                         fix=f"expected {expected}")
    return obj


def json_number(obj: Mapping, key: str, *, file, positive: bool = True,
                required: bool = True) -> float | None:
    """A numeric field of a parsed JSON object, as float.

    Parameters
    ----------
    obj : mapping
        The parsed JSON object.
    key : str
        Field name.
    file : path-like
        The JSON file (named in the message).
    positive : bool, default True
        The value must be > 0.
    required : bool, default True
        A missing (or null) field raises; else it returns None.
    """
    v = obj.get(key) if isinstance(obj, Mapping) else None
    if v is None:
        if required:
            raise InputError(f"no '{key}' field", file=file, column=key,
                             fix=f"the file needs a numeric '{key}'")
        return None
    ok = not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v) \
        and (not positive or v > 0)
    if not ok:
        raise InputError(f"'{key}' is {v!r}, not a {'positive ' if positive else ''}number",
                         file=file, column=key,
                         fix=f"write a number, e.g. \"{key}\": 0.25 (no quotes around it)")
    return float(v)
