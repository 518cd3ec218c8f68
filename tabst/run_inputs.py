"""What a ``tabst compare`` run takes from the store besides the cells: which embedding, the
feature-set spec that uses it, and the column of regions for the cell-wise averages."""
from __future__ import annotations

from .errors import StoreError


def resolve_embedding(f, cfg: dict) -> str | None:
    """Name of the ``/embeddings/<name>`` this run uses (see ``embedding`` in the config)."""
    embs = sorted(f["embeddings"].keys()) if "embeddings" in f else []
    feats = cfg.get("features") or {}
    if "embedding" in feats and feats["embedding"] is None:
        return None
    if isinstance(feats.get("embedding"), dict) and feats["embedding"].get("name") not in (None,
                                                                                        "auto"):
        return str(feats["embedding"]["name"])
    want = cfg.get("embedding")
    if want:
        if want not in embs:
            raise StoreError(f"{f.filename}: no embedding {want!r} (config key 'embedding'). The "
                             f"store has: {', '.join(embs) or 'none'}. Compute it with "
                             "`tabst embed`, or --set embedding=NAME.")
        return want
    complete = [n for n in embs if bool(f["embeddings"][n].attrs.get("complete", True))]
    if len(complete) <= 1:
        return complete[0] if complete else None
    embs = complete
    e = cfg.get("embed") or {}
    match = [n for n in embs
             if str(f["embeddings"][n].attrs.get("layer", "")) == str(e.get("layer"))
             and int(f["embeddings"][n].attrs.get("patch_size", -1))
             == int(e.get("patch_size", -2))]
    if len(match) == 1:
        return match[0]
    raise StoreError(f"{f.filename}: several embeddings ({', '.join(embs)}) and the config does "
                     "not say which to use. Pass --set embedding=NAME (config key 'embedding').")


def feature_spec(cfg: dict, embedding: str | None) -> dict:
    """The FeatureBuilder spec of the run: the config's ``features`` (validated by
    :func:`tabst.dataset.validate_spec`) with ``embedding.name: auto`` replaced by the embedding
    chosen by :func:`resolve_embedding`."""
    from .dataset import validate_spec

    spec = validate_spec(cfg.get("features") or {})
    if spec["embedding"] is not None and spec["embedding"].get("name") in (None, "auto"):
        if embedding is None:
            raise StoreError("the feature set uses an image embedding but the store has none in "
                             "/embeddings. Run `tabst embed STORE`, or set features.embedding: "
                             "null (--set features.embedding=null).")
        spec["embedding"]["name"] = embedding
    return spec


def resolve_region_column(f, cfg) -> str | None:
    """The ``/cells`` column of regions for the cell-wise averages: ``region_column`` as
    configured; ``auto`` = ``/cells/region`` when the store has one (a Crunch store does), else
    none (region = sample)."""
    col = cfg["region_column"]
    if col == "auto":
        return "region" if "cells/region" in f else None
    return col or None
