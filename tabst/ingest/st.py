"""Legacy Spatial Transcriptomics (ST, 1k/2k arrays; the STUtility / st_pipeline layout).

Per section three files:

- a count table, spots x genes (tab-separated, optionally gzipped); the first column holds the
  spot id ``XxY`` (array coordinates, e.g. ``10x21``; some pipelines write adjusted, non-integer
  ``10.02x20.97``). A genes x spots table (spot ids as the header) is detected and transposed.
- an alignment table with columns ``x y new_x new_y pixel_x pixel_y selected`` (one row per
  array spot): ``x y`` are the array coordinates the spot ids use, ``pixel_x pixel_y`` the spot
  centre in the H&E image, ``selected`` 1 for spots under the tissue.
- the H&E image.

Spot ids are matched to the alignment's ``(x, y)`` after rounding to the nearest integer (the
rounding is reported). Only selected (under-tissue) spots are kept unless ``all_spots``.

The spot diameter in pixels is derived from the alignment: the pixel distance between
neighbouring spots divided by their array distance gives pixels per array unit; one array unit
is 100 um on the staggered 2k array (neighbours at (+-1, +-1)) and 200 um on the 1k array
(neighbours at (+-1, 0)); ST spots are 100 um across.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from .checks import check_coordinates, check_expression_block, check_sample_name, numeric_columns
from .normalize import SPOT_DEFAULT
from .spots import SpotSection, check_inside, image_shape

ALIGNMENT_COLUMNS = ("x", "y", "pixel_x", "pixel_y", "selected")
SPOT_ID = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*x\s*(-?\d+(?:\.\d+)?)\s*$")
ST_SPOT_DIAMETER_UM = 100.0


def _parse_ids(ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, ok) from ``XxY`` spot ids."""
    xs, ys, ok = [], [], []
    for s in ids:
        m = SPOT_ID.match(str(s))
        if m:
            xs.append(float(m.group(1)))
            ys.append(float(m.group(2)))
            ok.append(True)
        else:
            xs.append(np.nan)
            ys.append(np.nan)
            ok.append(False)
    return np.asarray(xs), np.asarray(ys), np.asarray(ok)


def _read_tsv(path: Path, what: str, **kw) -> pd.DataFrame:
    """pandas.read_csv with InputErrors for empty, non-UTF-8 or unparsable files."""
    from .tabular import not_utf8_error

    try:
        return pd.read_csv(path, **kw)
    except pd.errors.EmptyDataError:
        raise InputError(f"the {what} is empty", file=path,
                         fix="give the file with its header line and one row per spot") from None
    except UnicodeDecodeError:
        raise not_utf8_error(path, delimiter=kw.get("sep") or "\t") from None
    except (pd.errors.ParserError, ValueError, csv.Error) as e:
        raise InputError(f"cannot read the {what} ({type(e).__name__}: {e})", file=path,
                         fix="give a tab-separated table") from None


def _raw_field(path: Path, row: int, col: int) -> str | None:
    """Field ``col`` (0-based, after the id column) of data row ``row`` (1-based), as text."""
    from .tabular import open_binary

    try:
        with open_binary(path) as fh:
            for k, line in enumerate(fh):
                if k == row:
                    fields = line.decode("utf-8", "replace").rstrip("\r\n").split("\t")
                    return fields[col + 1].strip() if col + 1 < len(fields) else None
    except OSError:
        return None
    return None


def read_st_counts(path) -> tuple[np.ndarray, list[str], sp.csr_matrix, str]:
    """Read an ST count table; returns (spot_ids, genes, counts csr [spots, genes], orientation)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("count table not found", file=path)
    head = _read_tsv(path, "count table", sep="\t", nrows=3, index_col=0)
    idx_ok = _parse_ids(head.index)[2].mean() if len(head.index) else 0.0
    col_ok = _parse_ids(head.columns)[2].mean() if len(head.columns) else 0.0
    if idx_ok < 0.5 and col_ok < 0.5:
        raise InputError("neither the first column nor the header holds spot ids of the form "
                         "XxY (e.g. 10x21)", file=path,
                         fix="give the ST count table whose rows (or columns) are named by array "
                             "coordinates 'XxY'")
    orientation = "spots x genes" if idx_ok >= col_ok else "genes x spots (transposed)"
    df = _read_tsv(path, "count table", sep="\t", index_col=0)
    if orientation != "spots x genes":
        df = df.T
    spot_ids = np.asarray([str(s).strip() for s in df.index], dtype=object)
    genes = [str(g) for g in df.columns]
    vals = df.to_numpy()
    transposed = orientation != "spots x genes"

    def where(r, c):  # (1-based file data row, column name) of vals[r, c]
        return (c + 1, str(spot_ids[r])) if transposed else (r + 1, genes[c])

    if not np.issubdtype(vals.dtype, np.number):
        num = df.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(num) & ~pd.isna(vals)  # text, not merely empty
        r, c = np.argwhere(bad if bad.any() else np.isnan(num))[0]
        row, col = where(r, c)
        raise InputError(f"non-numeric count '{vals[r, c]}'", file=path, row=row, column=col,
                         fix="the count table must hold numbers only (after the id column)")
    vals = vals.astype(np.float64, copy=False)
    if np.isnan(vals).any():
        r, c = np.argwhere(np.isnan(vals))[0]
        row, col = where(r, c)
        tok = _raw_field(path, row, r if transposed else c)
        shown = f"'{tok}'" if tok else "(an empty field)"
        raise InputError(f"missing count {shown}", file=path, row=row, column=col,
                         fix=f"write 0 where a gene was not detected in a spot (replace every "
                             f"{shown} by 0), e.g. with pandas: pd.read_csv(f, sep='\\t', "
                             "index_col=0).fillna(0).to_csv(f2, sep='\\t')")
    # inf / negative, reported where they are in the file (a genes x spots file as is)
    check_expression_block(vals.T if transposed else vals, file=path, row_offset=0,
                           genes=list(spot_ids) if transposed else genes,
                           row_ids=genes if transposed else spot_ids,
                           id_label="gene" if transposed else "spot", what="count")
    return spot_ids, genes, sp.csr_matrix(vals.astype(np.float32)), orientation


def read_alignment(path) -> pd.DataFrame:
    """Read an ST alignment table (tab-separated; columns x y [new_x new_y] pixel_x pixel_y
    selected)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("alignment table not found", file=path)
    a = _read_tsv(path, "alignment table", sep=None, engine="python")
    a.columns = [str(c).strip() for c in a.columns]
    missing = [c for c in ALIGNMENT_COLUMNS if c not in a.columns]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)} (has: {', '.join(a.columns)})",
                         file=path, column=missing[0],
                         fix="the ST alignment table needs columns x y pixel_x pixel_y selected")
    numeric_columns(a, ALIGNMENT_COLUMNS, file=path, required=("x", "y", "selected"),
                    fix="the alignment columns hold numbers only",
                    missing="missing value (empty or n/a)",
                    missing_fix="every array spot needs x, y and selected (1 under the tissue, "
                                "else 0); remove rows of spots that are not on the array")
    check_coordinates(a["pixel_x"].to_numpy(), a["pixel_y"].to_numpy(), file=path,
                      row_offset=0, columns=("pixel_x", "pixel_y"), what="spot pixel position")
    key = list(zip(np.round(a["x"]).astype(int), np.round(a["y"]).astype(int)))
    if len(set(key)) != len(key):
        seen = set()
        for r, k in enumerate(key):
            if k in seen:
                raise InputError(f"array position {k[0]}x{k[1]} appears twice", file=path,
                                 row=r + 1, column="x")
            seen.add(k)
    return a


def spot_geometry(align: pd.DataFrame, spot_diameter_um: float = ST_SPOT_DIAMETER_UM,
                  array_unit_um: float | None = None) -> dict:
    """Spot diameter and pixel size from the alignment table (all array spots).

    Pixels per array unit = median over spots of (pixel distance to the nearest neighbour /
    array distance to that same neighbour). The array layout is recognised from the nearest
    array distance: about sqrt(2) -> staggered 2k array (1 unit = 100 um); about 1 -> 1k array
    (1 unit = 200 um). ``array_unit_um`` overrides that.
    """
    from scipy.spatial import cKDTree

    arr = align[["x", "y"]].to_numpy(np.float64)
    pix = align[["pixel_x", "pixel_y"]].to_numpy(np.float64)
    if len(arr) < 3:
        raise InputError("the alignment table has fewer than 3 spots; cannot derive the spot "
                         "size", fix="give the full alignment table (one row per array spot)")
    d_arr, j = cKDTree(arr).query(arr, k=2)
    d_arr, j = d_arr[:, 1], j[:, 1]
    d_pix = np.linalg.norm(pix - pix[j], axis=1)
    px_per_unit = float(np.median(d_pix / d_arr))
    nn_arr = float(np.median(d_arr))
    if array_unit_um is None:
        if abs(nn_arr - np.sqrt(2)) < 0.15:
            layout, array_unit_um = "staggered 2k array (neighbours at +-1,+-1)", 100.0
        elif abs(nn_arr - 1.0) < 0.15:
            layout, array_unit_um = "1k array (neighbours at +-1,0)", 200.0
        else:
            raise InputError(f"unrecognised ST array layout: median distance between "
                             f"neighbouring array positions is {nn_arr:.3f}",
                             fix="give --array-unit-um (micrometres per array coordinate unit)")
    else:
        layout = "given by --array-unit-um"
    um_per_px = array_unit_um / px_per_unit
    return {"layout": layout, "array_unit_um": float(array_unit_um),
            "px_per_array_unit": px_per_unit,
            "median_neighbour_px": float(np.median(d_pix)),
            "median_neighbour_array_units": nn_arr,
            "pixel_size_um": float(um_per_px),
            "spot_diameter_um": float(spot_diameter_um),
            "spot_diameter_px": float(spot_diameter_um / um_per_px)}


def st_sample_name(counts, sample: str | None = None) -> str:
    """The section's sample name: ``sample``, else the count file's name without extensions."""
    if sample is not None:
        return sample
    name = Path(counts).name
    return re.sub(r"(\.tsv|\.txt|\.csv)?(\.gz)?$", "", name) or name


def read_st_section(counts, alignment, image, sample: str | None = None, *,
                    all_spots: bool = False, tissue: str = "unknown",
                    spot_diameter_um: float = ST_SPOT_DIAMETER_UM,
                    array_unit_um: float | None = None) -> SpotSection:
    """Read one legacy-ST section into a :class:`SpotSection`.

    Parameters
    ----------
    counts, alignment, image : paths of the count table, alignment table and H&E image.
    sample : section name (default: the count file's name without extensions).
    all_spots : keep spots outside the tissue too (default: only ``selected == 1``).
    tissue : tissue label for the section.
    spot_diameter_um : spot diameter (ST: 100 um).
    array_unit_um : micrometres per array unit (default: recognised from the layout).
    """
    counts, alignment, image = Path(counts), Path(alignment), Path(image)
    sample = st_sample_name(counts, sample)
    spot_ids, genes, M, orientation = read_st_counts(counts)
    a = read_alignment(alignment)
    h, w, c = image_shape(image)

    cx, cy, ok = _parse_ids(spot_ids)
    if not ok.all():
        r = int(np.flatnonzero(~ok)[0])
        raise InputError(f"spot id '{spot_ids[r]}' is not of the form XxY", file=counts,
                         row=r + 1, fix="ST spot ids are array coordinates, e.g. 10x21")
    rx, ry = np.round(cx).astype(int), np.round(cy).astype(int)
    non_integer = int(((cx != rx) | (cy != ry)).sum())
    pos = {k: i for i, k in enumerate(zip(np.round(a["x"]).astype(int),
                                          np.round(a["y"]).astype(int)))}
    arow = np.asarray([pos.get(k, -1) for k in zip(rx, ry)])
    matched = arow >= 0
    sel = np.zeros(len(arow), dtype=bool)
    sel[matched] = a["selected"].to_numpy()[arow[matched]] == 1
    keep = matched if all_spots else sel
    n_sel_align = int((a["selected"] == 1).sum())
    sel_keys = {k for k, s in zip(zip(np.round(a["x"]).astype(int), np.round(a["y"]).astype(int)),
                                  a["selected"]) if s == 1}
    sel_with_counts = len(sel_keys & set(zip(rx[matched], ry[matched])))
    unmatched = [str(s) for s in spot_ids[~matched]]
    if not matched.any():
        raise InputError("no spot id of the count table matches an (x, y) of the alignment "
                         "table", file=counts,
                         fix=f"check that {alignment.name} belongs to this section")
    geo = spot_geometry(a, spot_diameter_um, array_unit_um)
    idx = np.flatnonzero(keep)
    px = a["pixel_x"].to_numpy(np.float64)[arow[idx]]
    py = a["pixel_y"].to_numpy(np.float64)[arow[idx]]
    check_inside(sample, px, py, h, w, alignment, "spot centres (pixel_x, pixel_y)",
                 fix=f"the alignment's pixel coordinates must be in the pixels of {image.name}; "
                     "was the image resized after alignment?")
    totals = np.asarray(M.sum(axis=1), dtype=np.float64).ravel()
    report = {
        "counts_orientation": orientation,
        "spots_in_counts": int(len(spot_ids)),
        "spots_in_alignment": int(len(a)),
        "spots_matched": int(matched.sum()),
        "match_rate": float(matched.mean()),
        "spot_ids_rounded": non_integer,
        "spots_dropped_unmatched": int((~matched).sum()),
        "unmatched_examples": unmatched[:20],
        "selected_in_alignment": n_sel_align,
        "selected_with_counts": int(sel_with_counts),
        "spots_selected": int(sel.sum()),
        "spots_kept": int(len(idx)),
        "all_spots": bool(all_spots),
        "spot_diameter_px": geo["spot_diameter_px"],
        "geometry": geo,
    }
    image_attrs = {
        "kind": "file", "path": str(image.resolve()), "mask_path": "",
        "height": h, "width": w, "channels": c,
        "pixel_size_um": geo["pixel_size_um"],
        "pixel_size_source": (f"derived from the spot pitch: {geo['array_unit_um']:g} um per "
                              f"array unit / {geo['px_per_array_unit']:.3f} px per array unit "
                              f"({geo['layout']})"),
        "spot_diameter_px": geo["spot_diameter_px"],
        "spot_diameter_um": geo["spot_diameter_um"],
        "platform": "ST",
        "description": f"H&E image of ST section {sample}; spot centres from {alignment.name} "
                       f"(pixel_x, pixel_y)",
    }
    return SpotSection(
        sample=sample, spot_ids=spot_ids[idx], x=px, y=py, counts=M[idx], genes=genes,
        image=image_attrs, totals=totals[idx], tissue=tissue,
        extra={
            "array_x": (rx[idx], "ST array x coordinate (from the spot id, rounded)", None),
            "array_y": (ry[idx], "ST array y coordinate (from the spot id, rounded)", None),
            "in_tissue": (sel[idx], "spot under the tissue (alignment 'selected' == 1)", None),
        },
        inputs=[counts, alignment, image], report=report)


def parse_section_spec(spec: str, base: Path | None = None) -> tuple[Path, Path, Path, str | None]:
    """``COUNTS,ALIGNMENT,IMAGE[,NAME]`` -> paths (+ name); relative paths against ``base``."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) not in (3, 4) or not all(parts[:3]):
        raise InputError(f"--section '{spec}': expected COUNTS,ALIGNMENT,IMAGE[,NAME]",
                         fix="e.g. --section MOB1.tsv.gz,alignment_table_MOB1.tsv,MOB1.jpg,MOB1")
    paths = [Path(p) if base is None or Path(p).is_absolute() else base / p for p in parts[:3]]
    return paths[0], paths[1], paths[2], (parts[3] if len(parts) == 4 and parts[3] else None)


def _patient_column(m, path: Path) -> tuple[str | None, list[str]]:
    """The manifest's patient column (``patient``, or its old name ``group``) and the notes to
    print (one when the old name is used); both columns at once are refused."""
    from .patients import alias_note

    if "patient" in m.columns and "group" in m.columns:
        raise InputError("both a 'patient' and a 'group' column ('group' is the old name of "
                         "'patient')", file=path, column="group",
                         fix="keep one column, named patient")
    if "group" in m.columns:
        return "group", [alias_note(f"the 'group' column of {path.name}", "'patient'")]
    return ("patient" if "patient" in m.columns else None), []


def read_manifest(path) -> tuple[list[tuple[Path, Path, Path, str | None]], dict, list[str]]:
    """A CSV/TSV manifest with columns counts, alignment, image[, sample][, patient]; relative
    paths are resolved against the manifest's folder. A ``group`` column is read as
    ``patient`` (its old name), with a note.

    Returns (specs, patients, notes): ``(counts, alignment, image, sample_or_None)`` per row,
    ``{sample: patient}`` for the rows with a non-empty patient (the sample name as
    :func:`st_sample_name` resolves it), and the notes to show the user."""
    from .patients import add_patient

    path = Path(path)
    if not path.is_file():
        raise InputError("manifest not found", file=path)
    m = _read_tsv(path, "manifest", sep=None, engine="python", dtype=str)
    m.columns = [c.strip().lower() for c in m.columns]
    for col in ("counts", "alignment", "image"):
        if col not in m.columns:
            raise InputError(f"missing column '{col}' (has: {', '.join(m.columns)})", file=path,
                             column=col, fix="columns: counts, alignment, image[, sample]"
                                             "[, patient]")
    pcol, notes = _patient_column(m, path)
    out, patients = [], {}
    for r, row in enumerate(m.itertuples(index=False), start=1):
        vals = []
        for col in ("counts", "alignment", "image"):
            v = getattr(row, col)
            if not isinstance(v, str) or not v.strip():
                raise InputError("empty path", file=path, row=r, column=col)
            p = Path(v.strip())
            vals.append(p if p.is_absolute() else path.parent / p)
        name = getattr(row, "sample", None) if "sample" in m.columns else None
        if isinstance(name, str) and name.strip():
            check_sample_name(name.strip(), file=path, row=r, column="sample")
        name = name.strip() if isinstance(name, str) and name.strip() else None
        out.append((vals[0], vals[1], vals[2], name))
        patient = getattr(row, pcol, None) if pcol else None
        if isinstance(patient, str) and patient.strip():
            add_patient(patients, st_sample_name(vals[0], name), patient,
                        f"{path.name} row {r}")
    return out, patients, notes


def read_st_sections(specs: Sequence[tuple], **kwargs) -> list[SpotSection]:
    """Read several sections given as ``(counts, alignment, image, name_or_None)`` tuples."""
    return [read_st_section(c, a, i, n, **kwargs) for c, a, i, n in specs]


def ingest_st(specs: Sequence[tuple], out, *, patients: dict | None = None,
              all_spots: bool = False, tissue: str = "unknown", normalize: str = SPOT_DEFAULT,
              scale: float | None = None, genes: str = "all", force: bool = False,
              spot_diameter_um: float = ST_SPOT_DIAMETER_UM, array_unit_um: float | None = None,
              command=None, show_progress: bool = True) -> dict:
    """Ingest legacy-ST sections into one new store; returns the write summary
    (see :func:`tabst.ingest.spots.write_spot_store`).

    ``specs`` are ``(counts, alignment, image, sample_or_None)``; ``patients`` maps sample
    names to patient labels (``/cells/patient``; checked before any file is read, see
    :func:`tabst.ingest.patients.assign_patients`).
    """
    from .normalize import resolve_scale
    from .patients import assign_patients
    from .spots import write_spot_store

    if not specs:
        raise InputError("no ST section given",
                         fix="give COUNTS ALIGNMENT IMAGE, or --section COUNTS,ALIGNMENT,IMAGE"
                             "[,NAME] (repeatable), or --manifest FILE")
    resolve_scale(normalize, scale)  # a bad choice fails before reading
    patient_of = assign_patients([st_sample_name(c, n) for c, _, _, n in specs], patients)
    sections = read_st_sections(specs, all_spots=all_spots, tissue=tissue,
                                spot_diameter_um=spot_diameter_um, array_unit_um=array_unit_um)
    for sec, p in zip(sections, patient_of):
        sec.patient = p
    return write_spot_store(sections, out, normalize=normalize, scale=scale, genes=genes,
                            force=force, command=command, platform="ST",
                            show_progress=show_progress)
