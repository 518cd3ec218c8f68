"""The feature-set spec of :class:`tabst.dataset.FeatureBuilder`: its defaults, its validation
(:func:`validate_spec`, every error names the key), and what ``auto`` settings resolve to on a
given store (:func:`is_spot_store`, :func:`resolve_position`). The keys are described in
:mod:`tabst.dataset`."""
from __future__ import annotations

import copy

from .errors import TabstError
from .spots import is_spot_store

DEFAULT_FEATURE_SET = {
    "embedding": {"name": "auto", "pca": 64, "standardize": False},
    "metadata": {"tissue": True, "position": "auto"},
    "features": ["morphology"],
    "neighbourhood": None,
    "context": None,
}
_TOP_KEYS = set(DEFAULT_FEATURE_SET)


def validate_spec(spec: dict | None) -> dict:
    """Merge ``spec`` over the defaults and check it; raises :class:`TabstError` naming the key."""
    spec = {} if spec is None else dict(spec)
    unknown = sorted(set(spec) - _TOP_KEYS)
    if unknown:
        raise TabstError(f"feature set: unknown key(s) {', '.join(unknown)}; "
                         f"valid keys: {', '.join(sorted(_TOP_KEYS))}.")
    out = copy.deepcopy(DEFAULT_FEATURE_SET)
    for k, v in spec.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    emb = out["embedding"]
    if emb is not None:
        if not isinstance(emb, dict) or set(emb) - {"name", "pca", "standardize"}:
            raise TabstError("feature set: 'embedding' must be null or "
                             "{name: auto|NAME, pca: int|null, standardize: bool}.")
        _check_type(emb.get("name"), "embedding.name", (str, type(None)), "a name or auto")
        _check_type(emb.get("pca"), "embedding.pca", (int, type(None)),
                    "an integer >= 1 or null")
        _check_type(emb.get("standardize", False), "embedding.standardize", bool,
                    "true or false")
        emb["standardize"] = bool(emb.get("standardize", False))
        if emb.get("pca") is not None and emb["pca"] < 1:
            raise TabstError(f"feature set: key 'embedding.pca' must be an integer >= 1 or null, "
                             f"got {emb['pca']!r}.")
    md = out["metadata"] or {}
    if not isinstance(md, dict) or set(md) - {"tissue", "position"}:
        raise TabstError("feature set: 'metadata' must be {tissue: bool, position: bool|auto}.")
    _check_type(md.get("tissue", False), "metadata.tissue", bool, "true or false")
    pos = md.get("position", False)
    if pos != "auto":
        _check_type(pos, "metadata.position", bool,
                    "true, false or auto (on for cell stores, off for spot stores)")
    out["metadata"] = {"tissue": bool(md.get("tissue", False)),
                       "position": pos if pos == "auto" else bool(pos)}
    feats = out["features"] or []
    if isinstance(feats, str):
        feats = [feats]
    _check_type(feats, "features", (list, tuple), "a list of feature-set names")
    out["features"] = [str(f) for f in feats]
    out["neighbourhood"] = _knn_section(out["neighbourhood"], "neighbourhood", 8, 1,
                                        "averages embedding PCs", emb)
    out["context"] = _knn_section(out["context"], "context", 16, 0,
                                  "holds the k nearest cells' embedding PCs", emb)
    return out


def _knn_section(value, key: str, k_default: int, c_min: int, what: str, emb):
    """``neighbourhood`` / ``context``: null or ``{k: int >= 1, components: int >= c_min}``
    (components default 16); embedding PCs need an ``embedding`` section."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"k", "components"}:
        raise TabstError(f"feature set: '{key}' must be null or {{k: int, components: int}} "
                         f"(it {what}).")
    for k in ("k", "components"):
        _check_type(value.get(k, 1), f"{key}.{k}", int, f"an integer >= {c_min}")
    out = {"k": int(value.get("k", k_default)), "components": int(value.get("components", 16))}
    if out["k"] < 1 or out["components"] < c_min:
        raise TabstError(f"feature set: {key}.k must be >= 1 and {key}.components >= {c_min}.")
    if emb is None and out["components"]:
        raise TabstError(f"feature set: '{key}' {what}, so it needs an 'embedding' section"
                         + (f" (or {key}.components: 0)." if c_min == 0 else "."))
    return out


def _check_type(value, key: str, types, words: str) -> None:
    """Raise a :class:`TabstError` naming ``key`` unless ``value`` is one of ``types`` (a bool is
    not an integer here)."""
    types = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise TabstError(f"feature set: key '{key}' must be {words}, got {value!r}.")


def resolve_position(f, setting) -> tuple[bool, str]:
    """``metadata.position`` → (use it, why): ``auto`` = off on spot stores, on otherwise."""
    if setting != "auto":
        return bool(setting), "as configured"
    if is_spot_store(f):
        return False, ("auto: off on a spot store (section x/y is a tissue-layout prior, not "
                       "image evidence); set metadata.position: true to use it")
    return True, "auto: on for a cell store"
