"""The tabst store: one self-describing HDF5 file (schema v1, see DESIGN.md).

Layout::

    /                       attrs: tabst_schema=1, created_utc, tabst_version, provenance (JSON)
    /cells/<field>          1-D [N]: cell_id (str, unique), sample, tissue, x, y (+ group, image, ...)
    /images/<sample>        empty group, attrs: kind, path (relative to the store), mask_path, ...
    /expression/X           float32 [N, G], row-chunked; attr transform
    /expression/genes       str [G]
    /embeddings/<name>      float32 [N, D]; attrs describe the encoder; attr complete
    /features/<name>        float32 [N, K]; attrs names [K], groups [K]

Every dataset carries a ``description`` attr (and ``unit`` where one exists).
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import h5py
import numpy as np

from . import __version__
from .errors import StoreError
from .util import sha256_file

SCHEMA_VERSION = 1
STR = h5py.string_dtype("utf-8")
ROW_CHUNK_BYTES = 1 << 20  # ~1 MiB per chunk of a 2-D dataset


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_provenance(inputs: Iterable = (), command: Sequence[str] | None = None,
                     hash_inputs: bool = True, **extra) -> dict:
    """Provenance record: every input path with its size and sha256, plus the command line.

    Directories are recorded with their total size and no hash.
    """
    recs = []
    for p in inputs:
        p = Path(p)
        rec = {"path": str(p.resolve())}
        if p.is_file():
            rec["bytes"] = p.stat().st_size
            if hash_inputs:
                rec["sha256"] = sha256_file(p)
        elif p.is_dir():
            rec["bytes"] = sum(q.stat().st_size for q in p.rglob("*") if q.is_file())
            rec["kind"] = "directory"
        recs.append(rec)
    cmd = list(command) if command is not None else list(sys.argv)
    out = {"inputs": recs, "command": shlex.join(cmd), "cwd": os.getcwd(),
           "tabst_version": __version__, "created_utc": now_utc()}
    out.update(extra)
    return out


@contextmanager
def create_store(path, *, force: bool = False, provenance: dict | None = None,
                 expected_bytes: int | None = None):
    """Create a store atomically: write to a hidden temp file beside ``path``, rename at the end.

    The target is checked first (:func:`tabst.outputs.prepare_output`), the store's lock is held
    while the body writes, and the final rename never replaces a store that another process
    created meanwhile unless ``force``. If the body raises, the temp file is removed and nothing
    appears at ``path``.
    """
    from .outputs import atomic_output

    with atomic_output(path, "file", force=force, expected_bytes=expected_bytes,
                       what="store") as tmp:
        f = h5py.File(tmp, "w")
        try:
            f.attrs["tabst_schema"] = SCHEMA_VERSION
            f.attrs["created_utc"] = now_utc()
            f.attrs["tabst_version"] = __version__
            f.attrs["provenance"] = json.dumps(provenance or build_provenance())
            f.attrs["description"] = ("tabst store: cells, images, expression, embeddings and "
                                      "features for H&E -> expression modelling; see /cells, "
                                      "/expression, ...")
            yield f
        finally:
            f.close()


def open_store(path, mode: str = "r") -> h5py.File:
    """Open an existing store, checking that it is a tabst store of schema v1."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such store. Create one with `tabst ingest ...` or `tabst demo`.")
    if mode != "r" and not os.access(path, os.W_OK):
        raise StoreError(f"{path}: the store is not writable (permission denied or a read-only "
                         "file system); this command adds to it. Copy it somewhere writable.")
    try:
        f = h5py.File(path, mode)
    except OSError as e:
        from .outputs import held_message, lock_holder

        holder = lock_holder(path)
        if holder is not None:
            raise StoreError(held_message(path, holder, "store")) from None
        raise StoreError(f"{path}: not a readable HDF5 file ({e}).") from None
    v = f.attrs.get("tabst_schema")
    if v is None:
        f.close()
        raise StoreError(f"{path}: an HDF5 file but not a tabst store (no 'tabst_schema' attribute). "
                         "Create a store with `tabst ingest ...`.")
    if int(v) != SCHEMA_VERSION:
        writer = f.attrs.get("tabst_version", "?")
        f.close()
        raise StoreError(
            f"{path}: store schema version {int(v)}, but this tabst ({__version__}) reads version "
            f"{SCHEMA_VERSION}. Re-run `tabst ingest` with this version on the original inputs, "
            f"or install the tabst release that wrote it ({writer}).")
    return f


@contextmanager
def opened(store, mode: str = "r"):
    """Accept a path or an open h5py.File; close only what we opened."""
    if isinstance(store, (h5py.File, h5py.Group)):
        yield store
    else:
        f = open_store(store, mode)
        try:
            yield f
        finally:
            f.close()


def row_chunks(shape, dtype) -> tuple | None:
    """Row-chunking for a dataset: whole rows, about 1 MiB per chunk."""
    if len(shape) == 0 or shape[0] == 0:
        return None
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize if len(shape) > 1 \
        else np.dtype(dtype).itemsize
    rows = int(max(1, min(shape[0], ROW_CHUNK_BYTES // max(1, row_bytes))))
    return (rows,) + tuple(shape[1:])


def put(group: h5py.Group, name: str, data=None, *, description: str, unit: str | None = None,
        shape=None, dtype=None, compression: str | None = None, **attrs) -> h5py.Dataset:
    """Create a dataset with a ``description`` (and ``unit``) attr; strings become UTF-8.

    Give ``data``, or ``shape`` + ``dtype`` to allocate for chunked writing. ``compression``:
    an h5py filter name, or ``"fast"`` for byte-shuffle + gzip level 1 (floats shrink well,
    any HDF5 reader opens it).
    """
    filters = ({"compression": "gzip", "compression_opts": 1, "shuffle": True}
               if compression == "fast" else {"compression": compression})
    if name in group:
        del group[name]
    if data is not None:
        arr = np.asarray(data)
        if arr.dtype.kind in ("U", "O", "S"):
            arr = np.asarray([str(s) for s in arr.ravel()], dtype=object).reshape(arr.shape)
            ds = group.create_dataset(name, data=arr, dtype=STR,
                                      chunks=row_chunks(arr.shape, np.float64) if arr.size else None)
        else:
            ds = group.create_dataset(name, data=arr, chunks=row_chunks(arr.shape, arr.dtype),
                                      **filters)
    else:
        dt = STR if dtype in (str, "str") else dtype
        ds = group.create_dataset(name, shape=shape, dtype=dt,
                                  chunks=row_chunks(shape, np.float64 if dt is STR else dt),
                                  **filters)
    ds.attrs["description"] = description
    if unit is not None:
        ds.attrs["unit"] = unit
    for k, v in attrs.items():
        set_attr(ds, k, v)
    return ds


def set_attr(obj, key: str, value) -> None:
    """Set an attr; lists of strings become UTF-8 arrays, dicts become JSON."""
    if isinstance(value, dict):
        obj.attrs[key] = json.dumps(value)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        obj.attrs.create(key, np.asarray(value, dtype=object), dtype=STR)
    elif value is None:
        obj.attrs[key] = ""
    else:
        obj.attrs[key] = value


def get_str_list(obj, key: str) -> list[str]:
    """Read a list-of-strings attr written by :func:`set_attr`."""
    v = obj.attrs[key]
    return [x.decode() if isinstance(x, bytes) else str(x) for x in np.atleast_1d(v)]


def read_strings(ds) -> np.ndarray:
    """A string dataset as a numpy array of Python ``str`` (object dtype)."""
    return np.asarray(ds.asstr()[()], dtype=object)


def n_cells(store) -> int:
    with opened(store) as f:
        return int(f["cells/cell_id"].shape[0])


def cells_frame(store, fields: Sequence[str] | None = None):
    """``/cells`` as a pandas DataFrame (strings decoded)."""
    import pandas as pd

    with opened(store) as f:
        g = f["cells"]
        names = list(fields) if fields is not None else list(g.keys())
        cols = {}
        for k in names:
            ds = g[k]
            cols[k] = read_strings(ds) if ds.dtype.kind == "O" else ds[()]
        return pd.DataFrame(cols)


def _read_rows(ds: h5py.Dataset, idx: np.ndarray) -> np.ndarray:
    """Read rows ``idx`` (any order, duplicates allowed) with one sorted, unique read."""
    uniq, inverse = np.unique(idx, return_inverse=True)
    if len(uniq) == 0:
        arr = ds[0:0]
    elif uniq[-1] - uniq[0] + 1 == len(uniq):
        arr = ds[int(uniq[0]): int(uniq[-1]) + 1]
    else:
        arr = ds[uniq]
    if ds.dtype.kind == "O":
        arr = np.asarray([a.decode() if isinstance(a, bytes) else a for a in arr], dtype=object)
    if len(uniq) == len(idx) and np.array_equal(uniq, idx):
        return arr
    return arr[inverse]


def iter_batches(store, fields: Sequence[str], batch_size: int, rows=None, shuffle: bool = False,
                 seed: int = 0) -> Iterator[dict]:
    """Yield dicts ``{field: array, "rows": row_indices}`` of at most ``batch_size`` rows.

    ``fields`` are dataset paths inside the store (``"cells/x"``, ``"expression/X"``,
    ``"embeddings/<name>"``). Only the requested rows are read from disk, one sorted index read
    per field and batch, so memory holds at most ``batch_size`` rows per field. ``rows`` restricts
    to those row indices (kept in the given order unless ``shuffle``).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    with opened(store) as f:
        missing = [k for k in fields if k not in f]
        if missing:
            raise StoreError(f"{getattr(f, 'filename', store)}: no dataset {', '.join(missing)} in the "
                             f"store (it has: {', '.join(_all_datasets(f))}).")
        n = f[fields[0]].shape[0] if fields else n_cells(f)
        idx_all = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        if shuffle:
            idx_all = np.random.default_rng(seed).permutation(idx_all)
        for start in range(0, len(idx_all), batch_size):
            idx = idx_all[start:start + batch_size]
            out = {k: _read_rows(f[k], idx) for k in fields}
            out["rows"] = idx
            yield out


def torch_dataset(store_path, fields: Sequence[str], batch_size: int, rows=None,
                  shuffle: bool = False, seed: int = 0):
    """A torch ``IterableDataset`` over :func:`iter_batches` (each item is one batch dict).

    With DataLoader workers, batch ``i`` goes to worker ``i % num_workers``; use
    ``DataLoader(ds, batch_size=None, num_workers=k)``.
    """
    import torch.utils.data as tud

    class _StoreBatches(tud.IterableDataset):
        def __iter__(self):
            info = tud.get_worker_info()
            wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
            for i, b in enumerate(iter_batches(store_path, fields, batch_size, rows, shuffle, seed)):
                if i % nw == wid:
                    yield b

    return _StoreBatches()


def _all_datasets(f) -> list[str]:
    out = []
    f.visititems(lambda name, obj: out.append(name) if isinstance(obj, h5py.Dataset) else None)
    return out


def walk(f) -> list[dict]:
    """Every group and dataset with shape, dtype, chunks and attrs (for ``tabst info``)."""
    items = [{"path": "/", "kind": "group", "attrs": attrs_dict(f)}]

    def visit(name, obj):
        rec = {"path": "/" + name, "attrs": attrs_dict(obj)}
        if isinstance(obj, h5py.Dataset):
            rec.update(kind="dataset", shape=list(obj.shape), dtype=_dtype_name(obj),
                       chunks=list(obj.chunks) if obj.chunks else None,
                       compression=obj.compression)
        else:
            rec["kind"] = "group"
        items.append(rec)

    f.visititems(visit)
    return items


def _dtype_name(ds) -> str:
    return "str" if ds.dtype.kind == "O" else str(ds.dtype)


def attrs_dict(obj) -> dict:
    out = {}
    for k, v in obj.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.ndarray):
            v = [x.decode() if isinstance(x, bytes) else x for x in v.tolist()]
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out
