"""Images of ``tabst ingest table``: find, header-check and size-check every sample image,
per-cell patch and nucleus mask named by a label table (see :mod:`tabst.ingest.table`)."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..util import progress, relpath_from
from .common import IMAGE_SUFFIXES, check_image_size, find_sample_file

MASK_STEMS = ("{s}_mask", "{s}_masks", "{s}_nuclei", "{s}_nucleus", "{s}_labels", "{s}_label",
              "{s}")


def _bare(e: InputError) -> str:
    """The message of an InputError without its 'file, row, column: ' prefix and fix."""
    text = str(e).split("\n")[0]
    prefix = ", ".join(str(w) for w in (e.file, e.row and f"row {e.row}",
                                          e.column and f"column '{e.column}'") if w)
    return text[len(prefix) + 2:] if prefix and text.startswith(prefix + ": ") else text


def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if len(idx) else None


def _resolve_image(value: str, images: Path | None, labels: Path) -> Path:
    p = Path(value)
    if p.is_absolute():
        return p
    return (images if images is not None else labels.parent) / p


def _plan_images(cells, colmap, labels: Path, images: Path | None, masks: Path | None,
                 pixel_size_um: float, store_dir: Path, show_progress: bool):
    """Find, header-check and size-check every image (and mask); returns the per-sample
    ``/images`` attrs, per-cell patch paths (relative to the store, filled later) and the list
    of files used (for provenance)."""
    import pyarrow.compute as pc

    enc = pc.dictionary_encode(cells["sample"])
    scodes = enc.indices.to_numpy(zero_copy_only=False)
    snames = [str(v) for v in enc.dictionary.to_pylist()]
    n = len(scodes)
    x, y = cells["x"], cells["y"]
    per_cell = False
    sample_img: dict[str, Path] = {}
    if "image" in cells:
        ienc = pc.dictionary_encode(cells["image"])
        icodes = ienc.indices.to_numpy(zero_copy_only=False)
        ivals = ienc.dictionary.to_pylist()
        pairs = np.unique(np.stack([scodes, icodes], 1), axis=0)
        if len(pairs) == len(snames):
            for sc, ic in pairs:
                sample_img[snames[sc]] = _resolve_image(ivals[ic], images, labels)
        elif len(ivals) == n:
            per_cell = True
        else:
            # a sample with several images that are not one per cell
            first_img = np.full(len(snames), -1)
            for i in range(n):
                if first_img[scodes[i]] < 0:
                    first_img[scodes[i]] = icodes[i]
                elif first_img[scodes[i]] != icodes[i]:
                    raise InputError(
                        f"sample '{snames[scodes[i]]}' has several image files "
                        f"('{ivals[first_img[scodes[i]]]}', '{ivals[icodes[i]]}', ...)",
                        file=labels, row=i + 1, column=colmap["image"],
                        fix="give one image per sample, or one patch image per cell")
    else:
        if images is None:
            raise InputError("no images given", file=labels,
                             fix="pass --images DIR with one <sample>.png/.tif per sample, or add "
                                 "an image column to the label table")
        for s in snames:
            p = find_sample_file(images, [s], what="image", sample=s)
            if p is None:
                raise InputError(f"no image for sample '{s}'", file=images,
                                 fix=f"name it {s}.png / {s}.tif (one of "
                                     f"{', '.join(IMAGE_SUFFIXES)}), or name the file in an "
                                     "image column of the label table")
            sample_img[s] = p

    used: list[Path] = []
    plan: dict = {"kind": "per-cell" if per_cell else "file", "samples": {}}
    if per_cell:
        paths = cells["image"].to_pylist()
        dims = set()
        rel = np.empty(n, dtype=object)
        with (progress(unit="images", transient=True) if show_progress else nullcontext()) as bar:
            task = bar.add_task("patch headers", total=n) if bar is not None else None
            for i, v in enumerate(paths):
                p = _resolve_image(v, images, labels)
                try:
                    h = check_image_size(p, what="patch image")
                except InputError as e:
                    raise InputError(f"{_bare(e)}: {p}", file=labels, row=i + 1,
                                     column=colmap["image"], fix=e.fix) from None
                dims.add((h.height, h.width))
                rel[i] = relpath_from(p, store_dir)
                if task is not None and i % 256 == 0:
                    bar.update(task, completed=i)
        folder = images if images is not None else labels.parent
        hh, ww = next(iter(dims)) if len(dims) == 1 else (0, 0)
        for s in snames:
            plan["samples"][s] = {
                "kind": "per-cell", "path": folder, "height": hh, "width": ww, "channels": 0,
                "pixel_size_um": pixel_size_um, "mask_path": _find_mask(masks, s, None),
                "description": f"per-cell patch images of sample {s} (paths in /cells/image)"}
        used.append(folder)
        plan["cell_paths"] = rel
        return plan, used

    W = np.zeros(len(snames))
    H = np.zeros(len(snames))
    for k, s in enumerate(snames):
        p = sample_img[s]
        try:
            hdr = check_image_size(p, what="image")
        except InputError as e:
            row = int(np.flatnonzero(scodes == k)[0]) + 1
            raise InputError(f"{_bare(e)} (image of sample '{s}', first on label row {row})",
                             file=p, fix=e.fix) from None
        H[k], W[k] = hdr.height, hdr.width
        mask = _find_mask(masks, s, p)
        if mask is not None:
            mh = check_image_size(mask, what="mask")
            if mh.channels != 1:
                raise InputError(f"the nucleus mask has {mh.channels} channels", file=mask,
                                 fix="a mask is a single-channel label image (0 = background, "
                                     "k = nucleus k), e.g. a uint16/uint32 TIFF or 16-bit PNG")
            if (mh.height, mh.width) != (hdr.height, hdr.width):
                raise InputError(f"mask is {mh.width}x{mh.height} px but the image {p.name} is "
                                 f"{hdr.width}x{hdr.height}", file=mask,
                                 fix="the mask must have the image's size")
            used.append(mask)
        used.append(p)
        plan["samples"][s] = {
            "kind": "file", "path": p, "mask_path": mask, "height": hdr.height,
            "width": hdr.width, "channels": hdr.channels, "pixel_size_um": pixel_size_um,
            "description": f"H&E image of sample {s}"
                           + ("; nucleus label mask in mask_path (0 = background)" if mask else "")}
    # centroids inside their image
    for f_, lim in (("x", W), ("y", H)):
        v = x if f_ == "x" else y
        bad = (v < 0) | (v >= lim[scodes]) | ~np.isfinite(v)
        i = _first(bad)
        if i is not None:
            s = snames[scodes[i]]
            raise InputError(
                f"centroid {f_}={v[i]:g} is outside the image of sample '{s}' "
                f"({sample_img[s].name}: {int(W[scodes[i]])} x {int(H[scodes[i]])} px)",
                file=labels, row=i + 1, column=colmap[f_],
                fix="x, y must be pixel coordinates in that sample's image (x = column, "
                    "y = row); check the image, the units (not microns?) and x/y order")
    return plan, used


def _find_mask(masks: Path | None, sample: str, image: Path | None) -> Path | None:
    if masks is None:
        return None
    stems = [t.format(s=sample) for t in MASK_STEMS]
    if image is not None:
        stems += [f"{image.stem}_mask", f"{image.stem}_masks", image.stem]
    hits = [find_sample_file(masks, [st], what="mask", sample=sample) for st in stems]
    hits = [h for h in hits if h is not None and (image is None or h.resolve() != image.resolve())]
    if not hits:
        raise InputError(f"no nucleus mask for sample '{sample}'", file=masks,
                         fix=f"name it {sample}_mask.tif or {sample}.png in the masks folder "
                             "(or leave out --masks)")
    return hits[0]
