"""10x Genomics Visium (Space Ranger ``outs/`` folder) -> spot sections.

Read from an ``outs`` folder (or any folder with the same layout):

- counts: ``filtered_feature_bc_matrix.h5`` (10x HDF5: ``matrix/{data,indices,indptr,shape,
  barcodes}``, ``matrix/features/{id,name,feature_type}``), else the
  ``filtered_feature_bc_matrix/`` folder (``matrix.mtx.gz`` genes x barcodes,
  ``features.tsv.gz``, ``barcodes.tsv.gz``). With ``all_spots`` the ``raw_feature_bc_matrix``
  (h5 or folder) is preferred, as the filtered matrix holds in-tissue spots only.
  Only features of type ``Gene Expression`` are kept.
- positions: ``spatial/tissue_positions.csv`` (Space Ranger >= 2.0, with header) or the older
  headerless ``spatial/tissue_positions_list.csv``.
- ``spatial/scalefactors_json.json``: ``spot_diameter_fullres``, ``tissue_hires_scalef``,
  ``tissue_lowres_scalef``.
- the image: the full-resolution image when given (scale 1), else ``tissue_hires_image.png``
  (x ``tissue_hires_scalef``), else ``tissue_lowres_image.png`` (x ``tissue_lowres_scalef``). The
  choice, the scale factor and the spot diameter in that image's pixels are recorded in
  ``/images/<sample>``.

Gene names: gene symbols by default; a symbol shared by several features (e.g. two Ensembl
ids) becomes ``SYMBOL_ENSEMBLID`` for every member, so names are unique and identical across
samples of the same reference; ``gene_names="id"`` uses the feature ids instead. The ids are
kept in ``/expression/gene_ids`` either way.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from .checks import (
    check_coordinates,
    check_expression_block,
    json_number,
    numeric_columns,
    read_json_object,
)
from .normalize import SPOT_DEFAULT
from .spots import SpotSection, check_inside, image_shape, make_unique

VISIUM_SPOT_DIAMETER_UM = 55.0
POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                    "pxl_col_in_fullres"]


def _decode(a) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(a).ravel()]


def read_10x_h5(path) -> tuple[sp.csr_matrix, list[str], list[str], list[str], list[str]]:
    """Read a 10x feature-barcode matrix HDF5 file.

    Returns (counts csr [barcodes, features], barcodes, feature ids, feature names,
    feature types). Also reads the Cell Ranger 2 layout (``<genome>/genes``, ``gene_names``).
    """
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"not a readable HDF5 file ({e})", file=path) from None
    with f:
        if "matrix" in f:
            g = f["matrix"]
            feats = g["features"]
            ids, names = _decode(feats["id"][()]), _decode(feats["name"][()])
            types = (_decode(feats["feature_type"][()]) if "feature_type" in feats
                     else ["Gene Expression"] * len(ids))
        else:
            groups = [k for k in f if isinstance(f[k], h5py.Group)]
            if not groups or "genes" not in f[groups[0]]:
                raise InputError("not a 10x feature-barcode matrix (no 'matrix' group)",
                                 file=path, fix="give Space Ranger's filtered_feature_bc_matrix.h5")
            g = f[groups[0]]
            ids, names = _decode(g["genes"][()]), _decode(g["gene_names"][()])
            types = ["Gene Expression"] * len(ids)
        for k in ("data", "indices", "indptr", "shape", "barcodes"):
            if k not in g:
                raise InputError(f"10x matrix lacks '{g.name}/{k}'", file=path)
        n_feat, n_bc = (int(v) for v in g["shape"][()])
        # CSC over barcodes (columns) == CSR of the transpose: barcodes x features
        M = sp.csr_matrix((g["data"][()], g["indices"][()], g["indptr"][()]),
                          shape=(n_bc, n_feat))
        barcodes = _decode(g["barcodes"][()])
    return M, barcodes, ids, names, types


def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        return [line.rstrip("\n") for line in fh if line.strip()]


def _first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    return None


def read_10x_mtx(folder) -> tuple[sp.csr_matrix, list[str], list[str], list[str], list[str]]:
    """Read a 10x matrix folder (``matrix.mtx[.gz]`` genes x barcodes, ``features.tsv[.gz]`` or
    ``genes.tsv``, ``barcodes.tsv[.gz]``); same return value as :func:`read_10x_h5`."""
    from scipy.io import mmread

    folder = Path(folder)
    mtx = _first_existing(folder, ["matrix.mtx.gz", "matrix.mtx"])
    feat = _first_existing(folder, ["features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"])
    bcs = _first_existing(folder, ["barcodes.tsv.gz", "barcodes.tsv"])
    for what, p in (("matrix.mtx.gz", mtx), ("features.tsv.gz", feat), ("barcodes.tsv.gz", bcs)):
        if p is None:
            raise InputError(f"no {what} in the matrix folder", file=folder,
                             fix="give Space Ranger's filtered_feature_bc_matrix/ folder")
    try:
        M = mmread(str(mtx))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"not a readable Matrix Market file ({e})", file=mtx) from None
    M = sp.csr_matrix(M.T)  # barcodes x features
    barcodes = [b.split("\t")[0] for b in _read_lines(bcs)]
    rows = [r.split("\t") for r in _read_lines(feat)]
    ids = [r[0] for r in rows]
    names = [r[1] if len(r) > 1 else r[0] for r in rows]
    types = [r[2] if len(r) > 2 else "Gene Expression" for r in rows]
    if M.shape != (len(barcodes), len(ids)):
        raise InputError(f"matrix is {M.shape[1]} features x {M.shape[0]} barcodes but "
                         f"{feat.name} lists {len(ids)} features and {bcs.name} {len(barcodes)} "
                         "barcodes", file=mtx, fix="the three files must come from the same run")
    return M, barcodes, ids, names, types


def _read_csv(path: Path, **kw) -> pd.DataFrame:
    """pandas.read_csv with an InputError for empty, non-UTF-8 or unparsable files."""
    from .tabular import not_utf8_error

    try:
        return pd.read_csv(path, **kw)
    except pd.errors.EmptyDataError:
        raise InputError("the file is empty", file=path,
                         fix="give Space Ranger's spatial/ folder as written (one row per "
                             "spot)") from None
    except UnicodeDecodeError:
        raise not_utf8_error(path, delimiter=",") from None
    except pd.errors.ParserError as e:
        raise InputError(f"cannot parse the CSV ({e})", file=path,
                         fix="give Space Ranger's comma-separated positions file") from None


def read_positions(spatial: Path) -> tuple[pd.DataFrame, Path]:
    """Spot positions: ``tissue_positions.csv`` (header) or ``tissue_positions_list.csv``."""
    p = spatial / "tissue_positions.csv"
    if p.is_file():
        df = _read_csv(p)
        df.columns = [c.strip() for c in df.columns]
        missing = [c for c in POSITION_COLUMNS if c not in df.columns]
        if missing:
            raise InputError(f"missing column(s) {', '.join(missing)}", file=p, column=missing[0],
                             fix="expected Space Ranger columns " + ", ".join(POSITION_COLUMNS))
    else:
        p = spatial / "tissue_positions_list.csv"
        if not p.is_file():
            raise InputError("no tissue_positions.csv or tissue_positions_list.csv",
                             file=spatial, fix="give Space Ranger's outs/ folder (with spatial/)")
        df = _read_csv(p, header=None)
        if df.shape[1] != 6:
            raise InputError(f"expected 6 columns, found {df.shape[1]}", file=p,
                             fix="tissue_positions_list.csv has no header and 6 columns: "
                                 + ", ".join(POSITION_COLUMNS))
        df.columns = POSITION_COLUMNS
    if len(df) == 0:
        raise InputError("the positions file has no spots", file=p,
                         fix="give Space Ranger's spatial/ folder as written (one row per spot)")
    df["barcode"] = df["barcode"].astype(str)
    numeric_columns(df, POSITION_COLUMNS[1:], file=p, required=("in_tissue", "array_row", "array_col"),
                    fix="the position columns hold numbers only",
                    missing_fix="every spot needs in_tissue, array_row and array_col")
    check_coordinates(df["pxl_col_in_fullres"].to_numpy(), df["pxl_row_in_fullres"].to_numpy(),
                      file=p, row_offset=0, columns=("pxl_col_in_fullres", "pxl_row_in_fullres"),
                      row_ids=df["barcode"].to_numpy(), what="spot position",
                      id_label="barcode", unit="full-resolution pixels")
    if df["barcode"].duplicated().any():
        r = int(np.flatnonzero(df["barcode"].duplicated().to_numpy())[0])
        raise InputError(f"barcode '{df['barcode'].iloc[r]}' appears twice", file=p, row=r + 1,
                         column="barcode")
    return df, p


def _find_matrix(outs: Path, all_spots: bool) -> tuple[str, Path]:
    order = (["raw_feature_bc_matrix", "filtered_feature_bc_matrix"] if all_spots
             else ["filtered_feature_bc_matrix"])
    for stem in order:
        if (outs / f"{stem}.h5").is_file():
            return "h5", outs / f"{stem}.h5"
        if (outs / stem).is_dir():
            return "mtx", outs / stem
    raise InputError("no filtered_feature_bc_matrix.h5 or filtered_feature_bc_matrix/ folder",
                     file=outs, fix="give Space Ranger's outs/ folder")


def default_visium_name(outs: Path) -> str:
    outs = outs.resolve()
    return outs.parent.name if outs.name == "outs" else outs.name


def read_visium(outs, sample: str | None = None, *, fullres_image=None, all_spots: bool = False,
                gene_names: str = "symbol", tissue: str = "unknown") -> SpotSection:
    """Read one Space Ranger output folder into a :class:`SpotSection`.

    Parameters
    ----------
    outs : Space Ranger ``outs/`` folder (or a folder with the same layout).
    sample : sample name (default: the folder's name, or its parent's if it is called ``outs``).
    fullres_image : the full-resolution image the positions refer to (optional).
    all_spots : keep spots outside the tissue too (default: in-tissue spots only).
    gene_names : ``symbol`` (made unique, see module docstring) or ``id``.
    tissue : tissue label.
    """
    outs = Path(outs)
    if not outs.is_dir():
        raise InputError("not a folder", file=outs, fix="give Space Ranger's outs/ folder")
    if gene_names not in ("symbol", "id"):
        raise InputError(f"--gene-names must be 'symbol' or 'id', not '{gene_names}'")
    sample = sample or default_visium_name(outs)
    spatial = outs / "spatial"
    if not spatial.is_dir():
        raise InputError("no spatial/ folder", file=outs,
                         fix="give Space Ranger's outs/ folder, which holds spatial/")
    kind, mpath = _find_matrix(outs, all_spots)
    M, barcodes, ids, names, types = read_10x_h5(mpath) if kind == "h5" else read_10x_mtx(mpath)
    gex = np.asarray([t == "Gene Expression" for t in types])
    n_other = int((~gex).sum())
    if not gex.any():
        raise InputError("no 'Gene Expression' features in the matrix", file=mpath)
    M = M[:, np.flatnonzero(gex)]
    ids = [i for i, k in zip(ids, gex) if k]
    names = [n for n, k in zip(names, gex) if k]
    check_expression_block(M, file=mpath, row_offset=None, genes=names, row_ids=barcodes,
                           what="count", id_label="barcode",
                           negative_fix="give Space Ranger's raw counts (>= 0)")
    totals_all = np.asarray(M.sum(axis=1), dtype=np.float64).ravel()
    if gene_names == "id":
        genes, renamed = make_unique(ids)
    else:
        genes, renamed = make_unique(names, ids)

    pos, pos_path = read_positions(spatial)
    sf_path = spatial / "scalefactors_json.json"
    if not sf_path.is_file():
        raise InputError("no scalefactors_json.json", file=spatial)
    sf = read_json_object(sf_path, fix="give Space Ranger's scalefactors_json.json as written",
                          expected='{"spot_diameter_fullres": ..., "tissue_hires_scalef": ..., '
                                   '"tissue_lowres_scalef": ...}')
    spot_fullres = json_number(sf, "spot_diameter_fullres", file=sf_path)

    if fullres_image is not None:
        img, choice, scale = Path(fullres_image), "fullres", 1.0
        if not img.is_file():
            raise InputError("full-resolution image not found", file=img)
    elif (spatial / "tissue_hires_image.png").is_file():
        img, choice = spatial / "tissue_hires_image.png", "hires"
    elif (spatial / "tissue_lowres_image.png").is_file():
        img, choice = spatial / "tissue_lowres_image.png", "lowres"
    else:
        raise InputError("no image: neither tissue_hires_image.png nor tissue_lowres_image.png "
                         "in spatial/", file=spatial,
                         fix="give the full-resolution image with --fullres-image")
    if choice != "fullres":
        scale = json_number(sf, f"tissue_{choice}_scalef", file=sf_path)
    h, w, c = image_shape(img)

    pos_idx = {b: i for i, b in enumerate(pos["barcode"])}
    prow = np.asarray([pos_idx.get(b, -1) for b in barcodes])
    if (prow < 0).any():
        missing = [b for b, r in zip(barcodes, prow) if r < 0]
        raise InputError(f"{len(missing)} barcode(s) of the matrix have no position "
                         f"(e.g. {missing[0]})", file=pos_path,
                         fix="the matrix and spatial/ must come from the same Space Ranger run")
    in_tissue = pos["in_tissue"].to_numpy()[prow] == 1
    keep = np.ones(len(barcodes), dtype=bool) if all_spots else in_tissue
    idx = np.flatnonzero(keep)
    x = pos["pxl_col_in_fullres"].to_numpy(np.float64)[prow[idx]] * scale
    y = pos["pxl_row_in_fullres"].to_numpy(np.float64)[prow[idx]] * scale
    check_inside(sample, x, y, h, w, pos_path, "spot centres",
                 fix=f"the positions (x {choice} scale factor {scale:g}) must fall in {img.name}; "
                     "give the matching --fullres-image, or check scalefactors_json.json")
    spot_px = spot_fullres * scale
    report = {
        "matrix": str(mpath), "matrix_format": kind,
        "spots_in_matrix": int(len(barcodes)),
        "spots_in_positions": int(len(pos)),
        "in_tissue_in_positions": int((pos["in_tissue"] == 1).sum()),
        "in_tissue_in_matrix": int(in_tissue.sum()),
        "spots_kept": int(len(idx)), "all_spots": bool(all_spots),
        "match_rate": 1.0,
        "features_not_gene_expression": n_other,
        "gene_names": gene_names, "genes_renamed": len(renamed),
        "genes_renamed_examples": dict(list(renamed.items())[:20]),
        "image_choice": choice, "image_scale_factor": scale,
        "spot_diameter_px": spot_px,
    }
    if all_spots and mpath.name.startswith("filtered"):
        report["note"] = ("--all-spots but only the filtered matrix is present: it holds "
                          "in-tissue spots only")
    image_attrs = {
        "kind": "file", "path": str(img.resolve()), "mask_path": "",
        "height": h, "width": w, "channels": c,
        "pixel_size_um": VISIUM_SPOT_DIAMETER_UM / spot_px if spot_px > 0 else float("nan"),
        "pixel_size_source": (f"Visium spots are {VISIUM_SPOT_DIAMETER_UM:g} um across / "
                              f"spot_diameter_fullres x scale factor = {spot_px:.3f} px"),
        "spot_diameter_px": spot_px,
        "spot_diameter_um": VISIUM_SPOT_DIAMETER_UM,
        "image_choice": choice,
        "scale_factor": scale,
        "fullres_to_image": (f"x = pxl_col_in_fullres * {scale:g}, "
                             f"y = pxl_row_in_fullres * {scale:g}"),
        "platform": "Visium",
        "description": f"H&E image of Visium sample {sample} ({choice} image; positions from "
                       f"{pos_path.name} scaled by {scale:g})",
    }
    inputs = [mpath, pos_path, sf_path, img]
    return SpotSection(
        sample=sample, spot_ids=np.asarray(barcodes, dtype=object)[idx], x=x, y=y,
        counts=M[idx], genes=genes, gene_ids=ids, image=image_attrs, totals=totals_all[idx],
        tissue=tissue,
        extra={
            "array_row": (pos["array_row"].to_numpy().astype(np.int64)[prow[idx]],
                          "Visium array row", None),
            "array_col": (pos["array_col"].to_numpy().astype(np.int64)[prow[idx]],
                          "Visium array column", None),
            "in_tissue": (in_tissue[idx], "spot under the tissue (Space Ranger in_tissue)", None),
        },
        inputs=inputs, report=report)


def ingest_visium(outs_dirs: Sequence, out, *, samples: Sequence[str] | None = None,
                  fullres_images: Sequence | None = None, all_spots: bool = False,
                  gene_names: str = "symbol", tissue: str = "unknown",
                  patients: dict | None = None, normalize: str = SPOT_DEFAULT,
                  scale: float | None = None, genes: str = "all", force: bool = False,
                  command=None, show_progress: bool = True) -> dict:
    """Ingest one or more Space Ranger output folders into one new store.

    ``samples`` and ``fullres_images`` (optional) are matched to ``outs_dirs`` by position;
    ``patients`` maps sample names to patient labels (``/cells/patient``, checked before any
    file is read). Returns the write summary of :func:`tabst.ingest.spots.write_spot_store`.
    """
    from .normalize import resolve_scale
    from .patients import assign_patients
    from .spots import write_spot_store

    outs_dirs = [Path(o) for o in outs_dirs]
    if not outs_dirs:
        raise InputError("no Space Ranger output folder given")
    samples = list(samples or [])
    fulls = list(fullres_images or [])
    if samples and len(samples) != len(outs_dirs):
        raise InputError(f"{len(samples)} --sample name(s) for {len(outs_dirs)} folder(s)",
                         fix="give one --sample per OUTS_DIR, in the same order, or none")
    if fulls and len(fulls) != len(outs_dirs):
        raise InputError(f"{len(fulls)} --fullres-image(s) for {len(outs_dirs)} folder(s)",
                         fix="give one --fullres-image per OUTS_DIR, in the same order, or none")
    resolve_scale(normalize, scale)  # a bad choice fails before reading
    names = samples or [default_visium_name(o) for o in outs_dirs]
    patient_of = assign_patients(names, patients)
    sections = [read_visium(o, names[i], fullres_image=fulls[i] if fulls else None,
                            all_spots=all_spots, gene_names=gene_names, tissue=tissue)
                for i, o in enumerate(outs_dirs)]
    for sec, p in zip(sections, patient_of):
        sec.patient = p
    return write_spot_store(sections, out, normalize=normalize, scale=scale, genes=genes,
                            force=force, command=command, platform="Visium",
                            show_progress=show_progress)
