"""HEST-1k samples -> spot sections, plus the ``hest-patches`` image reader.

A HEST-1k download (``hest_data/``) holds per sample id ``<id>``:

- ``st/<id>.h5ad``: AnnData, raw counts in ``X`` (spots x genes), barcodes as ``obs_names``,
  ``obsm['spatial']`` = spot centre (x, y) in the full-resolution WSI's pixels;
- ``patches/<id>.h5``: ``img`` uint8 [N, 224, 224, 3] (224 px at 0.5 um/px around each spot),
  ``coords`` [N, 2] (top-left corner in WSI pixels), ``barcode`` [N, 1] bytes;
- ``metadata/<id>.json`` (optional): ``pixel_size_um_estimated``, ``spot_diameter``,
  ``st_technology``, ``organ``/``tissue``, ...; ``wsis/<id>.tif`` (optional) the WSI.

Spots become rows of the store when they have both an expression profile and a patch (matched
by barcode; the numbers on each side are reported). ``/cells/patch_index`` is the row of the
spot's patch in the ``.h5``; ``/images/<id>`` has ``kind = "hest-patches"`` and ``path`` = the
patches file, so ``tabst embed`` uses the stored patches as they are (:class:`HestPatches`).
``/cells/x, y`` stay in WSI pixels (as HEST gives them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from .checks import (
    check_coordinates,
    check_expression_block,
    check_sample_name,
    json_number,
    read_json_object,
)
from .normalize import SPOT_DEFAULT
from .spots import SpotSection

HEST_PATCH_PIXEL_SIZE_UM = 0.5  # HEST-1k patches: 224 px at 0.5 um/px


def _decode_all(a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    return np.asarray([x.decode() if isinstance(x, bytes) else str(x) for x in a.ravel()],
                      dtype=object)


def read_patch_index(path) -> dict:
    """Barcodes, coords and image shape of a HEST patches ``.h5`` (pixels are not read)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError("HEST patches file not found", file=path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"not a readable HDF5 file ({e})", file=path) from None
    with f:
        img_key = next((k for k in ("img", "imgs", "images") if k in f), None)
        bc_key = next((k for k in ("barcode", "barcodes") if k in f), None)
        if img_key is None or bc_key is None:
            raise InputError(f"a HEST patches file needs datasets 'img' and 'barcode' (has: "
                             f"{', '.join(f.keys())})", file=path,
                             fix="give HEST-1k's patches/<id>.h5")
        img = f[img_key]
        if img.ndim != 4 or img.shape[-1] not in (1, 3, 4):
            raise InputError(f"'{img_key}' has shape {img.shape}; expected [N, H, W, 3]",
                             file=path)
        barcodes = _decode_all(f[bc_key][()])
        if len(barcodes) != img.shape[0]:
            raise InputError(f"{len(barcodes)} barcodes but {img.shape[0]} patches", file=path)
        coords = np.asarray(f["coords"][()], dtype=np.float64) if "coords" in f else None
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in img.attrs.items()}
        return {"img_key": img_key, "shape": tuple(int(s) for s in img.shape),
                "dtype": str(img.dtype), "barcodes": barcodes, "coords": coords,
                "attrs": attrs}


def _spot_positions(raw, n_obs: int, path: Path) -> np.ndarray:
    """``obsm['spatial']`` as float64 [n, 2] (x, y), or an InputError saying what is wrong."""
    try:
        a = np.asarray(raw.to_numpy() if hasattr(raw, "to_numpy") else raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("obsm['spatial'] holds values that are not numbers", file=path,
                         fix="obsm['spatial'] must be a numeric [spots, 2] array of (x, y) "
                             "pixel coordinates") from None
    if a.ndim != 2 or a.shape[0] != n_obs or a.shape[1] < 2:
        raise InputError(f"obsm['spatial'] has shape {a.shape}; expected [{n_obs}, 2] (x, y per "
                         "spot)", file=path,
                         fix="obsm['spatial'] must hold one (x, y) pair of WSI pixel "
                             "coordinates per spot")
    return a


def _attr_pixel_size(ps, path: Path, key: str) -> float:
    """The patches' ``pixel_size`` attr (um/px) or HEST's 0.5 when absent."""
    if ps is None:
        return HEST_PATCH_PIXEL_SIZE_UM
    try:
        v = float(ps.decode() if isinstance(ps, bytes) else ps)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(ps, (bool, np.bool_)) or not np.isfinite(v) or v <= 0:
        raise InputError(f"the patches' pixel size attr is {ps!r}, not a positive number",
                         file=path, column=f"{key}.attrs['pixel_size']",
                         fix="write the patches' pixel size in um/px as a number (HEST: 0.5), "
                             "or remove the attr")
    return v


def read_hest_sample(st_h5ad, patches_h5, sample: str | None = None, *, metadata=None,
                     wsi=None, tissue: str | None = None) -> SpotSection:
    """Read one HEST-1k sample into a :class:`SpotSection` (rows = spots with a patch).

    Parameters
    ----------
    st_h5ad : ``st/<id>.h5ad`` (raw counts in X, ``obsm['spatial']``).
    patches_h5 : ``patches/<id>.h5``.
    sample : sample name (default: the h5ad's stem, i.e. the HEST id).
    metadata : ``metadata/<id>.json`` (optional; pixel size, spot diameter, organ).
    wsi : the whole-slide image (optional; recorded as ``wsi_path``).
    tissue : tissue label (default: the metadata's ``organ`` or ``tissue``, else ``unknown``).
    """
    import anndata

    st_h5ad, patches_h5 = Path(st_h5ad), Path(patches_h5)
    sample = check_sample_name(sample or st_h5ad.name.removesuffix(".h5ad"), file=st_h5ad)
    if not st_h5ad.is_file():
        raise InputError("HEST expression file not found", file=st_h5ad)
    try:
        ad = anndata.read_h5ad(st_h5ad)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"not a readable .h5ad file ({type(e).__name__}: {e})",
                         file=st_h5ad) from None
    if "spatial" not in ad.obsm:
        raise InputError("no obsm['spatial'] (spot positions)", file=st_h5ad,
                         fix="give HEST-1k's st/<id>.h5ad")
    obs = np.asarray([str(b) for b in ad.obs_names], dtype=object)
    spatial = _spot_positions(ad.obsm["spatial"], len(obs), st_h5ad)
    if len(set(obs.tolist())) != len(obs):
        raise InputError("barcodes (obs_names) are not unique", file=st_h5ad)
    check_coordinates(spatial[:, 0], spatial[:, 1], file=st_h5ad, row_offset=0,
                      columns=("obsm['spatial'][:, 0]", "obsm['spatial'][:, 1]"), row_ids=obs,
                      what="spot centre", id_label="barcode")
    X = ad.X
    if X is None or not (sp.issparse(X) or np.issubdtype(np.asarray(X).dtype, np.number)):
        raise InputError("X holds no numeric counts", file=st_h5ad,
                         fix="HEST's st/*.h5ad hold raw counts in X")
    M = sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr()
    genes = [str(g) for g in ad.var_names]
    check_expression_block(M, file=st_h5ad, row_offset=0, genes=genes, row_ids=obs,
                           what="count", id_label="barcode",
                           negative_fix="HEST's st/*.h5ad hold raw counts in X (>= 0)")
    non_integer = bool(M.nnz and not np.allclose(M.data, np.round(M.data)))
    if len(set(genes)) != len(genes):
        from .spots import make_unique

        genes, _ = make_unique(genes)

    pinfo = read_patch_index(patches_h5)
    pbc = pinfo["barcodes"]
    if len(set(pbc.tolist())) != len(pbc):
        raise InputError("a barcode occurs twice in the patches file", file=patches_h5)
    pidx = {b: i for i, b in enumerate(pbc)}
    patch_index = np.asarray([pidx.get(b, -1) for b in obs])
    keep = np.flatnonzero(patch_index >= 0)
    if len(keep) == 0:
        raise InputError("no barcode of the patches file matches the expression file's "
                         "barcodes", file=patches_h5,
                         fix=f"check that {patches_h5.name} and {st_h5ad.name} are the same sample")
    meta, meta_path = {}, None
    if metadata is not None and Path(metadata).is_file():
        meta_path = Path(metadata)
        meta = read_json_object(meta_path, fix="give HEST-1k's metadata/<id>.json (UTF-8 JSON)",
                                expected='HEST-1k\'s metadata/<id>.json ({"pixel_size_um_estimated": '
                                         '..., ...})')
    # written by some HEST versions; else HEST's 0.5
    patch_px_um = _attr_pixel_size(pinfo["attrs"].get("pixel_size"), patches_h5, pinfo["img_key"])
    spot_um = json_number(meta, "spot_diameter", file=meta_path, required=False)
    spot_um = float("nan") if spot_um is None else spot_um
    wsi_px_um = json_number(meta, "pixel_size_um_estimated", file=meta_path, required=False)
    if tissue is None:
        tissue = str(meta.get("organ") or meta.get("tissue") or "unknown")
    n, ph, pw, pc = pinfo["shape"]
    obs_set = set(obs.tolist())
    report = {
        "spots_in_expression": int(len(obs)),
        "patches": int(n),
        "spots_matched": int(len(keep)),
        "match_rate": float(len(keep) / len(obs)),
        "spots_without_patch": int(len(obs) - len(keep)),
        "patches_without_expression": int(sum(b not in obs_set for b in pbc)),
        "counts_non_integer": non_integer,
        "st_technology": meta.get("st_technology"),
        "spot_diameter_px": spot_um / patch_px_um if np.isfinite(spot_um) else float("nan"),
    }
    image_attrs = {
        "kind": "hest-patches", "path": str(patches_h5.resolve()), "mask_path": "",
        "height": ph, "width": pw, "channels": pc,
        "pixel_size_um": patch_px_um,
        "spot_diameter_px": report["spot_diameter_px"],
        "spot_diameter_um": spot_um,
        "dataset": pinfo["img_key"],
        "coordinates": ("/cells/x, y are spot centres in the WSI's pixels (HEST obsm['spatial']); "
                        "height/width/pixel_size_um/spot_diameter_px describe the stored patches"),
        "wsi_path": str(Path(wsi).resolve()) if wsi is not None and Path(wsi).is_file() else "",
        "wsi_pixel_size_um": float("nan") if wsi_px_um is None else wsi_px_um,
        "platform": "HEST-1k",
        "description": f"HEST-1k patches of sample {sample} ({n} patches of {ph}x{pw} px at "
                       f"{patch_px_um:g} um/px, one per spot, matched by barcode)",
    }
    inputs = [st_h5ad, patches_h5] + ([meta_path] if meta_path else [])
    extra = {"patch_index": (patch_index[keep].astype(np.int64),
                             "row of the spot's patch in the sample's HEST patches file", None)}
    for col, desc in (("array_row", "array row"), ("array_col", "array column"),
                      ("in_tissue", "spot under the tissue")):
        if col in ad.obs.columns:
            vals = np.asarray(ad.obs[col].to_numpy())[keep]
            if col == "in_tissue":
                vals = vals.astype(bool)
            else:
                vals = vals.astype(np.int64)
            extra[col] = (vals, f"{desc} (HEST obs['{col}'])", None)
    return SpotSection(
        sample=sample, spot_ids=obs[keep], x=spatial[keep, 0], y=spatial[keep, 1],
        counts=M[keep], genes=genes, image=image_attrs,
        totals=np.asarray(M.sum(axis=1), dtype=np.float64).ravel()[keep], tissue=tissue,
        extra=extra, inputs=inputs, report=report)


def hest_sample_files(hest_dir, ids: Sequence[str] | None = None) -> list[dict]:
    """Files of HEST ids in a HEST-1k folder: ``st/<id>.h5ad`` and ``patches/<id>.h5`` required,
    ``metadata/<id>.json`` and ``wsis/<id>.tif`` optional. Without ``ids``, every id that has
    both an ``st`` and a ``patches`` file."""
    hest_dir = Path(hest_dir)
    if not hest_dir.is_dir():
        raise InputError("not a folder", file=hest_dir,
                         fix="give the HEST-1k download folder (with st/ and patches/)")
    if not ids:
        st = {p.name.removesuffix(".h5ad") for p in (hest_dir / "st").glob("*.h5ad")}
        pa = {p.stem for p in (hest_dir / "patches").glob("*.h5")}
        ids = sorted(st & pa)
        if not ids:
            raise InputError("no sample with both st/<id>.h5ad and patches/<id>.h5",
                             file=hest_dir, fix="download the 'st' and 'patches' parts of the "
                                                "HEST-1k samples you want")
    out = []
    for i in ids:
        check_sample_name(i, what="HEST id")
        rec = {"id": i, "st": hest_dir / "st" / f"{i}.h5ad",
               "patches": hest_dir / "patches" / f"{i}.h5",
               "metadata": hest_dir / "metadata" / f"{i}.json",
               "wsi": next((p for p in (hest_dir / "wsis" / f"{i}.tif",
                                        hest_dir / "wsis" / f"{i}.tiff") if p.is_file()), None)}
        for k in ("st", "patches"):
            if not rec[k].is_file():
                raise InputError(f"HEST sample {i}: no {k}/{rec[k].name}", file=rec[k],
                                 fix="download that part of the sample, or drop the --id")
        out.append(rec)
    return out


def ingest_hest(hest_dir, out, *, ids: Sequence[str] | None = None,
                patients: dict | None = None, normalize: str = SPOT_DEFAULT,
                scale: float | None = None, genes: str = "all", force: bool = False,
                command=None, show_progress: bool = True) -> dict:
    """Ingest HEST-1k samples from a HEST folder into one new store; returns the write summary
    of :func:`tabst.ingest.spots.write_spot_store`. ``patients`` maps HEST ids to patient
    labels (``/cells/patient``, checked before any sample is read)."""
    from .normalize import resolve_scale
    from .patients import assign_patients
    from .spots import write_spot_store

    resolve_scale(normalize, scale)  # a bad choice fails before reading
    recs = hest_sample_files(hest_dir, ids)
    patient_of = assign_patients([r["id"] for r in recs], patients)
    sections = [read_hest_sample(r["st"], r["patches"], r["id"], metadata=r["metadata"],
                                 wsi=r["wsi"]) for r in recs]
    for sec, p in zip(sections, patient_of):
        sec.patient = p
    return write_spot_store(sections, out, normalize=normalize, scale=scale, genes=genes,
                            force=force, command=command, platform="HEST-1k",
                            show_progress=show_progress)


class HestPatches:
    """Reader for ``/images/<sample>`` of ``kind = "hest-patches"`` (see :mod:`tabst.images`).

    Reads the stored patch ``img[patch_index]`` of each row from the sample's HEST ``.h5``;
    the file is opened on first use and kept open for the reader's lifetime.
    """

    patch_based = True
    row_fields = ("patch_index",)
    has_mask = False

    def __init__(self, store_path: Path, sample: str, attrs: dict):
        from ..images import recorded_path

        self.store_path, self.sample, self.attrs = Path(store_path), sample, attrs
        self.path = recorded_path(store_path, sample, attrs, what="HEST patches file",
                                  remedy="Re-run `tabst ingest hest`.")
        self.key = str(attrs.get("dataset", "img") or "img")
        self._f = None

    def _dataset(self):
        if self._f is None:
            import h5py

            if not self.path.is_file():
                raise InputError("the HEST patches file does not exist", file=self.path,
                                 fix="the store records it relative to its own folder: keep it "
                                     "there, or re-run `tabst ingest hest`")
            try:
                self._f = h5py.File(self.path, "r")
            except OSError as e:
                raise InputError(f"cannot open the HEST patches file ({e})",
                                 file=self.path) from None
            if self.key not in self._f:
                raise InputError(f"no dataset '{self.key}' in the patches file", file=self.path)
        return self._f[self.key]

    def read_patch(self, row: int, fields: dict) -> np.ndarray:
        from ..images import to_uint8_rgb

        pi = fields.get("patch_index")
        ds = self._dataset()
        try:
            pi = int(pi)
        except (TypeError, ValueError):
            raise InputError(f"patch_index '{pi}' is not an integer", file=self.store_path,
                             row=row + 1, column="patch_index") from None
        if not 0 <= pi < ds.shape[0]:
            raise InputError(f"patch_index {pi} is outside the {ds.shape[0]} patches of "
                             f"{self.path.name}", file=self.store_path, row=row + 1,
                             column="patch_index", fix="re-run `tabst ingest hest`")
        return to_uint8_rgb(ds[pi])

    def read_mask_patch(self, row: int, fields: dict):
        return None

    def close(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            finally:
                self._f = None
