"""Spatial neighbours of cells, and the ``context`` block of the feature set: per cell, the
features of its ``k`` nearest cells *of the same sample*, one block per neighbour rank.

Neighbours come from ``scipy.spatial.cKDTree`` on the store's x, y, built per sample over every
cell of that sample (cells without expression included: their images are there); a cell is
never its own neighbour and never has a neighbour in another sample, so folds by sample stay
leak-free. A sample with fewer than ``k + 1`` cells leaves the missing blocks NaN.

Columns of neighbour ``j`` (1 = nearest): ``ctx{j}_pc1..`` (the first ``components`` embedding
PCs of that cell, group ``context:embedding``), ``ctx{j}_<name>`` for the columns of the feature
set's ``/features`` datasets (group ``context:<their group>``) and ``ctx{j}_dist`` (distance to
the cell in px, group ``context:position``). Models that read the block (the ``context``
model) find it by the ``context:`` prefix of the groups and the ``ctx{j}_`` prefix of the names.
"""
from __future__ import annotations

import numpy as np

PREFIX = "context:"
_TABLES: dict = {}   # (store key, sample, k) -> (cells, neighbours, distances); see knn_rows
_MAX_TABLES = 64


def _sample_table(cells, xs, ys, k: int):
    """Neighbours (store rows) and distances of every cell of one sample."""
    from scipy.spatial import cKDTree

    pts = np.column_stack([xs[cells], ys[cells]])
    kk = min(k, len(cells) - 1)
    d, nn = cKDTree(pts).query(pts, k=kk + 1)
    d, nn = d.reshape(len(cells), kk + 1), nn.reshape(len(cells), kk + 1)
    # drop the cell itself (it may not come first when points coincide)
    is_self = nn == np.arange(len(cells))[:, None]
    keep = ~is_self
    keep[~is_self.any(axis=1), -1] = False
    return cells[nn[keep].reshape(len(cells), kk)], d[keep].reshape(len(cells), kk)


def knn_rows(samples, xs, ys, rows, k: int, cache_key=None):
    """(store rows [len(rows), k] (-1 = none), distances [len(rows), k] (NaN = none)) of the
    ``k`` nearest *other* cells of the same sample for each of ``rows``.

    With ``cache_key`` (the store's path and mtime) each sample's table is built once and
    reused by every fold and the refit of a run (at most :data:`_MAX_TABLES` kept)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.full((len(rows), k), -1, dtype=np.int64)
    dist = np.full((len(rows), k), np.nan)
    if k < 1 or not len(rows):
        return out, dist
    row_samples = samples[rows]
    for s in np.unique(row_samples):
        cells = np.flatnonzero(samples == s)  # every cell of the sample (sorted)
        if len(cells) < 2:
            continue
        key = None if cache_key is None else (cache_key, str(s), int(k), len(cells))
        table = _TABLES.get(key) if key is not None else None
        if table is None:
            table = _sample_table(cells, xs, ys, k)
            if key is not None:
                while len(_TABLES) >= _MAX_TABLES:
                    _TABLES.pop(next(iter(_TABLES)))
                _TABLES[key] = table
        nn, d = table
        want = np.flatnonzero(row_samples == s)
        local = np.searchsorted(cells, rows[want])
        out[want, :nn.shape[1]] = nn[local]
        dist[want, :nn.shape[1]] = d[local]
    return out, dist


def store_key(f):
    """A cache key for the neighbour tables of an open store (path + modification time)."""
    import os

    name = str(getattr(f, "filename", ""))
    try:
        return (os.path.abspath(name), os.stat(name).st_mtime_ns)
    except OSError:
        return None


def context_layout(k: int, c: int, extra: list[dict]) -> tuple[list[str], list[str]]:
    """(names, groups) of the context block: ``k`` neighbour blocks of ``c`` PCs, the extra
    feature columns and the distance."""
    names, groups = [], []
    for j in range(1, k + 1):
        names += [f"ctx{j}_pc{i + 1}" for i in range(c)]
        groups += [PREFIX + "embedding"] * c
        for ef in extra:
            names += [f"ctx{j}_{n}" for n in ef["names"]]
            groups += [PREFIX + g for g in ef["groups"]]
        names.append(f"ctx{j}_dist")
        groups.append(PREFIX + "position")
    return names, groups


def context_block(builder, f, rows, samples, xs, ys, k: int, c: int, batch_size: int):
    """float32 [len(rows), k * (c + extra + 1)]: the context columns of ``rows``."""
    from .store import iter_batches

    nbr, dist = knn_rows(samples, xs, ys, rows, k, cache_key=store_key(f))
    uniq = np.unique(nbr[nbr >= 0])
    parts = []
    if builder.embedding_name_ and c:
        key = f"embeddings/{builder.embedding_name_}"
        parts.append(np.concatenate([builder._project(b[key], c) for b in
                                     iter_batches(f, [key], batch_size, rows=uniq)])
                     if len(uniq) else np.zeros((0, c), np.float32))
    for ef in builder.extra_features_:
        key = f"features/{ef['name']}"
        K = len(ef["names"])
        parts.append(np.concatenate([np.asarray(b[key], np.float32).reshape(len(b["rows"]), K)
                                     for b in iter_batches(f, [key], batch_size, rows=uniq)])
                     if len(uniq) else np.zeros((0, K), np.float32))
    per = np.concatenate(parts, axis=1) if parts else np.zeros((len(uniq), 0), np.float32)
    w = per.shape[1] + 1
    out = np.full((len(rows), k * w), np.nan, dtype=np.float32)
    pos = np.searchsorted(uniq, np.where(nbr >= 0, nbr, 0))
    for j in range(k):
        ok = nbr[:, j] >= 0
        out[ok, j * w:j * w + w - 1] = per[pos[ok, j]]
        out[:, j * w + w - 1] = dist[:, j]
    return out


def context_columns(names, groups):
    """For a fitted feature matrix: (cell column indices, [k, w] neighbour column indices)."""
    import re

    ctx = [i for i, g in enumerate(groups) if str(g).startswith(PREFIX)]
    cell = [i for i, g in enumerate(groups) if not str(g).startswith(PREFIX)]
    by_j: dict = {}
    for i in ctx:
        m = re.match(r"ctx(\d+)_", str(names[i]))
        if m:
            by_j.setdefault(int(m.group(1)), []).append(i)
    if not by_j:
        return np.asarray(cell, dtype=np.int64), np.zeros((0, 0), dtype=np.int64)
    widths = {len(v) for v in by_j.values()}
    if len(widths) != 1:  # a constant column dropped in one block only: keep the common ones
        w = min(widths)
        by_j = {j: v[:w] for j, v in by_j.items()}
    return (np.asarray(cell, dtype=np.int64),
            np.asarray([by_j[j] for j in sorted(by_j)], dtype=np.int64))
