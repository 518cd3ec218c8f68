"""Ingest a label table + expression + images into a tabst store (``tabst ingest table``).

Inputs, in the shapes labs have them:

- **label table** (CSV, TSV or Parquet): one row per cell. Required columns: cell id, sample,
  x, y (nucleus centroid in pixels of the sample image). Optional: tissue, image file name
  (one per sample, or one patch per cell), group/split. Column names are mapped with
  ``columns={"cell_id": "fnm", ...}`` (CLI ``--col cell_id=fnm``, or ``columns:`` in a YAML
  config); common spellings (``cell``, ``x_centroid``, ``split``...) are recognised.
- **expression**: gene columns inside the label table (``genes=[...]`` or ``gene_prefix=``), or
  one or more separate cells x genes files keyed by cell id: CSV/TSV/Parquet (an id column +
  one column per gene), AnnData ``.h5ad`` (obs index = cell id; dense or sparse X or a layer),
  or an HDF5 matrix (root datasets ``X`` [cells, genes], ``cell_id`` [cells], ``genes``
  [genes]). Rows are matched by cell id, never by position; several files (e.g. one per
  sample) must share one gene list.
- **images**: per sample ``<images>/<sample>.<png|tif|...>`` or the file named in the image
  column; or one patch image per cell. **masks** (optional): a nucleus label image per sample,
  ``<masks>/<sample>.<ext>`` or ``<sample>_mask.<ext>``, same size as the image.

Expression is streamed in chunks into a preallocated ``/expression/X`` in label-table order, so
a 200k x 460 file converts in bounded memory. Every problem raises
:class:`~tabst.errors.InputError` naming the file, row and column, and no store is left behind.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..store import build_provenance, create_store
from .checks import check_config_types, check_coordinates, check_sample_name
from .common import (
    DEFAULT_CHUNK_ROWS,
    PARQUET_SUFFIXES,
    TEXT_TABLE_SUFFIXES,
    IdIndex,
    TableExpression,
    _preview,
    open_expression,
    parse_gene_list,
    read_table,
    release_arrow_memory,
    select_genes,
    table_columns,
    write_cells,
    write_expression_streaming,
    write_image_group,
)
from .table_images import MASK_STEMS, _first, _plan_images  # noqa: F401 - MASK_STEMS re-exported

REQUIRED = ("cell_id", "sample", "x", "y")
OPTIONAL = ("tissue", "image", "group")
FIELD_TYPES = {"cell_id": "str", "sample": "str", "x": "float", "y": "float", "tissue": "str",
               "image": "str", "group": "str"}
#: spellings recognised without a mapping (checked in this order, case-insensitively)
ALIASES = {
    "cell_id": ("cell_id", "cellid", "cell", "id", "cell_name", "barcode", "fnm"),
    "sample": ("sample", "sample_id", "slide", "section", "slide_id"),
    "x": ("x", "x_centroid", "centroid_x", "x_px", "cx"),
    "y": ("y", "y_centroid", "centroid_y", "y_px", "cy"),
    "tissue": ("tissue", "tissue_type", "organ"),
    "image": ("image", "image_file", "image_path", "file_name", "filename", "img"),
    "group": ("group", "split", "set", "fold"),
}
CONFIG_KEYS = ("columns", "expression", "images", "masks", "gene_prefix", "genes", "transform",
               "pixel_size_um", "expression_id_column", "expression_layer", "allow_negative")
#: type of each config value (see :func:`tabst.ingest.checks.check_config_types`)
CONFIG_TYPES = {"columns": "mapping", "expression": "str list", "images": "str", "masks": "str",
                "gene_prefix": "str", "genes": "str list", "transform": "str",
                "pixel_size_um": "positive number", "expression_id_column": "str",
                "expression_layer": "str", "allow_negative": "bool"}
CONFIG_EXAMPLES = {"columns": "columns: {cell_id: fnm, x: x_centroid}",
                   "genes": "genes: [GAPDH, ACTB]   or   genes: '@genes.txt'",
                   "expression": "expression: expr.csv   or   expression: [S1.csv, S2.csv]"}
EXPRESSION_SUFFIXES = tuple(TEXT_TABLE_SUFFIXES) + PARQUET_SUFFIXES + (".h5ad", ".h5", ".hdf5")


def load_config(path) -> dict:
    """Read a YAML config for ``ingest table`` (keys: :data:`CONFIG_KEYS`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError("config file not found", file=path, fix="check the path")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"not valid YAML ({e})", file=path, fix="fix the YAML syntax") from None
    if not isinstance(cfg, dict):
        raise InputError("the config must be a mapping of option: value", file=path,
                         fix=f"valid keys: {', '.join(CONFIG_KEYS)}")
    cfg = cfg.get("ingest_table", cfg)  # allow nesting under ingest_table:
    if not isinstance(cfg, dict):
        raise InputError("'ingest_table' must be a mapping of option: value", file=path,
                         fix=f"valid keys: {', '.join(CONFIG_KEYS)}")
    unknown = [k for k in cfg if k not in CONFIG_KEYS]
    if unknown:
        raise InputError(f"unknown config key '{unknown[0]}'", file=path,
                         fix=f"valid keys: {', '.join(CONFIG_KEYS)}")
    check_config_types(cfg, CONFIG_TYPES, file=path, examples=CONFIG_EXAMPLES)
    return cfg


def parse_column_map(items: Sequence[str] | None) -> dict:
    """``["cell_id=fnm", "x=cx"]`` -> ``{"cell_id": "fnm", "x": "cx"}``."""
    out = {}
    for it in items or ():
        if "=" not in it:
            raise InputError(f"--col '{it}' is not FIELD=COLUMN",
                             fix=f"e.g. --col cell_id=fnm (fields: {', '.join(REQUIRED + OPTIONAL)})")
        k, v = (s.strip() for s in it.split("=", 1))
        out[k] = v
    return out


def resolve_columns(header: Sequence[str], mapping: dict, labels) -> dict:
    """Map canonical fields to the label table's columns (explicit mapping, then aliases)."""
    bad = [k for k in mapping if k not in FIELD_TYPES]
    if bad:
        raise InputError(f"unknown field '{bad[0]}' in the column mapping",
                         fix=f"fields: {', '.join(REQUIRED + OPTIONAL)}")
    lower = {c.lower(): c for c in header}
    out = {}
    for field in REQUIRED + OPTIONAL:
        if field in mapping:
            src = mapping[field]
            if src not in header:
                raise InputError(f"column mapped to {field} not found", file=labels, column=src,
                                 fix=f"columns in the file: {_preview(header)}")
            out[field] = src
            continue
        for alias in ALIASES[field]:
            if alias in lower and lower[alias] not in out.values():
                out[field] = lower[alias]
                break
        if field in REQUIRED and field not in out:
            raise InputError("required column missing", file=labels, column=field,
                             fix=f"add it, or map yours with --col {field}=<column> "
                                 f"(columns in the file: {_preview(header)})")
    return out


def _read_labels(labels: Path, colmap: dict):
    """The label table's mapped columns, validated. Returns a dict of arrays (pyarrow for
    strings, numpy float64 for x/y) keyed by canonical field."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = read_table(labels, {src: FIELD_TYPES[f] for f, src in colmap.items()})
    n = t.num_rows
    if n == 0:
        raise InputError("the label table has no data rows", file=labels,
                         fix="give one row per cell")
    cols = {f: t.column(src).combine_chunks() for f, src in colmap.items()}
    for f in ("cell_id", "sample"):
        a = cols[f]
        blank = pc.or_kleene(pc.is_null(a), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(a)), 0))
        i = _first(blank.fill_null(True).to_numpy(zero_copy_only=False))
        if i is not None:
            what = "empty cell id" if f == "cell_id" else "empty sample name"
            raise InputError(what, file=labels, row=i + 1, column=colmap[f],
                             fix=f"every cell needs a {f.replace('_', ' ')}")
    ids = cols["cell_id"]
    index = IdIndex(ids)
    dup = index.first_duplicate()
    if dup is not None:
        raise InputError(f"duplicate cell id '{ids[dup[1]].as_py()}' (also on row {dup[0] + 1})",
                         file=labels, row=dup[1] + 1, column=colmap["cell_id"],
                         fix="cell ids must be unique; prefix them with the sample if needed")
    out = {"cell_id": ids, "_index": index}
    for f in ("x", "y"):
        out[f] = cols[f].to_numpy(zero_copy_only=False).astype(np.float64)
    check_coordinates(out["x"], out["y"], file=labels, row_offset=0,
                      columns=(colmap["x"], colmap["y"]), row_ids=ids, what="centroid")
    enc = pc.dictionary_encode(cols["sample"])
    for k, name in enumerate(enc.dictionary.to_pylist()):
        try:
            check_sample_name(name)
        except InputError:
            row = _first(enc.indices.to_numpy(zero_copy_only=False) == k) + 1
            check_sample_name(name, file=labels, row=row, column=colmap["sample"])
    out["sample"] = cols["sample"]
    if "tissue" in cols:
        t_ = cols["tissue"]
        blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(t_)), 0).fill_null(True)
        out["tissue"] = pc.if_else(blank, pa.scalar("unknown"), t_.fill_null("unknown"))
    else:
        out["tissue"] = pa.array(np.full(n, "unknown", dtype=object), type=pa.string())
    for f in ("group", "image"):
        if f in cols:
            out[f] = cols[f]
    return out


def _expression_files(expression) -> list[Path]:
    if expression is None:
        return []
    items = [expression] if isinstance(expression, (str, Path)) else list(expression)
    files = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")
                           and any(q.name.lower().endswith(s) or q.name.lower().endswith(s + ".gz")
                                   for s in EXPRESSION_SUFFIXES))
            if not found:
                raise InputError("no expression files in this folder", file=p,
                                 fix="put .csv/.tsv/.parquet/.h5ad/.h5 files there")
            files.extend(found)
        else:
            files.append(p)
    return files


def ingest_table(labels, *, out, images=None, expression=None, masks=None,
                 columns: dict | None = None, config=None, gene_prefix: str | None = None,
                 genes=None, transform: str | None = None, pixel_size_um: float | None = None,
                 expression_id_column: str | None = None, expression_layer: str | None = None,
                 allow_negative: bool | None = None, force: bool = False,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, command: Sequence[str] | None = None,
                 show_progress: bool = True) -> dict:
    """Build a tabst store from a label table, expression and images.

    Parameters
    ----------
    labels : path
        Label table (CSV/TSV/Parquet), one row per cell.
    out : path
        Store to write (``.h5``); must not exist unless ``force``.
    images : path, optional
        Folder of the H&E images (per sample) or per-cell patches; relative names in the
        image column are resolved against it (default: the label table's folder).
    expression : path or list of paths, optional
        Separate expression file(s) or folder(s) of them. ``None``: gene columns of the label
        table, chosen by ``genes`` or ``gene_prefix``.
    masks : path, optional
        Folder of per-sample nucleus label images.
    columns : dict, optional
        Canonical field -> column name in the label table (cell_id, sample, x, y, tissue,
        image, group).
    config : path, optional
        YAML file with any of :data:`CONFIG_KEYS`; explicit arguments win.
    gene_prefix, genes :
        Gene selection (``genes``: list, ``"G1,G2"`` or ``"@file"``).
    transform : str
        What the values are, recorded as ``/expression/X`` attr ``transform``
        (default ``"as given"``).
    pixel_size_um : float, optional
        Microns per pixel of the images (NaN when unknown).
    expression_id_column : str, optional
        Cell id column of separate CSV/Parquet files (default: the label table's cell id
        column name, then ``cell_id``, then the first column), obs column of an ``.h5ad``
        (default: the obs index), or dataset name in an HDF5 matrix (default ``cell_id``).
    expression_layer : str, optional
        ``.h5ad`` layer to read instead of X.
    allow_negative : bool
        Accept negative expression values (centred/scaled data).
    force : bool
        Overwrite an existing store.

    Returns
    -------
    dict
        ``store, n_cells, n_genes, samples ({sample: n_cells}), image_kind, expression_files``.
    """
    labels = Path(labels)
    out = Path(out)
    cfg = load_config(config) if config is not None else {}
    colmap_in = dict(cfg.get("columns") or {})
    colmap_in.update(columns or {})
    images = images if images is not None else cfg.get("images")
    masks = masks if masks is not None else cfg.get("masks")
    expression = expression if expression is not None else cfg.get("expression")
    gene_prefix = gene_prefix if gene_prefix is not None else cfg.get("gene_prefix")
    genes = parse_gene_list(genes if genes is not None else cfg.get("genes"))
    transform = transform if transform is not None else cfg.get("transform", "as given")
    pixel_size_um = pixel_size_um if pixel_size_um is not None else cfg.get("pixel_size_um")
    if pixel_size_um is not None:
        check_config_types({"pixel_size_um": pixel_size_um}, CONFIG_TYPES, file=None)
    pixel_size_um = float("nan") if pixel_size_um is None else float(pixel_size_um)
    expression_id_column = expression_id_column or cfg.get("expression_id_column")
    expression_layer = expression_layer or cfg.get("expression_layer")
    allow_negative = allow_negative if allow_negative is not None else cfg.get("allow_negative",
                                                                               False)
    check_config_types({"allow_negative": allow_negative}, CONFIG_TYPES, file=None)
    allow_negative = bool(allow_negative)  # a real bool (or None) by now
    images = Path(images) if images is not None else None
    masks = Path(masks) if masks is not None else None

    from ..outputs import prepare_output  # exists? a file? writable? stale temp files?

    prepare_output(out, "file", force=force)
    if not labels.exists():
        raise InputError("label table not found", file=labels, fix="check the path")
    for folder, what in ((images, "--images"), (masks, "--masks")):
        if folder is not None and not folder.is_dir():
            raise InputError(f"{what} folder not found", file=folder,
                             fix="give the folder that holds the files")

    # ---- label table --------------------------------------------------------------------
    header = table_columns(labels)
    colmap = resolve_columns(header, colmap_in, labels)
    cells = _read_labels(labels, colmap)
    n = len(cells["cell_id"])

    # ---- expression readers -------------------------------------------------------------
    expr_files = _expression_files(expression)
    if expr_files:
        readers = [open_expression(p, id_column=expression_id_column, layer=expression_layer,
                                   id_candidates=(colmap["cell_id"], "cell_id"))
                   for p in expr_files]
        gene_list = select_genes(readers, genes, gene_prefix)
    else:
        if genes is None and not gene_prefix:
            raise InputError("no expression given", file=labels,
                             fix="pass --expression FILE, or pick the label table's gene columns "
                                 "with --gene-prefix P or --genes G1,G2 (or @genes.txt)")
        meta = set(colmap.values())
        candidates = [c for c in header if c not in meta]
        reader = TableExpression(labels, id_column=colmap["cell_id"], gene_columns=candidates)
        gene_list = select_genes([reader], genes, gene_prefix)
        readers = [reader]

    # ---- images and masks ---------------------------------------------------------------
    store_dir = out.resolve().parent
    image_plan, used_files = _plan_images(cells, colmap, labels, images, masks, pixel_size_um,
                                          store_dir, show_progress)

    # ---- write ----------------------------------------------------------------------------
    inputs = [labels, *expr_files, *used_files]
    prov = build_provenance(inputs, command=command if command is not None else sys.argv,
                            ingest="table", columns=colmap,
                            gene_selection={"prefix": gene_prefix, "genes": len(gene_list)},
                            transform=transform)
    fields = {k: cells[k] for k in ("cell_id", "sample", "tissue", "x", "y", "group")
              if k in cells}
    if image_plan["kind"] == "per-cell":
        fields["image"] = image_plan["cell_paths"]
    counts = _sample_counts(cells["sample"])
    index = cells.pop("_index")
    with create_store(out, force=force, provenance=prov) as f:
        write_cells(f, fields)
        for s, rec in image_plan["samples"].items():
            write_image_group(f, s, store_dir=store_dir, **rec)
        # /cells is on disk: free the label columns before streaming the expression
        del fields
        cells.clear()
        image_plan.pop("cell_paths", None)
        release_arrow_memory()
        write_expression_streaming(
            f, readers, genes=gene_list, transform=transform, labels_file=labels,
            cell_id_column=colmap["cell_id"], allow_negative=allow_negative,
            chunk_rows=chunk_rows, scratch_dir=store_dir, show_progress=show_progress,
            id_index=index)
    return {"store": str(out), "n_cells": n, "n_genes": len(gene_list), "samples": counts,
            "image_kind": image_plan["kind"], "expression_files": [str(p) for p in expr_files]
            or [str(labels)]}


def _sample_counts(sample) -> dict:
    import pyarrow.compute as pc

    vc = pc.value_counts(sample)
    return {v.as_py(): c.as_py() for v, c in zip(vc.field("values"), vc.field("counts"))}


def describe_summary(res: dict) -> str:
    """One-paragraph human summary of :func:`ingest_table`'s result."""
    samples = ", ".join(f"{s} ({c:,})" for s, c in res["samples"].items())
    return (f"wrote {res['store']}: {res['n_cells']:,} cells x {res['n_genes']:,} genes from "
            f"{len(res['samples'])} sample(s): {samples}; images: {res['image_kind']}")


__all__ = [
    "ALIASES",
    "CONFIG_KEYS",
    "OPTIONAL",
    "REQUIRED",
    "describe_summary",
    "ingest_table",
    "load_config",
    "parse_column_map",
    "resolve_columns",
]
