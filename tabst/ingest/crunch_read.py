"""Read one Crunch 1 SpatialData zarr: nucleus centroids joined with the two tables.

The challenge's layout (``UC1_NI.zarr`` etc.), which is what :func:`read_crunch_sample` expects:

- Images: ``HE_original`` (3, y, x) uint8 H&E; the nucleus mask ``HE_nuc_original`` as a
  **(1, y, x) integer image** (pixel value = ``cell_id``, 0 = background); the registered twins
  ``HE_registered`` / ``HE_nuc_registered``; ``DAPI`` / ``DAPI_nuc``; region masks ``group``
  (Xenium space) and ``group_HEspace`` (H&E space);
- Points ``transcripts``;
- Tables ``anucleus`` (X = log1p(count/total*100), ``layers['counts']``, ``obsm['spatial']``,
  ``obs['cell_id']``, genes in ``var``) and ``cell_id-group`` (``obs``: ``cell_id``, ``region``,
  ``group`` in train / validation / test).

The mask may also be a Labels element ``(y, x)`` (how other tools write it): it is looked up
among Images first, then Labels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, TabstError
from .centroids import DEFAULT_TILE, label_centroids, values_at
from .zarr_raster import IMAGE_ELEMENT, MASK_ELEMENT, _quiet, mask_plane, sample_name

EXPRESSION_TABLE = "anucleus"
GROUP_TABLE = "cell_id-group"
REGION_COLUMN = "region"
REGION_ELEMENT = "group_HEspace"
#: obsm['spatial'] further than this (px) from the mask centroid -> a warning line
SPATIAL_WARN_PX = 2.0


def import_spatialdata():
    """``spatialdata``, imported quietly, or a TabstError saying how to install it."""
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


def scale0(elem):
    """The full-resolution DataArray of a (possibly multiscale) raster element."""
    if hasattr(elem, "dims") and hasattr(elem, "data") and not hasattr(elem, "children"):
        return elem
    return import_spatialdata().get_pyramid_levels(elem, n=0)


def find_raster(sdata, name: str, kinds=("images", "labels")):
    """``(full-resolution DataArray, kind)`` of raster element ``name`` among ``kinds`` (searched
    in order), or ``(None, None)``."""
    for kind in kinds:
        if name in getattr(sdata, kind):
            return scale0(getattr(sdata, kind)[name]), kind
    return None, None


def mask_2d(lab, name: str, file):
    """The (y, x) plane of a nucleus mask given as (y, x) Labels or a (1, y, x) Image."""
    dims = tuple(lab.dims)
    c = mask_plane(dims, lab.shape, name, file)
    data = lab.data
    if c is not None:
        data = data[(slice(None),) * c + (0,)]
        dims = tuple(d for d in dims if d != "c")
    if dims == ("x", "y"):
        data = data.T
    if np.dtype(lab.dtype).kind not in "uif":
        raise InputError(f"nucleus mask '{name}' has dtype {lab.dtype}; expected integers "
                         "(pixel value = cell id).", file=file)
    return data


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


def lookup(ids: np.ndarray, query: np.ndarray) -> np.ndarray:
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
    region: np.ndarray | None  # object [n] or None (no region information)
    expr_row: np.ndarray       # int64 [n], row in anucleus or -1
    height: int
    width: int
    channels: int
    image_dtype: str
    genes: list
    mask_kind: str = "images"
    region_source: str = ""
    counts: dict = field(default_factory=dict)


def _open(path: Path):
    if not path.exists():
        raise InputError("no such file or directory.", file=path,
                         fix="give the path of a Crunch 1 SpatialData zarr (e.g. UC1_NI.zarr)")
    sd = import_spatialdata()
    try:
        with _quiet():
            return sd.read_zarr(path)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad input to the user
        raise InputError(f"not a readable SpatialData zarr ({type(e).__name__}: {e}).",
                         file=path, fix="give a SpatialData .zarr folder as distributed for "
                                        "Crunch 1") from None


def _rasters(sdata, image_element: str, mask_element: str):
    img, _ = find_raster(sdata, image_element, ("images",))
    lab, mask_kind = find_raster(sdata, mask_element)
    missing = ([f"image '{image_element}'"] if img is None else []) + \
              ([f"nucleus mask '{mask_element}' (looked among images and labels)"]
               if lab is None else [])
    return img, lab, mask_kind, missing


def _check_image(img, name: str, path: Path):
    if tuple(img.dims) != ("c", "y", "x"):
        raise InputError(f"image '{name}' has dims {tuple(img.dims)}, expected (c, y, x).",
                         file=path)
    if np.dtype(img.dtype).kind not in "uif":
        raise InputError(f"image '{name}' has dtype {img.dtype}; expected numbers (uint8 H&E).",
                         file=path)
    if int(img.shape[0]) not in (1, 3, 4):
        raise InputError(f"image '{name}' has {img.shape[0]} channels; expected RGB (3), RGBA (4) "
                         "or grey (1).", file=path)


def _check_columns(tables, path: Path) -> None:
    for tname, t, cols in tables:
        for col in cols:
            if col not in t.obs.columns:
                raise InputError(f"table '{tname}' has no obs column '{col}' (it has: "
                                 f"{', '.join(map(str, t.obs.columns)) or 'none'}).", file=path,
                                 column=col)


def _is_annotation_key(sdata, table, column: str) -> bool:
    """True when ``obs[column]`` is SpatialData's annotation column (the element a table
    annotates, one value for every row) rather than tissue regions."""
    attrs = (getattr(table, "uns", {}) or {}).get("spatialdata_attrs", {}) or {}
    vals = table.obs[column].astype(str).unique()
    if len(vals) != 1:
        return False
    names = {str(n) for kind in ("images", "labels", "shapes", "points")
             for n in getattr(sdata, kind, {}).keys()}
    return attrs.get("region_key") == column or vals[0] in names


def _regions(sdata, gtab, g_ids, lbl, cen_y, cen_x, *, H: int, W: int, tile: int,
             region_column: str, region_element: str):
    """Region of each kept cell: ``cell_id-group.obs[region_column]`` when the table has it,
    else the value of the region image ``region_element`` (in the H&E pixel grid) at the
    nucleus centroid. Returns ``(regions or None, source)``."""
    if region_column in gtab.obs.columns and not _is_annotation_key(sdata, gtab, region_column):
        vals = np.asarray(gtab.obs[region_column].astype(str).to_numpy(), dtype=object)
        row = lookup(g_ids, lbl)
        reg = np.full(len(lbl), "unknown", dtype=object)
        reg[row >= 0] = vals[row[row >= 0]]
        return reg, f"table '{GROUP_TABLE}' obs['{region_column}']"
    ras, _ = find_raster(sdata, region_element)
    if ras is None:
        return None, ""
    dims = [d for d in ras.dims if d != "c"]
    shape = tuple(int(ras.shape[list(ras.dims).index(d)]) for d in ("y", "x"))
    if sorted(dims) != ["x", "y"] or shape != (H, W):
        return None, ""  # not in the H&E pixel grid: cannot be read at the centroids
    try:
        plane = mask_2d(ras, region_element, None)
    except InputError:  # not a one-channel integer image: no regions from it
        return None, ""
    v = values_at(plane, cen_y, cen_x, tile)
    return np.asarray([str(int(a)) if np.dtype(v.dtype).kind in "iu" else str(a) for a in v],
                      dtype=object), f"region image '{region_element}' at the nucleus centroid"


def spatial_agreement(etab, expr_row: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict:
    """How far ``anucleus.obsm['spatial']`` (read as x, y) lies from the mask centroids of the
    cells with expression: ``{max_px, median_px, n, swapped_median_px}`` (empty when absent)."""
    sp = etab.obsm.get("spatial") if hasattr(etab, "obsm") else None
    ok = expr_row >= 0
    if sp is None or not ok.any():
        return {}
    sp = np.asarray(sp, dtype=np.float64)
    if sp.ndim != 2 or sp.shape[1] < 2:
        return {}
    p = sp[expr_row[ok], :2]
    d = np.hypot(p[:, 0] - x[ok], p[:, 1] - y[ok])
    ds = np.hypot(p[:, 1] - x[ok], p[:, 0] - y[ok])
    return {"max_px": float(np.nanmax(d)), "median_px": float(np.nanmedian(d)), "n": int(ok.sum()),
            "swapped_median_px": float(np.nanmedian(ds))}


def read_crunch_sample(path, *, tile: int = DEFAULT_TILE, progress=None,
                       image_element: str = IMAGE_ELEMENT, mask_element: str = MASK_ELEMENT,
                       expression_table: str = EXPRESSION_TABLE, group_table: str = GROUP_TABLE,
                       group_column: str = "group", id_column: str = "cell_id",
                       region_column: str = REGION_COLUMN, region_element: str = REGION_ELEMENT):
    """Read one Crunch 1 zarr: nucleus centroids (tile by tile) joined with the two tables.

    Returns ``(SampleCells, anndata.AnnData)``; the AnnData is the expression table (in memory,
    as spatialdata loads tables).
    """
    path = Path(path)
    sdata = _open(path)
    img, lab, mask_kind, missing = _rasters(sdata, image_element, mask_element)
    missing += [f"table '{n}'" for n in (expression_table, group_table) if n not in sdata.tables]
    if missing:
        raise InputError(f"missing {', '.join(missing)}. The zarr holds {_holdings(sdata)}.",
                         file=path, fix="ingest a Crunch 1 sample zarr, or name the elements with "
                                        "--image-element / --mask-element / --expression-table / "
                                        "--group-table")
    _check_image(img, image_element, path)
    C, H, W = (int(s) for s in img.shape)
    plane = mask_2d(lab, mask_element, path)
    if tuple(int(s) for s in plane.shape) != (H, W):
        raise InputError(f"nucleus mask '{mask_element}' is {plane.shape[0]} x {plane.shape[1]} px "
                         f"but image '{image_element}' is {H} x {W} px; centroids would not match "
                         "the image.", file=path,
                         fix="use the full-resolution nucleus mask of this H&E image")
    gtab, etab = sdata.tables[group_table], sdata.tables[expression_table]
    _check_columns(((group_table, gtab, (id_column, group_column)),
                    (expression_table, etab, (id_column,))), path)
    g_ids = _ids(gtab.obs[id_column].to_numpy(), file=path, table=group_table, column=id_column)
    g_grp = np.asarray(gtab.obs[group_column].astype(str).to_numpy(), dtype=object)
    e_ids = _ids(etab.obs[id_column].to_numpy(), file=path, table=expression_table,
                 column=id_column)
    genes = [str(g) for g in etab.var_names]
    if len(set(genes)) != len(genes):
        raise InputError(f"table '{expression_table}' has duplicate gene names.", file=path)

    cen = label_centroids(plane, tile, progress=progress, description=path.stem)
    keep = np.isin(cen.label, g_ids) | np.isin(cen.label, e_ids)
    lbl = cen.label[keep]
    # group per kept label: group table first, else expression-only cells are training data
    group = np.full(len(lbl), "train", dtype=object)
    g_row = lookup(g_ids, lbl)
    group[g_row >= 0] = g_grp[g_row[g_row >= 0]]
    expr_row = lookup(e_ids, lbl)
    region, region_source = _regions(sdata, gtab, g_ids, lbl, cen.y[keep], cen.x[keep], H=H, W=W,
                                     tile=tile, region_column=region_column,
                                     region_element=region_element)
    in_mask_e = np.isin(e_ids, cen.label)
    counts = {
        "n_mask_nuclei": int(len(cen)),
        "n_cells": int(len(lbl)),
        "n_with_expression": int((expr_row >= 0).sum()),
        "n_dropped_mask_only": int((~keep).sum()),
        "n_dropped_group_not_in_mask": int((~np.isin(g_ids, cen.label)).sum()),
        "n_dropped_expression_not_in_mask": int((~in_mask_e).sum()),
        "n_expression_without_group": int((in_mask_e & ~np.isin(e_ids, g_ids)).sum()),
        "n_regions": int(len(set(region.tolist()))) if region is not None else 0,
        "n_tiles": int(cen.n_tiles),
        "tile": int(tile),
    }
    agree = spatial_agreement(etab, expr_row, cen.x[keep], cen.y[keep])
    counts.update({f"spatial_{k}": v for k, v in agree.items()})
    cells = SampleCells(sample=sample_name(path), path=path, label=lbl, x=cen.x[keep],
                        y=cen.y[keep], area=cen.area[keep], group=group, region=region,
                        expr_row=expr_row, height=H, width=W, channels=C,
                        image_dtype=str(img.dtype), genes=genes, mask_kind=mask_kind,
                        region_source=region_source, counts=counts)
    return cells, etab
