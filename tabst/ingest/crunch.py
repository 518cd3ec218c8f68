"""Ingest Broad / CrunchDAO "Crunch 1" SpatialData zarr files into a tabst store.

One zarr per sample (sample name = the zarr's stem, e.g. ``UC1_NI.zarr`` -> ``UC1_NI``) holding

- image ``HE_original`` (c, y, x), uint8 H&E,
- label image ``HE_nuc_original`` (y, x): pixel value = ``cell_id`` of the nucleus, 0 = background,
- table ``anucleus``: ``X`` = log1p(count/total*100) of 460 genes, ``layers['counts']``,
  ``obs['cell_id']``, gene names in ``var_names``,
- table ``cell_id-group``: ``obs['cell_id']`` -> ``obs['group']`` (train / validation / test).

Cell centroids come from the label image, computed tile by tile (:func:`label_centroids`): per
tile the pixel count and the row / column sums of every label are accumulated, so a centroid is
exactly the whole-image :func:`skimage.measure.regionprops` centroid (mean of the pixel
coordinates, ``x`` = column, ``y`` = row) and a nucleus cut by tile borders is counted once.
Memory grows with the tile size, never with the image size.

Which cells enter the store
---------------------------
- every cell of the group table whose nucleus is in the mask, with its group; cells without an
  ``anucleus`` row (validation / test) get ``/cells/has_expression`` False and NaN expression;
- cells of ``anucleus`` absent from the group table but present in the mask (they have measured
  expression, i.e. training data) with group ``train``;
- dropped, counted, printed and recorded in the ``/images/<sample>`` attrs: table cells (group
  or expression) whose id has no nucleus in the mask (they cannot be located), and mask nuclei
  that appear in neither table.

The pixels stay in the zarr: ``/images/<sample>`` (kind ``spatialdata``) references it and
:class:`ZarrSampleImage` reads image and nucleus-mask regions lazily from it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, TabstError

IMAGE_ELEMENT = "HE_original"
MASK_ELEMENT = "HE_nuc_original"
EXPRESSION_TABLE = "anucleus"
GROUP_TABLE = "cell_id-group"
EXPRESSION_TRANSFORM = "log1p(count/total*100) (Crunch 1 anucleus X)"
DEFAULT_TILE = 2048


# --------------------------------------------------------------------------------------------
# centroids, tile by tile
# --------------------------------------------------------------------------------------------

@dataclass
class Centroids:
    """Per-label statistics of a label image (labels ascending, background 0 excluded)."""

    label: np.ndarray   # int64 [n]
    area: np.ndarray    # int64 [n], pixels
    y: np.ndarray       # float64 [n], mean row (regionprops centroid[0])
    x: np.ndarray       # float64 [n], mean column (regionprops centroid[1])
    n_tiles: int = 0

    def __len__(self) -> int:
        return len(self.label)


def _read_tile(labels, y0, y1, x0, x1) -> np.ndarray:
    part = labels[y0:y1, x0:x1]
    if hasattr(part, "compute"):  # dask: one synchronous read, no thread pool buffers
        part = part.compute(scheduler="synchronous")
    return np.asarray(part)


def _tile_sums(t: np.ndarray, y0: int, x0: int, strip_pixels: int = 1 << 19):
    """Labels present in tile ``t`` (origin y0, x0) with pixel counts and coordinate sums.

    The tile is processed in strips of about ``strip_pixels`` pixels, so the temporaries
    (indices, coordinate weights) stay small next to the tile itself.
    """
    h, w = t.shape
    if t.dtype.kind not in "iu":
        if t.dtype.kind == "f" and np.all(np.mod(t, 1) == 0):
            t = t.astype(np.int64)
        else:
            raise TabstError(f"nucleus label image has dtype {t.dtype}; labels must be integers.")
    lo, hi = int(t.min()), int(t.max())
    if lo < 0:
        raise TabstError(f"nucleus label image has negative label {lo} near row {y0}, column {x0}; "
                         "labels must be >= 0 (0 = background).")
    if hi == 0:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0), np.zeros(0)
    dense = hi - lo <= 4 * t.size + (1 << 16)
    if dense:  # dense label range: bincount straight on the values (fast, no sort)
        labels = np.arange(lo, hi + 1, dtype=np.int64)
    else:      # sparse huge ids: compact them first
        labels = np.unique(t).astype(np.int64)
    size = len(labels)
    count = np.zeros(size, np.int64)
    sy = np.zeros(size)
    sx = np.zeros(size)
    cols = np.arange(x0, x0 + w, dtype=np.float64)
    step = max(1, strip_pixels // max(w, 1))
    for r0 in range(0, h, step):
        part = t[r0:r0 + step]
        k = part.shape[0]
        idx = (part.ravel() - lo).astype(np.intp) if dense else \
            np.searchsorted(labels, part.ravel()).astype(np.intp)
        c = np.bincount(idx, minlength=size)
        count += c
        # row sums: each row contributes (row index x its label counts); exact in float64
        per_row = np.bincount(idx, weights=np.repeat(np.arange(y0 + r0, y0 + r0 + k,
                                                               dtype=np.float64), w),
                              minlength=size)
        sy += per_row
        sx += np.bincount(idx, weights=np.tile(cols, k), minlength=size)
    keep = (count > 0) & (labels != 0)
    return labels[keep], count[keep], sy[keep], sx[keep]


def _merge(parts):
    lab = np.concatenate([p[0] for p in parts])
    uniq, inv = np.unique(lab, return_inverse=True)
    n = len(uniq)
    cnt = np.bincount(inv, weights=np.concatenate([p[1] for p in parts]), minlength=n)
    sy = np.bincount(inv, weights=np.concatenate([p[2] for p in parts]), minlength=n)
    sx = np.bincount(inv, weights=np.concatenate([p[3] for p in parts]), minlength=n)
    return uniq, cnt.astype(np.int64), sy, sx


def label_centroids(labels, tile: int = DEFAULT_TILE, *, progress=None, description: str = "nuclei"
                    ) -> Centroids:
    """Centroid and area of every label of a 2-D label image, reading one tile at a time.

    Parameters
    ----------
    labels
        2-D array-like that supports slicing (dask / xarray / zarr / numpy), values = labels,
        0 = background. Only ``tile x tile`` pixels are materialised at once.
    tile
        Tile edge in pixels.
    progress
        Optional :func:`tabst.util.progress` instance; one task advances per tile.

    Returns
    -------
    Centroids
        Equal to whole-image ``skimage.measure.regionprops``: ``y, x = region.centroid``,
        ``area = region.area`` (a label split across tiles or in several pieces is one region).
    """
    if tile < 16:
        raise TabstError(f"--tile must be at least 16 pixels (got {tile}).")
    if getattr(labels, "ndim", 2) != 2:
        raise TabstError(f"nucleus label image must be 2-D (y, x); it has shape {labels.shape}.")
    H, W = (int(s) for s in labels.shape)
    ny, nx = math.ceil(H / tile), math.ceil(W / tile)
    task = progress.add_task(f"centroids {description}", total=ny * nx) if progress else None
    parts, pending = [], 0
    for ty in range(ny):
        for tx in range(nx):
            y0, x0 = ty * tile, tx * tile
            t = _read_tile(labels, y0, min(H, y0 + tile), x0, min(W, x0 + tile))
            parts.append(_tile_sums(t, y0, x0))
            del t
            pending += len(parts[-1][0])
            if len(parts) > 1 and pending > 250_000:  # keep partial sums compact
                parts = [_merge(parts)]
                pending = len(parts[0][0])
            if task is not None:
                progress.advance(task)
    if not parts:
        e = np.zeros(0, np.int64)
        return Centroids(e, e, np.zeros(0), np.zeros(0), 0)
    lab, cnt, sy, sx = _merge(parts)
    return Centroids(lab, cnt, sy / cnt, sx / cnt, ny * nx)


# --------------------------------------------------------------------------------------------
# reading the zarr
# --------------------------------------------------------------------------------------------

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


def _import_spatialdata():
    try:
        with _quiet():
            import spatialdata
    except ImportError as e:  # pragma: no cover - depends on the install
        raise TabstError("`tabst ingest crunch` needs the `spatialdata` library: "
                         "pip install 'tabst[spatial]' (or pip install spatialdata anndata). "
                         f"({e})") from None
    return spatialdata


def _holdings(sdata) -> str:
    parts = []
    for kind in ("images", "labels", "points", "shapes", "tables"):
        names = list(getattr(sdata, kind, {}).keys())
        parts.append(f"{kind}: {', '.join(repr(n) for n in names) if names else '(none)'}")
    return "; ".join(parts)


def _scale0(elem):
    """The full-resolution DataArray of a (possibly multiscale) raster element."""
    if hasattr(elem, "dims") and hasattr(elem, "data") and not hasattr(elem, "children"):
        return elem
    sd = _import_spatialdata()
    return sd.get_pyramid_levels(elem, n=0)


def sample_name(path) -> str:
    """Sample name of a zarr: its stem (``data/UC1_NI.zarr`` -> ``UC1_NI``)."""
    name = Path(path).name
    return name[:-5] if name.lower().endswith(".zarr") else Path(path).stem


def _ids(values, *, file, table: str, column: str) -> np.ndarray:
    """Cell ids of a table column as int64 (they are label values of the nucleus mask)."""
    import pandas as pd

    s = pd.Series(np.asarray(values))
    num = pd.to_numeric(s.astype(str).str.strip(), errors="coerce") if s.dtype.kind in "OSU" \
        else pd.to_numeric(s, errors="coerce")
    bad = num.isna() | (num % 1 != 0)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"table '{table}': cell_id {s.iloc[i]!r} is not an integer; Crunch "
                         "cell ids are the pixel values of the nucleus mask.", file=file, row=i + 1,
                         column=column, fix="use the cell ids of the nucleus label image")
    ids = num.to_numpy().astype(np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        rows = np.flatnonzero(ids == dup)[:2] + 1
        raise InputError(f"table '{table}': cell_id {dup} appears more than once (rows "
                         f"{rows[0]} and {rows[1]}).", file=file, row=int(rows[1]), column=column,
                         fix="each cell must have exactly one row")
    return ids


def _lookup(ids: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Row of each ``query`` value in the unique array ``ids``, -1 where absent."""
    order = np.argsort(ids, kind="stable")
    srt = ids[order]
    pos = np.searchsorted(srt, query)
    pos_c = np.minimum(pos, max(len(srt) - 1, 0))
    found = (pos < len(srt)) & (srt[pos_c] == query) if len(srt) else np.zeros(len(query), bool)
    out = np.full(len(query), -1, dtype=np.int64)
    out[found] = order[pos_c[found]]
    return out


@dataclass
class SampleCells:
    """What one sample contributes to the store (everything but the expression matrix)."""

    sample: str
    path: Path
    label: np.ndarray          # int64 [n] mask label = cell id
    x: np.ndarray
    y: np.ndarray
    area: np.ndarray
    group: np.ndarray          # object [n]
    expr_row: np.ndarray       # int64 [n], row in anucleus or -1
    height: int
    width: int
    channels: int
    image_dtype: str
    genes: list
    counts: dict = field(default_factory=dict)


def read_crunch_sample(path, *, tile: int = DEFAULT_TILE, progress=None,
                       image_element: str = IMAGE_ELEMENT, mask_element: str = MASK_ELEMENT,
                       expression_table: str = EXPRESSION_TABLE, group_table: str = GROUP_TABLE,
                       group_column: str = "group", id_column: str = "cell_id"):
    """Read one Crunch 1 zarr: nucleus centroids (tile by tile) joined with the two tables.

    Returns ``(SampleCells, anndata.AnnData)``; the AnnData is the expression table (in memory,
    as spatialdata loads tables).
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or directory.", file=path,
                         fix="give the path of a Crunch 1 SpatialData zarr (e.g. UC1_NI.zarr)")
    sd = _import_spatialdata()
    try:
        with _quiet():
            sdata = sd.read_zarr(path)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad input to the user
        raise InputError(f"not a readable SpatialData zarr ({type(e).__name__}: {e}).",
                         file=path, fix="give a SpatialData .zarr folder as distributed for "
                                        "Crunch 1") from None

    wanted = [("images", image_element), ("labels", mask_element), ("tables", expression_table),
              ("tables", group_table)]
    missing = [f"{kind[:-1]} '{name}'" for kind, name in wanted if name not in getattr(sdata, kind)]
    if missing:
        raise InputError(f"missing {', '.join(missing)}. The zarr holds {_holdings(sdata)}.",
                         file=path, fix="ingest a Crunch 1 sample zarr, or name the elements with "
                                        "--image-element / --mask-element / --expression-table / "
                                        "--group-table")
    img = _scale0(sdata.images[image_element])
    lab = _scale0(sdata.labels[mask_element])
    if tuple(img.dims) != ("c", "y", "x"):
        raise InputError(f"image '{image_element}' has dims {tuple(img.dims)}, expected (c, y, x).",
                         file=path)
    if tuple(lab.dims) != ("y", "x"):
        raise InputError(f"label image '{mask_element}' has dims {tuple(lab.dims)}, expected "
                         "(y, x).", file=path)
    C, H, W = (int(s) for s in img.shape)
    if tuple(lab.shape) != (H, W):
        raise InputError(f"label image '{mask_element}' is {lab.shape[0]} x {lab.shape[1]} px but "
                         f"image '{image_element}' is {H} x {W} px; centroids would not match the "
                         "image.",
                         file=path, fix="use the full-resolution nucleus mask of this H&E image")
    if np.dtype(img.dtype).kind not in "uif":
        raise InputError(f"image '{image_element}' has dtype {img.dtype}; expected numbers "
                         "(uint8 H&E).", file=path)
    if C not in (1, 3, 4):
        raise InputError(f"image '{image_element}' has {C} channels; expected RGB (3), RGBA (4) or "
                         "grey (1).", file=path)

    gtab = sdata.tables[group_table]
    etab = sdata.tables[expression_table]
    for tname, t, cols in ((group_table, gtab, (id_column, group_column)),
                           (expression_table, etab, (id_column,))):
        for col in cols:
            if col not in t.obs.columns:
                raise InputError(f"table '{tname}' has no obs column '{col}' (it has: "
                                 f"{', '.join(map(str, t.obs.columns)) or 'none'}).", file=path,
                                 column=col)
    g_ids = _ids(gtab.obs[id_column].to_numpy(), file=path, table=group_table, column=id_column)
    g_grp = np.asarray(gtab.obs[group_column].astype(str).to_numpy(), dtype=object)
    e_ids = _ids(etab.obs[id_column].to_numpy(), file=path, table=expression_table,
                 column=id_column)
    genes = [str(g) for g in etab.var_names]
    if len(set(genes)) != len(genes):
        raise InputError(f"table '{expression_table}' has duplicate gene names.", file=path)

    cen = label_centroids(lab.data, tile, progress=progress, description=path.stem)

    in_mask_g = np.isin(g_ids, cen.label)
    in_mask_e = np.isin(e_ids, cen.label)
    in_g_e = np.isin(e_ids, g_ids)
    keep = np.isin(cen.label, g_ids) | np.isin(cen.label, e_ids)
    lbl = cen.label[keep]
    # group per kept label: group table first, else expression-only cells are training data
    group = np.full(len(lbl), "train", dtype=object)
    g_row = _lookup(g_ids, lbl)
    group[g_row >= 0] = g_grp[g_row[g_row >= 0]]
    expr_row = _lookup(e_ids, lbl)
    counts = {
        "n_mask_nuclei": int(len(cen)),
        "n_cells": int(len(lbl)),
        "n_with_expression": int((expr_row >= 0).sum()),
        "n_dropped_mask_only": int((~keep).sum()),
        "n_dropped_group_not_in_mask": int((~in_mask_g).sum()),
        "n_dropped_expression_not_in_mask": int((~in_mask_e).sum()),
        "n_expression_without_group": int((in_mask_e & ~in_g_e).sum()),
        "n_tiles": int(cen.n_tiles),
        "tile": int(tile),
    }
    cells = SampleCells(sample=sample_name(path),
                        path=path, label=lbl, x=cen.x[keep], y=cen.y[keep], area=cen.area[keep],
                        group=group, expr_row=expr_row, height=H, width=W, channels=C,
                        image_dtype=str(img.dtype), genes=genes, counts=counts)
    return cells, etab


def _dense_rows(m, rows: np.ndarray) -> np.ndarray:
    part = m[rows]
    if hasattr(part, "toarray"):
        part = part.toarray()
    return np.asarray(part, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------

@dataclass
class CrunchIngestResult:
    """Summary of :func:`ingest_crunch`: the store and per-sample counts."""

    store: Path
    n_cells: int
    n_genes: int
    samples: dict  # sample -> counts


def _append(ds, block: np.ndarray) -> None:
    n0 = ds.shape[0]
    ds.resize(n0 + len(block), axis=0)
    ds[n0:] = block


def ingest_crunch(zarrs: Sequence, out, *, tile: int = DEFAULT_TILE, force: bool = False,
                  tissue: str = "unknown", pixel_size_um: float = float("nan"),
                  image_element: str = IMAGE_ELEMENT, mask_element: str = MASK_ELEMENT,
                  expression_table: str = EXPRESSION_TABLE, group_table: str = GROUP_TABLE,
                  command: Sequence[str] | None = None, show_progress: bool = True,
                  log=None) -> CrunchIngestResult:
    """Build a tabst store from Crunch 1 SpatialData zarr files (one per sample).

    Parameters
    ----------
    zarrs
        Paths of ``<sample>.zarr`` folders; the sample name is the stem.
    out
        Store to create (atomically: nothing appears on error).
    tile
        Tile edge (px) for the centroid pass; peak memory grows with it, not with the image.
    tissue
        Value of ``/cells/tissue`` for every cell (Crunch zarrs do not say).
    pixel_size_um
        Recorded in ``/images/<sample>`` (NaN = unknown).
    log
        Callable receiving one human-readable line per sample (counts of dropped cells); by
        default the line is printed above the progress bar (on stderr).

    Notes
    -----
    ``/cells/cell_id`` is the Crunch cell id with one sample, ``<sample>:<cell_id>`` with several
    (ids repeat across samples); ``/cells/source_cell_id`` always holds the id as in the tables
    and ``/cells/mask_label`` the nucleus' pixel value in the mask.
    """
    from ..store import build_provenance, create_store, put, row_chunks
    from ..util import progress as make_progress
    from .common import write_image_group

    zarrs = [Path(z) for z in zarrs]
    if not zarrs:
        raise TabstError("give at least one Crunch 1 sample zarr.")
    out = Path(out)
    names = [sample_name(z) for z in zarrs]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise TabstError(f"sample name(s) {', '.join(dups)} given twice (the sample name is the "
                         "zarr's stem); rename one of the zarr folders.")
    if out.exists() and not force:
        raise TabstError(f"{out} already exists. Pass --force to overwrite it, or choose another "
                         "--out.")
    multi = len(zarrs) > 1
    base = out.resolve().parent
    prov = build_provenance(zarrs, command=command, ingest="crunch", tile=tile)

    cols = {k: [] for k in ("cell_id", "source_cell_id", "mask_label", "sample", "x", "y",
                            "nucleus_area", "group", "has_expression")}
    summary: dict = {}
    genes0 = None
    pbar = make_progress(unit="tiles") if show_progress else contextlib.nullcontext()
    with create_store(out, force=force, provenance=prov) as f, pbar as p:
        eg = f.create_group("expression")
        X = counts_ds = None
        if log is not None:
            emit = log
        elif show_progress:
            def emit(line):
                p.console.print(line, highlight=False)
        else:
            def emit(line):
                pass
        for z in zarrs:
            cells, etab = read_crunch_sample(z, tile=tile, progress=p, image_element=image_element,
                                             mask_element=mask_element,
                                             expression_table=expression_table,
                                             group_table=group_table)
            if genes0 is None:
                genes0 = cells.genes
                G = len(genes0)
                X = eg.create_dataset("X", shape=(0, G), maxshape=(None, G), dtype=np.float32,
                                      chunks=row_chunks((1 << 10, G), np.float32))
                has_counts = "counts" in etab.layers
                if has_counts:
                    counts_ds = eg.create_dataset("counts", shape=(0, G), maxshape=(None, G),
                                                  dtype=np.float32,
                                                  chunks=row_chunks((1 << 10, G), np.float32))
                gene_order = None
            else:
                if set(cells.genes) != set(genes0):
                    extra = sorted(set(cells.genes) - set(genes0))[:5]
                    miss = sorted(set(genes0) - set(cells.genes))[:5]
                    raise InputError(f"table '{expression_table}' has other genes than "
                                     f"{zarrs[0]} (extra: {extra}, missing: {miss}).", file=z,
                                     fix="ingest samples measured with the same gene panel")
                pos = {g: i for i, g in enumerate(cells.genes)}
                gene_order = np.array([pos[g] for g in genes0])
            layers = [("X", X, etab.X)]
            if counts_ds is not None:
                if "counts" not in etab.layers:
                    raise InputError(f"table '{expression_table}' has no layers['counts'] "
                                     f"(the first sample has).", file=z)
                layers.append(("counts", counts_ds, etab.layers["counts"]))
            # expression rows in store order, in blocks
            n = len(cells.label)
            for start in range(0, n, 4096):
                er = cells.expr_row[start:start + 4096]
                ok = er >= 0
                for _, ds, m in layers:
                    block = np.full((len(er), len(genes0)), np.nan, dtype=np.float32)
                    if ok.any():
                        vals = _dense_rows(m, er[ok])
                        block[ok] = vals if gene_order is None else vals[:, gene_order]
                    _append(ds, block)
            del etab
            s = cells.sample
            ids = np.array([str(v) for v in cells.label.tolist()], dtype=object)
            cols["source_cell_id"].append(ids)
            cols["cell_id"].append(np.array([f"{s}:{v}" for v in ids], dtype=object)
                                   if multi else ids)
            cols["mask_label"].append(cells.label)
            cols["sample"].append(np.full(n, s, dtype=object))
            cols["x"].append(cells.x)
            cols["y"].append(cells.y)
            cols["nucleus_area"].append(cells.area)
            cols["group"].append(cells.group)
            cols["has_expression"].append(cells.expr_row >= 0)
            write_image_group(
                f, s, store_dir=base, kind="spatialdata", path=z, mask_path=z,
                height=cells.height, width=cells.width, channels=cells.channels,
                pixel_size_um=pixel_size_um,
                description=(f"H&E image '{image_element}' and nucleus mask '{mask_element}' of "
                             f"Crunch 1 sample {s}, read lazily from the SpatialData zarr at "
                             "`path` (relative to the store's folder)"),
                element=image_element, mask_element=mask_element, dtype=cells.image_dtype,
                **cells.counts)
            summary[s] = cells.counts
            emit(_count_line(s, cells.counts))
        N = sum(len(a) for a in cols["mask_label"])
        if N == 0:
            raise TabstError("no cell of the tables has a nucleus in the mask: nothing to ingest "
                             "(do the tables' cell ids match the label image's pixel values?).")
        cat = {k: np.concatenate(v) for k, v in cols.items()}
        c = f.create_group("cells")
        c.attrs["description"] = "one row per cell; every dataset here has the same length N"
        put(c, "cell_id", cat["cell_id"], description="unique cell identifier" + (
            " (<sample>:<Crunch cell_id>)" if multi else " (Crunch cell_id)"))
        put(c, "source_cell_id", cat["source_cell_id"],
            description="cell_id as in the Crunch tables (unique within its sample)")
        put(c, "mask_label", cat["mask_label"].astype(np.int64),
            description="pixel value of this cell's nucleus in the sample's nucleus mask")
        put(c, "sample", cat["sample"], description="sample (zarr stem) the cell belongs to")
        put(c, "tissue", np.full(N, tissue, dtype=object), description="tissue type")
        put(c, "x", cat["x"].astype(np.float64), unit="px",
            description="nucleus centroid x (column, regionprops convention) in the sample image")
        put(c, "y", cat["y"].astype(np.float64), unit="px",
            description="nucleus centroid y (row, regionprops convention) in the sample image")
        put(c, "nucleus_area", cat["nucleus_area"].astype(np.int64), unit="px^2",
            description="nucleus area: pixels of this label in the nucleus mask")
        put(c, "group", cat["group"],
            description="Crunch split from table 'cell_id-group' (train / validation / test)")
        put(c, "has_expression", cat["has_expression"].astype(bool),
            description="row has measured expression (False: NaN row in /expression/X, to predict)")
        X.attrs["description"] = (f"expression, cells x genes, from table '{expression_table}' X; "
                                  "NaN rows = cells without measured expression")
        X.attrs["unit"] = "log1p(count/total*100)"
        X.attrs["transform"] = EXPRESSION_TRANSFORM
        if counts_ds is not None:
            counts_ds.attrs["description"] = (f"raw counts, cells x genes, from table "
                                              f"'{expression_table}' layers['counts']; NaN rows = "
                                              "cells without measured expression")
            counts_ds.attrs["unit"] = "count"
        put(eg, "genes", np.asarray(genes0, dtype=object), description="gene names, columns of X")
        prov["samples"] = summary
        f.attrs["provenance"] = json.dumps(prov)
    return CrunchIngestResult(store=out, n_cells=int(N), n_genes=len(genes0), samples=summary)


def _count_line(sample: str, c: dict) -> str:
    line = (f"{sample}: {c['n_cells']:,} cells ({c['n_with_expression']:,} with expression) from "
            f"{c['n_mask_nuclei']:,} nuclei in {c['n_tiles']} tiles")
    drops = []
    if c["n_dropped_mask_only"]:
        drops.append(f"{c['n_dropped_mask_only']:,} mask nuclei in neither table")
    if c["n_dropped_group_not_in_mask"]:
        drops.append(f"{c['n_dropped_group_not_in_mask']:,} '{GROUP_TABLE}' cells with no nucleus "
                     "in the mask")
    if c["n_dropped_expression_not_in_mask"]:
        drops.append(f"{c['n_dropped_expression_not_in_mask']:,} '{EXPRESSION_TABLE}' cells "
                     "with no nucleus in the mask")
    if drops:
        line += "; dropped " + ", ".join(drops)
    if c["n_expression_without_group"]:
        line += (f"; {c['n_expression_without_group']:,} cells with expression but no group row "
                 "kept as 'train'")
    return line


# --------------------------------------------------------------------------------------------
# lazy pixel reader
# --------------------------------------------------------------------------------------------

def _multiscale_meta(attrs) -> dict | None:
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    return ms[0] if ms else None


def open_zarr_raster(zarr_path, kind: str, element: str):
    """The full-resolution zarr array of a SpatialData raster element and its axis names.

    Handles single arrays and OME-NGFF multiscale groups (``0`` or ``s0`` datasets; zarr v2 or v3).
    """
    import zarr

    zarr_path = Path(zarr_path)
    try:
        with _quiet():
            root = zarr.open_group(str(zarr_path), mode="r")
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot open the zarr ({type(e).__name__}: {e}).", file=zarr_path,
                         fix="the store references this SpatialData zarr by a path relative to "
                             "the store; keep them side by side or re-ingest") from None
    key = f"{kind}/{element}"
    if key not in root:
        have = list(root[kind].keys()) if kind in root else []
        raise InputError(f"no {kind[:-1]} '{element}' in the zarr (it has {kind}: "
                         f"{', '.join(map(repr, have)) or '(none)'}).", file=zarr_path)
    node = root[key]
    if isinstance(node, zarr.Array):
        axes = ("c", "y", "x") if node.ndim == 3 else ("y", "x")
        return node, axes
    meta = _multiscale_meta(dict(node.attrs))
    if meta:
        arr = node[meta["datasets"][0]["path"]]
        axes = tuple(a["name"] if isinstance(a, dict) else str(a) for a in meta.get("axes", ())) \
            or (("c", "y", "x") if arr.ndim == 3 else ("y", "x"))
        return arr, axes
    arrays = sorted(k for k, v in node.arrays())
    if not arrays:
        raise InputError(f"{kind[:-1]} '{element}' holds no array.", file=zarr_path)
    arr = node[arrays[0]]
    return arr, (("c", "y", "x") if arr.ndim == 3 else ("y", "x"))


class _ChunkCache:
    """Read rectangular (y, x) regions of a zarr array through an LRU cache of whole chunks.

    Patches of neighbouring cells share chunks: each chunk is decoded once while it stays in
    the cache (``max_bytes``), instead of once per patch.
    """

    def __init__(self, arr, y_axis: int, x_axis: int, max_bytes: int):
        self.arr, self.ya, self.xa = arr, y_axis, x_axis
        self.shape = tuple(int(s) for s in arr.shape)
        ch = arr.chunks
        self.cy, self.cx = int(ch[y_axis]), int(ch[x_axis])
        self.max_bytes = max_bytes
        self._cache: OrderedDict = OrderedDict()
        self._bytes = 0

    def _chunk(self, iy: int, ix: int) -> np.ndarray:
        key = (iy, ix)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        sl = [slice(None)] * len(self.shape)
        sl[self.ya] = slice(iy * self.cy, min(self.shape[self.ya], (iy + 1) * self.cy))
        sl[self.xa] = slice(ix * self.cx, min(self.shape[self.xa], (ix + 1) * self.cx))
        data = np.asarray(self.arr[tuple(sl)])
        self._cache[key] = data
        self._bytes += data.nbytes
        while self._bytes > self.max_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.nbytes
        return data

    def read(self, y0: int, x0: int, h: int, w: int, out: np.ndarray, put) -> None:
        """Fill ``out`` ([h, w, ...], zero outside) via ``put(out_slice, chunk_view)``."""
        H, W = self.shape[self.ya], self.shape[self.xa]
        ya, yb = max(0, y0), min(H, y0 + h)
        xa, xb = max(0, x0), min(W, x0 + w)
        if ya >= yb or xa >= xb:
            return
        for iy in range(ya // self.cy, (yb - 1) // self.cy + 1):
            for ix in range(xa // self.cx, (xb - 1) // self.cx + 1):
                c = self._chunk(iy, ix)
                cy0, cx0 = iy * self.cy, ix * self.cx
                sy0, sy1 = max(ya, cy0), min(yb, cy0 + self.cy)
                sx0, sx1 = max(xa, cx0), min(xb, cx0 + self.cx)
                sl = [slice(None)] * c.ndim
                sl[self.ya] = slice(sy0 - cy0, sy1 - cy0)
                sl[self.xa] = slice(sx0 - cx0, sx1 - cx0)
                put((slice(sy0 - y0, sy1 - y0), slice(sx0 - x0, sx1 - x0)), c[tuple(sl)])


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
        arr, axes = open_zarr_raster(self.path, "images", element)
        if set(axes) != {"c", "y", "x"}:
            raise InputError(f"image '{element}' has axes {axes}, expected (c, y, x).",
                             file=self.path)
        self._c_axis = axes.index("c")
        self._img = _ChunkCache(arr, axes.index("y"), axes.index("x"), int(cache_mb * 2**20))
        self.height = self._img.shape[axes.index("y")]
        self.width = self._img.shape[axes.index("x")]
        self.channels = int(arr.shape[self._c_axis])
        self.dtype = np.dtype(arr.dtype)
        self._mask = None
        if mask_element:
            marr, maxes = open_zarr_raster(mask_path, "labels", mask_element)
            if set(maxes) != {"y", "x"}:
                raise InputError(f"label image '{mask_element}' has axes {maxes}, expected (y, x).",
                                 file=mask_path)
            self._mask = _ChunkCache(marr, maxes.index("y"), maxes.index("x"),
                                     int(cache_mb * 2**20))
            my, mx = self._mask.shape[maxes.index("y")], self._mask.shape[maxes.index("x")]
            if (my, mx) != (self.height, self.width):
                raise InputError(f"label image '{mask_element}' is {my}x{mx} px but image "
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
        transpose = self._mask.ya > self._mask.xa

        def put(sl, view):
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
