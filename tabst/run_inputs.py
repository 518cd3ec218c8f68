"""What a ``tabst compare`` run takes from the store besides the cells: which embedding, the
feature-set spec that uses it, the column of regions for the cell-wise averages, the column the
folds are made by, and whether the store's expression is on the scale the preset expects."""
from __future__ import annotations

import numpy as np

from .errors import StoreError
from .store import read_strings

#: /cells/group values that name a train/validation/test split (Crunch, tables), not patients
SPLIT_WORDS = {"train", "training", "val", "valid", "validation", "test", "testing", "holdout",
               "heldout", "held-out", "dev", "calibration", "public", "private"}
#: ingest option that writes each /expression/X transform (for the expect_transform warning)
TRANSFORM_FLAGS = {"log1p(count)": "--normalize log1p",
                   "log1p(count/total*10000)": "--normalize cp10k",
                   "log1p(count/total*100)": "--normalize log1p-cpt", "count": "--normalize none"}


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
    match = [n for n in embs  # patch sizes compared as text: "spot" or a number of px
             if str(f["embeddings"][n].attrs.get("layer", "")) == str(e.get("layer"))
             and str(f["embeddings"][n].attrs.get("patch_size", "")).strip()
             == str(e.get("patch_size", "")).strip()]
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


AUTO_GROUP_COLUMNS = ("patient", "group")


def resolve_group_column(f, cfg: dict, rows, samples) -> tuple[str | None, str]:
    """The ``/cells`` column the folds keep together, and why, in words.

    ``group_column`` as configured; ``null`` = sample; ``auto`` = the first of
    ``/cells/patient`` (spot ingest's ``--patient``) and ``/cells/group`` that names patients:
    every sample (of ``rows``) in exactly one non-empty value, at least two values, and not only
    split words (Crunch and table stores keep train/validation/test in ``group``, which is no
    fold unit). Otherwise the folds are by sample, and the reason says why."""
    col = cfg["group_column"]
    if col != "auto":
        return (col or None), (f"/cells/{col} (group_column)" if col else
                               "sample (group_column: null)")
    samples = np.asarray(samples).astype(str)
    whys = []
    for name in AUTO_GROUP_COLUMNS:
        if f"cells/{name}" not in f:
            continue
        g = np.asarray(read_strings(f[f"cells/{name}"])).astype(str)[rows]
        why = _not_patients(name, g, samples)
        if why is None:
            return name, (f"/cells/{name} (group_column auto: {len(set(g.tolist()))} groups "
                          f"over {len(set(samples.tolist()))} samples)")
        whys.append(why)
    if not whys:
        whys = [f"the store has no {' or '.join(f'/cells/{c}' for c in AUTO_GROUP_COLUMNS)}"]
    return None, f"sample (group_column auto: {'; '.join(whys)})"


def _not_patients(name: str, g: np.ndarray, samples: np.ndarray) -> str | None:
    """Why ``/cells/<name>`` (values ``g`` of the evaluated rows) cannot be the fold unit, or
    None when it can."""
    values = sorted(set(g.tolist()))
    if any(not v.strip() for v in values):
        return f"some rows have an empty /cells/{name}"
    if {v.lower() for v in values} & SPLIT_WORDS:  # any split word: a split, not patients
        return f"/cells/{name} holds split labels ({', '.join(values)}), not patients"
    if len(values) < 2:
        return f"/cells/{name} is {values[0]!r} for every row: nothing to fold by"
    first: dict = {}
    for s_, v in zip(samples.tolist(), g.tolist()):
        if first.setdefault(s_, v) != v:
            return (f"/cells/{name} puts sample {s_!r} in both {first[s_]!r} and {v!r}, so it "
                    "is not a patient of each section")
    return None


def transform_warning(f, cfg: dict) -> str | None:
    """A warning when the store's ``/expression/X`` ``transform`` differs from the preset's
    ``expect_transform`` (its numbers would then not compare with the published ones)."""
    want = cfg.get("expect_transform")
    if not want:
        return None
    have = f["expression/X"].attrs.get("transform", "")
    have = have.decode() if isinstance(have, bytes) else str(have)
    if have == want:
        return None
    flag = TRANSFORM_FLAGS.get(want)
    how = (f"re-ingest with `tabst ingest st|visium|hest {flag}`" if flag else
           f"re-ingest so that /expression/X is {want}")
    return (f"the {cfg['name']} preset expects /expression/X = {want}, but this store holds "
            f"{have or 'values of unstated transform'}: its scores are not comparable with the "
            f"published ones; {how}.")
