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

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
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
    sample = sample or st_h5ad.name.removesuffix(".h5ad")
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
    spatial = np.asarray(ad.obsm["spatial"], dtype=np.float64)
    obs = np.asarray([str(b) for b in ad.obs_names], dtype=object)
    if len(set(obs.tolist())) != len(obs):
        raise InputError("barcodes (obs_names) are not unique", file=st_h5ad)
    X = ad.X
    M = sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr()
    if M.nnz and M.data.min() < 0:
        raise InputError("negative values in X: expected raw counts", file=st_h5ad,
                         fix="HEST's st/*.h5ad hold raw counts in X")
    non_integer = bool(M.nnz and not np.allclose(M.data, np.round(M.data)))
    genes = [str(g) for g in ad.var_names]
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
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON ({e})", file=meta_path) from None
    ps = pinfo["attrs"].get("pixel_size")  # written by some HEST versions; else HEST's 0.5
    patch_px_um = (float(ps) if isinstance(ps, (int, float, np.number)) and float(ps) > 0
                   else HEST_PATCH_PIXEL_SIZE_UM)
    spot_um = meta.get("spot_diameter")
    try:
        spot_um = float(spot_um) if spot_um is not None else float("nan")
    except (TypeError, ValueError):
        spot_um = float("nan")
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
        "wsi_pixel_size_um": float(meta.get("pixel_size_um_estimated", float("nan")) or "nan"),
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
                normalize: str = "log1p-cpt", scale: float = 100.0, genes: str = "all",
                force: bool = False, command=None, show_progress: bool = True) -> dict:
    """Ingest HEST-1k samples from a HEST folder into one new store; returns the write summary
    of :func:`tabst.ingest.spots.write_spot_store`."""
    from .spots import write_spot_store

    recs = hest_sample_files(hest_dir, ids)
    sections = [read_hest_sample(r["st"], r["patches"], r["id"], metadata=r["metadata"],
                                 wsi=r["wsi"]) for r in recs]
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
