"""Ingest Broad / CrunchDAO "Crunch 1" SpatialData zarr files into a tabst store.

One zarr per sample (sample name = the zarr's stem, e.g. ``UC1_NI.zarr`` -> ``UC1_NI``), in the
challenge's layout (:mod:`tabst.ingest.crunch_read`): every raster is an Image element --
``HE_original`` (3, y, x) uint8 and the nucleus mask ``HE_nuc_original`` (1, y, x) integers
(pixel value = ``cell_id``, 0 = background) -- plus the tables ``anucleus`` (X =
log1p(count/total*100) of 460 genes, ``layers['counts']``, ``obsm['spatial']``) and
``cell_id-group`` (``obs``: ``cell_id``, ``region``, ``group`` in train / validation / test).
A mask written as a Labels element (y, x) is found as well.

Cell centroids come from the mask, computed tile by tile (:func:`label_centroids`): exactly the
whole-image :func:`skimage.measure.regionprops` centroids, with memory that grows with the tile
size, never with the image size. ``anucleus.obsm['spatial']`` is compared with them and the
largest disagreement is reported (and recorded in ``/images/<sample>``).

Which cells enter the store
---------------------------
- every cell of the group table whose nucleus is in the mask, with its group and region; cells
  without an ``anucleus`` row (validation / test) get ``/cells/has_expression`` False and NaN
  expression;
- cells of ``anucleus`` absent from the group table but present in the mask (they have measured
  expression, i.e. training data) with group ``train``;
- dropped, counted, printed and recorded in the ``/images/<sample>`` attrs: table cells (group
  or expression) whose id has no nucleus in the mask (they cannot be located), and mask nuclei
  that appear in neither table.

``/cells/region`` holds ``cell_id-group.obs['region']`` (or, when the table has no such column,
the value of the region image ``group_HEspace`` at the nucleus centroid): the challenge scorer
averages per region, and so does ``tabst compare`` when the store has regions.

The pixels stay in the zarr: ``/images/<sample>`` (kind ``spatialdata``) references it and
:class:`ZarrSampleImage` reads image and nucleus-mask regions lazily from it.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, TabstError
from .centroids import DEFAULT_TILE, Centroids, label_centroids  # noqa: F401 - public API
from .checks import check_expression_block
from .crunch_read import (  # noqa: F401 - public API
    EXPRESSION_TABLE,
    GROUP_TABLE,
    SPATIAL_WARN_PX,
    read_crunch_sample,
)
from .zarr_raster import (  # noqa: F401 - public API (images.py registers the reader here)
    IMAGE_ELEMENT,
    MASK_ELEMENT,
    ZarrSampleImage,
    open_zarr_raster,
    sample_name,
)

EXPRESSION_TRANSFORM = "log1p(count/total*100) (Crunch 1 anucleus X)"


def _dense_rows(m, rows: np.ndarray) -> np.ndarray:
    part = m[rows]
    if hasattr(part, "toarray"):
        part = part.toarray()
    return np.asarray(part, dtype=np.float32)


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


class _Expression:
    """``/expression/X`` (and ``counts``) appended sample by sample, rows in store order and
    columns in the first sample's gene order."""

    def __init__(self, eg, table: str):
        self.eg, self.table = eg, table
        self.genes = None
        self.X = self.counts = None

    def _create(self, cells, etab) -> None:
        from ..store import row_chunks

        self.genes = list(cells.genes)
        G = len(self.genes)
        kw = dict(shape=(0, G), maxshape=(None, G), dtype=np.float32,
                  chunks=row_chunks((1 << 10, G), np.float32))
        self.X = self.eg.create_dataset("X", **kw)
        if "counts" in etab.layers:
            self.counts = self.eg.create_dataset("counts", **kw)

    def _gene_order(self, cells, file):
        if cells.genes == self.genes:
            return None
        if set(cells.genes) != set(self.genes):
            extra = sorted(set(cells.genes) - set(self.genes))[:5]
            miss = sorted(set(self.genes) - set(cells.genes))[:5]
            raise InputError(f"table '{self.table}' has other genes than the first sample "
                             f"(extra: {extra}, missing: {miss}).", file=file,
                             fix="ingest samples measured with the same gene panel")
        pos = {g: i for i, g in enumerate(cells.genes)}
        return np.array([pos[g] for g in self.genes])

    def add(self, cells, etab, file, block_rows: int = 4096) -> None:
        if self.genes is None:
            self._create(cells, etab)
        order = self._gene_order(cells, file)
        layers = [("X", self.X, etab.X)]
        if self.counts is not None:
            if "counts" not in etab.layers:
                raise InputError(f"table '{self.table}' has no layers['counts'] (the first sample "
                                 "has).", file=file)
            layers.append(("layers['counts']", self.counts, etab.layers["counts"]))
        ids = np.asarray(etab.obs["cell_id"].to_numpy()) if "cell_id" in etab.obs else None
        for start in range(0, len(cells.label), block_rows):
            er = cells.expr_row[start:start + block_rows]
            ok = er >= 0
            for name, ds, m in layers:
                block = np.full((len(er), len(self.genes)), np.nan, dtype=np.float32)
                if ok.any():
                    vals = _dense_rows(m, er[ok])
                    check_expression_block(
                        vals, file=file, row_offset=None, genes=cells.genes, rows=er[ok] + 1,
                        row_ids=ids[er[ok]] if ids is not None else None, id_label="cell_id",
                        what=f"table '{self.table}' {name} value",
                        negative_fix="Crunch expression (X and counts) must be >= 0; fix or drop "
                                     "these cells upstream")
                    block[ok] = vals if order is None else vals[:, order]
                _append(ds, block)

    def finish(self) -> None:
        from ..store import put

        self.X.attrs["description"] = (f"expression, cells x genes, from table '{self.table}' X; "
                                       "NaN rows = cells without measured expression")
        self.X.attrs["unit"] = "log1p(count/total*100)"
        self.X.attrs["transform"] = EXPRESSION_TRANSFORM
        if self.counts is not None:
            self.counts.attrs["description"] = (
                f"raw counts, cells x genes, from table '{self.table}' layers['counts'] (kept so "
                "that the expression can be renormalised); NaN rows = cells without measured "
                "expression")
            self.counts.attrs["unit"] = "count"
        put(self.eg, "genes", np.asarray(self.genes, dtype=object),
            description="gene names, columns of X")


def _sample_columns(cells, multi: bool) -> dict:
    s, n = cells.sample, len(cells.label)
    ids = np.array([str(v) for v in cells.label.tolist()], dtype=object)
    return {"cell_id": np.array([f"{s}:{v}" for v in ids], dtype=object) if multi else ids,
            "source_cell_id": ids, "mask_label": cells.label,
            "sample": np.full(n, s, dtype=object), "x": cells.x, "y": cells.y,
            "nucleus_area": cells.area, "group": cells.group,
            # a sample without region information is one region (the scorer's default)
            "region": cells.region if cells.region is not None else np.full(n, s, dtype=object),
            "has_expression": cells.expr_row >= 0}


def _write_cells(f, cols: dict, *, multi: bool, tissue: str, regions: bool) -> int:
    from ..store import put

    cat = {k: np.concatenate(v) for k, v in cols.items()}
    N = len(cat["mask_label"])
    c = f.create_group("cells")
    c.attrs["description"] = "one row per cell; every dataset here has the same length N"
    put(c, "cell_id", cat["cell_id"], description="unique cell identifier" + (
        " (<sample>:<Crunch cell_id>)" if multi else " (Crunch cell_id)"))
    put(c, "source_cell_id", cat["source_cell_id"],
        description="cell_id as in the Crunch tables (unique within its sample; the id a "
                    "submission uses)")
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
    if regions:
        put(c, "region", cat["region"],
            description="region of the cell within its sample (table 'cell_id-group' "
                        "obs['region'], or the region image at the centroid; the sample name "
                        "where the zarr has none): the Crunch scorer averages per region")
    put(c, "has_expression", cat["has_expression"].astype(bool),
        description="row has measured expression (False: NaN row in /expression/X, to predict)")
    return N


def _emitter(log, show_progress: bool, p):
    if log is not None:
        return log
    if show_progress:
        return lambda line: p.console.print(line, highlight=False)
    return lambda line: None


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
        Paths of ``<sample>.zarr`` folders; the sample name is the stem. Training samples and
        the held-out sample (validation / test cells without expression) go side by side.
    out
        Store to create (atomically: nothing appears on error).
    tile
        Tile edge (px) for the centroid pass; peak memory grows with it, not with the image.
    tissue
        Value of ``/cells/tissue`` for every cell (Crunch zarrs do not say).
    pixel_size_um
        Recorded in ``/images/<sample>`` (NaN = unknown).
    image_element, mask_element
        H&E image (an Image element) and nucleus mask (an Image (1, y, x) or (y, x), or a
        Labels element: found wherever it is).
    log
        Callable receiving one human-readable line per sample (counts of dropped cells, the
        ``obsm['spatial']`` check); by default printed above the progress bar (on stderr).

    Notes
    -----
    ``/cells/cell_id`` is the Crunch cell id with one sample, ``<sample>:<cell_id>`` with several
    (ids repeat across samples); ``/cells/source_cell_id`` always holds the id as in the tables
    and ``/cells/mask_label`` the nucleus' pixel value in the mask.
    """
    from ..store import build_provenance, create_store
    from ..util import progress as make_progress

    zarrs = [Path(z) for z in zarrs]
    if not zarrs:
        raise TabstError("give at least one Crunch 1 sample zarr.")
    out = Path(out)
    names = [sample_name(z) for z in zarrs]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise TabstError(f"sample name(s) {', '.join(dups)} given twice (the sample name is the "
                         "zarr's stem); rename one of the zarr folders.")
    from ..outputs import prepare_output  # exists? a file? writable? stale temp files?

    prepare_output(out, "file", force=force)
    multi = len(zarrs) > 1
    prov = build_provenance(zarrs, command=command, ingest="crunch", tile=tile)
    cols: dict = {}
    summary: dict = {}
    any_region = False
    pbar = make_progress(unit="tiles") if show_progress else contextlib.nullcontext()
    with create_store(out, force=force, provenance=prov) as f, pbar as p:
        expr = _Expression(f.create_group("expression"), expression_table)
        emit = _emitter(log, show_progress, p)
        for z in zarrs:
            cells, etab = read_crunch_sample(z, tile=tile, progress=p, image_element=image_element,
                                             mask_element=mask_element,
                                             expression_table=expression_table,
                                             group_table=group_table)
            expr.add(cells, etab, z)
            del etab
            for k, v in _sample_columns(cells, multi).items():
                cols.setdefault(k, []).append(v)
            any_region |= cells.region is not None
            _write_image(f, cells, z, out, pixel_size_um, image_element, mask_element)
            summary[cells.sample] = cells.counts
            emit(_count_line(cells.sample, cells.counts, cells.region_source))
        if not sum(len(a) for a in cols["mask_label"]):
            raise TabstError("no cell of the tables has a nucleus in the mask: nothing to ingest "
                             "(do the tables' cell ids match the label image's pixel values?).")
        N = _write_cells(f, cols, multi=multi, tissue=tissue, regions=any_region)
        expr.finish()
        prov["samples"] = summary
        f.attrs["provenance"] = json.dumps(prov)
    return CrunchIngestResult(store=out, n_cells=int(N), n_genes=len(expr.genes), samples=summary)


def _write_image(f, cells, z: Path, out: Path, pixel_size_um: float, image_element: str,
                 mask_element: str) -> None:
    from .common import write_image_group

    s = cells.sample
    write_image_group(
        f, s, store_dir=out.resolve().parent, kind="spatialdata", path=z, mask_path=z,
        height=cells.height, width=cells.width, channels=cells.channels,
        pixel_size_um=pixel_size_um,
        description=(f"H&E image '{image_element}' and nucleus mask '{mask_element}' "
                     f"({cells.mask_kind[:-1]} element) of Crunch 1 sample {s}, read lazily from "
                     "the SpatialData zarr at `path` (relative to the store's folder)"),
        element=image_element, mask_element=mask_element, mask_kind=cells.mask_kind,
        region_source=cells.region_source, dtype=cells.image_dtype, **cells.counts)


def _count_line(sample: str, c: dict, region_source: str = "") -> str:
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
    line += (f"; {c['n_regions']} region(s) from {region_source}" if region_source
             else "; no region information (the sample is one region)")
    if "spatial_max_px" in c:
        line += (f"; obsm['spatial'] vs mask centroids: max {c['spatial_max_px']:.2f} px, median "
                 f"{c['spatial_median_px']:.2f} px")
        if c["spatial_max_px"] > SPATIAL_WARN_PX:
            line += (f" -- WARNING: more than {SPATIAL_WARN_PX:g} px apart"
                     + (" (obsm['spatial'] looks like (y, x))"
                        if c["spatial_swapped_median_px"] < c["spatial_median_px"] else "")
                     + "; tabst uses the mask centroids")
    return line
