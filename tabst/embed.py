"""`tabst embed`: one patch per cell -> ``/embeddings/<name>`` (+ ``/features/morphology``).

Pipeline: :class:`tabst.patch_batches.PatchBatches` crops the patches of a fixed block of rows
from the sample images (:mod:`tabst.images`, :mod:`tabst.patches`) and computes their
interpretable features (:mod:`tabst.morphology`), in this process on the CPU or in DataLoader
workers beside a GPU; the encoder (:mod:`tabst.encoders`) runs under ``torch.inference_mode``
in channels_last (CUDA + float16 autocast when present) and the rows are written in order.

Resumable and bit-stable
------------------------
Rows are processed in fixed batches ``[k*B, (k+1)*B)`` (``B`` = batch size, recorded; a resumed
run reuses the recorded one), so every row is always computed in the same batch and the final
array of an interrupted + resumed run equals an uninterrupted one bit for bit (same device).
The output datasets are allocated in full up front (HDF5 early allocation, NaN-filled) and the
file is flushed, so later writes touch only raw data; after each batch the rows are written,
flushed, then the attr ``rows_done`` advances and is flushed. kill -9 at any point loses at most
the batch in flight; rerunning the same command resumes at ``rows_done``. ``complete=True`` is set
only at the end. Rerunning with different settings under the same name is refused unless
``force=True`` (which starts that dataset afresh).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from . import __version__
from .embed_loop import KILL_ENV, SimulatedInterruption, run_batches  # noqa: F401 (API)
from .errors import InputError, StoreError, TabstError
from .morphology import (
    DEFAULT_K,
    DEFAULT_RADIUS_PX,
    DEFAULT_RADIUS_UM,
    FEATURES_NAME,
    feature_layout,
    neighbourhood_features,
)
from .patch_batches import PatchBatches, _create_rows_dataset, default_workers
from .patches import parse_patch_size, sample_patch_sizes
from .spots import is_spot_images

CENTRE_CONVENTION = ("patch rows floor(y)-P//2 .. floor(y)-P//2+P-1 (same for x); the pixel "
                     "containing (x, y) is at index P//2; zero outside the image")

# ---------------------------------------------------------------------------------------------
# naming, settings, store datasets
# ---------------------------------------------------------------------------------------------

def weights_tag(weights: str, sha256: str = "") -> str:
    w = str(weights)
    if w in ("random", "imagenet", "hub"):
        return w
    if w.startswith("imagenet:"):
        return "imagenet-" + w.split(":", 1)[1].lower()
    if w.startswith(("hf-hub:", "hf_hub:")):
        return "hub-" + "".join(c if c.isalnum() else "-" for c in w.split(":", 1)[1].lower())
    return f"file-{sha256[:8]}" if sha256 else "file"


def default_name(encoder: str, layer: str | None, patch_size, resize=None, weights="imagenet",
                 sha256: str = "") -> str:
    """E.g. ``resnet50_layer3_p32_imagenet``, ``resnet18_layer4_p32r224_random``,
    ``uni2h_p112umr224_hub`` (transformers have no layer in the name)."""
    from .encoders import resolve_spec, slug

    spec = resolve_spec(encoder)
    r = f"r{int(resize)}" if resize else ""
    cut = f"_{layer or spec.default_layer}" if spec.layers else ""
    return f"{slug(spec)}{cut}_p{patch_size}{r}_{weights_tag(weights, sha256)}"


def _versions(encoder: bool = True) -> dict:
    import scipy
    import skimage

    out = {"tabst": __version__, "numpy": np.__version__}
    if encoder:
        import importlib.metadata as md

        import torch
        import torchvision

        out.update(torch=torch.__version__, torchvision=torchvision.__version__)
        for pkg in ("timm", "safetensors", "huggingface_hub", "transformers"):
            try:
                out[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                pass
    else:
        out.update(scikit_image=skimage.__version__, scipy=scipy.__version__)
    return out


def _read_settings(ds) -> dict:
    try:
        return json.loads(ds.attrs.get("settings", "{}"))
    except (TypeError, ValueError):
        return {}


def _diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys
                     if old.get(k) != new.get(k))


def _resolve_device(device: str):
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TabstError("--device cuda, but torch sees no CUDA GPU here. Use --device cpu (or "
                         "auto), or install a CUDA build of torch.")
    if device not in ("cpu", "cuda"):
        raise TabstError(f"--device must be auto, cpu or cuda, got {device!r}")
    return device


# ---------------------------------------------------------------------------------------------
# the pass
# ---------------------------------------------------------------------------------------------

def embed_store(store_path, encoder: str = "resnet50", layer: str | None = None,
                patch_size="auto", resize: int | None = None, weights: str = "auto",
                weights_sha256: str | None = None, encoder_kwargs: dict | None = None,
                batch_size: int | None = None,
                workers: int | None = None, device: str = "auto", name: str | None = None,
                features: bool = True, force: bool = False, per_cell_fit: str = "crop",
                cluster: str | None = None, show_progress: bool = True,
                _stop_after_batches: int | None = None) -> str:
    """Embed one patch per cell into ``/embeddings/<name>`` (and ``/features/morphology``).

    Parameters
    ----------
    store_path : the tabst store (HDF5), modified in place.
    encoder : a name of :data:`tabst.encoders.REGISTRY` (``resnet50``, ``uni2h``, ...) or
        ``timm:<architecture>``.
    layer : CNN cut point (``layer3`` default, ``layer4``); transformers: ``final``.
    patch_size : pixels (int), ``"spot"`` (each sample's ``spot_diameter_px``; resized to the
        median when samples differ and no ``resize`` is given), ``"<X>um"`` (X µm at each
        sample's pixel size) or ``"auto"`` (``spot`` on spot stores, :mod:`tabst.spots`, else 32).
    resize : rescale every patch to ``resize`` px before the encoder (e.g. 224); None = the
        encoder's input size when it has one (224 for the vision transformers), else no resize.
    weights : ``"auto"`` (torchvision ImageNet / the registered hub repo), ``"imagenet"``,
        ``"hub"``, ``"hf-hub:<repo>"``, ``"random"`` (explicit only) or a local file / folder.
    weights_sha256 : expected sha256 of a weights file.
    encoder_kwargs : builder arguments over the registered ones (timm models).
    batch_size : rows per batch (fixed batch boundaries make resumes bit-identical); None =
        :func:`tabst.encoders.batching.auto_batch_size`.
    workers : DataLoader worker processes decoding patches (None: :func:`default_workers`:
        none on the CPU, some with CUDA).
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``.
    name : dataset name under ``/embeddings`` (default :func:`default_name`).
    features : also compute ``/features/morphology`` in the same pass (unless complete already).
    force : restart a dataset whose recorded settings differ (else that is refused).
    per_cell_fit : ``"crop"`` or ``"resize"`` for per-cell patch images (:func:`fit_patch`).
    cluster : ``local``, ``local:N`` or a Dask scheduler address: embed the shards on its
        workers (:mod:`tabst.embed_dask`; same result bit for bit). None: this process.

    Returns
    -------
    str : the embedding's name.
    """
    return run_pipeline(store_path, encoder=encoder, layer=layer, patch_size=patch_size,
                        resize=resize, weights=weights, weights_sha256=weights_sha256,
                        encoder_kwargs=encoder_kwargs, batch_size=batch_size, workers=workers,
                        device=device, name=name,
                        features=features, force=force, per_cell_fit=per_cell_fit,
                        cluster=cluster, show_progress=show_progress,
                        _stop_after_batches=_stop_after_batches)


def run_pipeline(store_path, *, encoder: str | None, cluster: str | None = None,
                 **options) -> str | None:
    """Shared pass behind :func:`embed_store` and :func:`tabst.morphology.compute_features`.

    ``encoder=None`` computes features only (then a differing complete feature set is refused
    without ``force``; with an encoder it is kept and a note printed). The store's lock
    (:func:`tabst.outputs.output_lock`) is held throughout, so a second tabst process writing
    the same store stops at once with the pid of this one. ``cluster``: see
    :func:`tabst.cluster.cluster_client` (started once the store is locked).
    """
    from .cluster import cluster_client, parse_cluster
    from .outputs import lock_if_possible

    parse_cluster(cluster)  # a bad value fails before anything starts
    if not Path(store_path).is_file():  # the usual "no such store" error; no lock file beside it
        return _pipeline(store_path, encoder=encoder, **options)
    with lock_if_possible(store_path, "store"), cluster_client(cluster) as client:
        return _pipeline(store_path, encoder=encoder, client=client, **options)


def _pipeline(store_path, *, encoder: str | None, layer: str | None = None, patch_size="auto",
              resize=None, weights: str = "auto", weights_sha256=None, encoder_kwargs=None,
              batch_size: int | None = None, workers=None, device: str = "auto", name=None,
              features: bool = True, force: bool = False, per_cell_fit: str = "crop",
              show_progress: bool = True, feature_params: dict | None = None,
              client=None, _stop_after_batches=None) -> str | None:
    from rich.console import Console

    from .images import reader_class, sample_attrs
    from .store import open_store, read_strings

    t_start = time.perf_counter()
    store_path = Path(store_path)
    console = Console(stderr=True, quiet=not show_progress)
    if per_cell_fit not in ("crop", "resize"):
        raise TabstError(f"--per-cell-fit must be crop or resize, got {per_cell_fit!r}")
    if batch_size is not None and batch_size < 1:
        raise TabstError(f"--batch-size must be >= 1, got {batch_size}")
    if resize is not None and int(resize) < 1:
        resize = None
    spec = None
    if encoder is None and batch_size is None:
        batch_size = 256
    if encoder is not None:  # unknown names / layers fail before any pixel is read
        from .encoders import check_layer, resolve_spec

        spec = resolve_spec(encoder, encoder_kwargs)
        layer = check_layer(spec, layer)
        if resize is None and spec.input_size:
            resize = int(spec.input_size)
    fp = dict(radius_px=DEFAULT_RADIUS_PX, radius_um=DEFAULT_RADIUS_UM, k=DEFAULT_K)
    fp.update(feature_params or {})
    ps = parse_patch_size(patch_size)

    # ---- read what the pass needs (then close: workers must not inherit an open handle) ----
    with open_store(store_path) as f:
        if "cells/cell_id" not in f:
            raise StoreError(f"{store_path}: no /cells in the store; run `tabst ingest` first.")
        n = int(f["cells/cell_id"].shape[0])
        if n == 0:
            raise StoreError(f"{store_path}: the store has no cells.")
        sample_col = read_strings(f["cells/sample"])
        samples, codes = np.unique(sample_col, return_inverse=True)
        samples = [str(s) for s in samples]
        codes = codes.astype(np.int32)
        x = f["cells/x"][()].astype(np.float64)
        y = f["cells/y"][()].astype(np.float64)
        images = {s: sample_attrs(f, s) for s in samples}
        spot_store = is_spot_images(images, f.attrs.get("provenance", ""))
        row_values = {}
        for s in samples:
            cls = reader_class(str(images[s].get("kind", "file") or "file"))
            for fld in getattr(cls, "row_fields", ()):
                if fld not in row_values:
                    if f"cells/{fld}" not in f:
                        raise StoreError(f"{store_path}: images of sample {s!r} are per-cell "
                                         f"patches but /cells/{fld} is missing; re-run the ingest.")
                    ds = f[f"cells/{fld}"]
                    row_values[fld] = read_strings(ds) if ds.dtype.kind == "O" else ds[()]
        if ps == "auto":
            ps = "spot" if spot_store else 32
            console.print(f"--patch-size auto: {ps}" + (" (spot store: each sample's spot "
                          "diameter)" if spot_store else " px (cell store)"))
        sizes_by_sample = sample_patch_sizes(ps, images)
        has_mask = any(str(a.get("mask_path", "") or "") or str(a.get("mask_element", "") or "")
                       for a in images.values())
        feat_old_attrs = dict(f[f"features/{FEATURES_NAME}"].attrs) \
            if f"features/{FEATURES_NAME}" in f else None
        feat_old_settings = _read_settings(f[f"features/{FEATURES_NAME}"]) \
            if feat_old_attrs is not None else None

    sizes = [sizes_by_sample[s] for s in samples]
    from .images import resolve_path

    for s in samples:  # fail fast, before any work, on image files that are not there
        a = images[s]
        for key, what in (("path", "image"), ("mask_path", "nucleus mask")):
            rel = str(a.get(key, "") or "")
            if str(a.get("kind", "file") or "file") == "file" and rel \
                    and not resolve_path(store_path, rel).exists():
                raise InputError(f"the {what} of sample {s!r} does not exist",
                                 file=resolve_path(store_path, rel),
                                 fix="the store records image paths relative to its own folder: "
                                     "keep the images beside the store, or re-run the ingest")
    if encoder is not None and resize is None and isinstance(ps, str) and len(set(sizes)) > 1:
        resize = int(np.median(sizes))  # same tissue per patch, one input size
        what = "spot diameters" if ps == "spot" else f"{ps} patches"
        console.print(f"{what} differ between samples ({min(sizes)}-{max(sizes)} px): "
                      f"each patch is resized to the median, {resize} px.")
    if encoder is not None and resize is None and len(set(sizes)) > 1:
        raise TabstError(f"--patch-size {ps}: samples have different patch sizes "
                         f"({dict(sorted(sizes_by_sample.items()))}); the encoder needs equal "
                         "sizes. Add --resize N (e.g. --resize 224).")
    pixel_size = {s: float(images[s].get("pixel_size_um", float("nan"))) for s in samples}

    # ---- embedding plan ----
    emb = None  # dict(name, settings, start, info) when the encoder must run
    dev = model = None
    if encoder is not None:
        from .encoders import build_encoder
        from .encoders.batching import auto_batch_size, precision_of

        if client is None:
            dev = _resolve_device(device)
        else:
            from .embed_dask import cluster_device

            dev = cluster_device(client, device)
        precision = precision_of(spec, dev)
        if str(weights) == "auto":  # recorded as what it means (a resume of older runs agrees)
            weights = "imagenet" if spec.family == "torchvision" else "hub"
        # Build the model first: it resolves the weights (and their hash) for name + settings.
        model, info = build_encoder(encoder, layer, weights, weights_sha256, encoder_kwargs)
        if batch_size is None:
            if client is not None and dev == "cuda":  # measured on a worker's GPU
                from .embed_dask import worker_batch_size

                batch_size = worker_batch_size(client, encoder, layer, weights, encoder_kwargs,
                                               spec, resize or max(sizes))
            else:
                batch_size = auto_batch_size(model, spec, dev, resize or max(sizes))
        name = name or default_name(encoder, layer, ps, resize, weights, info.weights_sha256)
        settings = {"encoder": info.encoder, "layer": layer, "weights": info.weights,
                    "weights_id": info.weights_id, "weights_sha256": info.weights_sha256,
                    "patch_size": ps, "patch_size_px": sizes_by_sample,
                    "resize": int(resize or 0), "per_cell_fit": per_cell_fit,
                    "normalisation": info.normalisation, "device": dev, "precision": precision,
                    "n_cells": n}
        if spec.family != "torchvision":  # (resnet settings as before: their runs resume)
            settings.update(encoder_kwargs=dict(encoder_kwargs or {}),
                            pooling=info.extra["pooling"])
        start_emb, bs = 0, int(batch_size)
        with open_store(store_path) as f:
            if f"embeddings/{name}" in f:
                ds = f[f"embeddings/{name}"]
                old = _read_settings(ds)
                if old != settings and not force:
                    raise TabstError(
                        f"/embeddings/{name} exists with other settings ({_diff(old, settings)}). "
                        "Pass --force to recompute it, or choose another --name.")
                if old == settings and not force:
                    if bool(ds.attrs.get("complete", False)):
                        console.print(f"/embeddings/{name} is already complete: nothing to embed.")
                        start_emb = n
                    else:
                        start_emb = int(ds.attrs.get("rows_done", 0))
                        bs = int(ds.attrs.get("batch_size", bs))
                        if bs != batch_size:
                            console.print(f"resuming with the recorded batch size {bs} "
                                          f"(not {batch_size}) so the result stays identical.")
                        console.print(f"resuming /embeddings/{name} at row {start_emb:,} of {n:,}.")
                    emb = dict(name=name, settings=settings, start=start_emb, info=info,
                               fresh=False)
        batch_size = bs
        if emb is None:
            emb = dict(name=name, settings=settings, start=0, info=info, fresh=True)
        if emb["start"] >= n:
            emb = None

    # ---- feature plan ----
    feat = None
    if features:
        with_um = any(math.isfinite(v) and v > 0 for v in pixel_size.values())
        names, groups, units, ncols = feature_layout(has_mask, with_um, fp["radius_px"],
                                                     fp["radius_um"], fp["k"],
                                                     neighbourhood=not spot_store)
        fsettings = {"patch_size_px": sizes_by_sample, "per_cell_fit": per_cell_fit,
                     "names": names, "n_cells": n, **fp}
        start_feat, fresh = 0, True
        if feat_old_attrs is not None:
            same = feat_old_settings == fsettings
            complete = bool(feat_old_attrs.get("complete", False))
            if same and complete and not force:
                start_feat, fresh = n, False
                if encoder is None:
                    console.print(f"/features/{FEATURES_NAME} is already complete.")
            elif same and not force:
                start_feat, fresh = int(feat_old_attrs.get("rows_done", 0)), False
                fbs = int(feat_old_attrs.get("batch_size", batch_size))
                if encoder is None or emb is None:
                    batch_size = fbs
            elif complete and not force:
                if encoder is None:
                    raise TabstError(
                        f"/features/{FEATURES_NAME} exists with other settings "
                        f"({_diff(feat_old_settings or {}, fsettings)}). Pass --force to "
                        "recompute it.")
                console.print(f"keeping the existing /features/{FEATURES_NAME} (computed with "
                              f"other settings: {_diff(feat_old_settings or {}, fsettings)}); "
                              "recompute with `--force`.")
                start_feat, fresh = n, False
        if start_feat < n:
            feat = dict(settings=fsettings, names=names, groups=groups, units=units,
                        start=start_feat, fresh=fresh)

    if emb is None and feat is None:
        return name
    if emb is not None and emb["start"] % batch_size:
        emb["start"] -= emb["start"] % batch_size  # only on a hand-edited marker
    start = min(v["start"] for v in (emb, feat) if v is not None)
    start -= start % batch_size
    first_batch = start // batch_size
    n_batches = math.ceil(n / batch_size)

    # ---- allocate / mark the outputs (flushed before any row is written) ----
    from .outputs import check_free_space, mark_writing

    mark_writing(store_path)
    need = 0  # float32 bytes of the datasets allocated now
    if emb is not None and emb["fresh"]:
        need += n * emb["info"].dim * 4
    if feat is not None and feat["fresh"]:
        need += n * len(feat["names"]) * 4
    check_free_space(store_path.resolve().parent, need, store_path)
    with open_store(store_path, "r+") as f:
        if emb is not None:
            info = emb["info"]
            if emb["fresh"]:
                ds = _create_rows_dataset(f, "embeddings", emb["name"], n, info.dim,
                                          chunk_rows=max(1, (1 << 20) // (4 * info.dim)))
                rnd = info.weights == "random"
                ex = info.extra
                what = {"spot": "spot-diameter"}.get(ps, f"{ps[:-2]} µm" if isinstance(ps, str)
                                                      else f"{ps}-px")
                desc = (f"{info.encoder} ({ex['family']} {ex['arch']}), {ex['pooling']}, one "
                        f"{what} patch per cell" + (f" resized to {resize} px" if resize else "")
                        + f", weights {info.weights_id}"
                        + (" (RANDOM WEIGHTS: not a trained image encoder)" if rnd else ""))
                from .store import now_utc, set_attr

                meta = {"description": desc, "encoder": info.encoder, "layer": info.layer,
                        "dim": info.dim, "pooling": ex["pooling"], "family": ex["family"],
                        "arch": ex["arch"], "encoder_kwargs": json.dumps(ex["kwargs"]),
                        "input_size": int(ex["input_size"]), "licence": ex["licence"],
                        "hub": ex["hub"], "gated": bool(ex["gated"]), "model_card": ex["card"],
                        "weights": info.weights, "weights_id": info.weights_id,
                        "weights_sha256": info.weights_sha256, "random_weights": rnd,
                        "weights_seed": 0 if rnd else -1,
                        "patch_size": ps if isinstance(ps, str) else int(ps),
                        "patch_size_px": sizes_by_sample, "resize": int(resize or 0),
                        "per_cell_fit": per_cell_fit, "centre": CENTRE_CONVENTION,
                        "normalisation": info.normalisation, "versions": _versions(),
                        "device": emb["settings"]["device"],
                        "precision": emb["settings"]["precision"], "batch_size": batch_size,
                        "settings": emb["settings"], "created_utc": now_utc(),
                        "rows_done": 0, "complete": False}
                for k, v in meta.items():
                    set_attr(ds, k, v)
        if feat is not None and feat["fresh"]:
            from .store import now_utc, set_attr

            ds = _create_rows_dataset(f, "features", FEATURES_NAME, n, len(feat["names"]),
                                      chunk_rows=4096)
            meta = {"description": "interpretable per-cell features (tabst.morphology): nucleus "
                                   "shape from the mask, H&E stain from rgb2hed, neighbourhood "
                                   "density; NaN = not available",
                    "names": feat["names"], "groups": feat["groups"], "units": feat["units"],
                    "patch_size_px": sizes_by_sample, "per_cell_fit": per_cell_fit,
                    "radius_px": fp["radius_px"], "radius_um": fp["radius_um"], "k": fp["k"],
                    "batch_size": batch_size, "settings": feat["settings"],
                    "versions": _versions(encoder=False), "created_utc": now_utc(),
                    "rows_done": 0,
                    "complete": False}
            for k, v in meta.items():
                set_attr(ds, k, v)
        f.flush()

    neigh = None
    if feat is not None:
        neigh = neighbourhood_features(x, y, sample_col, pixel_size, fp["radius_px"],
                                       fp["radius_um"], fp["k"])[:, ncols]
    dataset = PatchBatches(store_path, samples=samples, codes=codes, x=x, y=y, images=images,
                           sizes=sizes, resize=resize, fit=per_cell_fit, batch_size=batch_size,
                           want_patches=emb is not None,
                           feature_cols=feat["names"] if feat is not None else None,
                           neigh=neigh, row_values=row_values)
    label = f"embedding {emb['name']}" if emb is not None else f"features/{FEATURES_NAME}"
    if client is not None:
        from .embed_dask import model_recipe, run_shards

        recipe = None if emb is None else model_recipe(
            model, emb["info"], encoder=encoder, layer=layer, weights=weights,
            sha256=weights_sha256, kwargs=encoder_kwargs, device=dev,
            precision=emb["settings"]["precision"])
        run_shards(client, store_path, dataset, range(first_batch, n_batches), n, recipe=recipe,
                   emb_name=emb["name"] if emb is not None else None, feat=feat is not None,
                   show_progress=show_progress, label=label, t_start=t_start)
        return name
    run_batches(store_path, dataset, range(first_batch, n_batches), n, start,
                 model=model if emb is not None else None, dev=dev,
                 emb_name=emb["name"] if emb is not None else None, feat=feat is not None,
                 precision=emb["settings"]["precision"] if emb is not None else "float32",
                 workers=(default_workers(dev or "cpu", encoder=emb is not None)
                          if workers is None else int(workers)),
                 show_progress=show_progress, stop_after=_stop_after_batches,
                 t_start=t_start, label=label)
    return name
