"""Whether a store's rows are spots (Visium, legacy ST, HEST-1k) or cells, in one place.

A store is spot-based when the ingest recorded a spot platform in the root ``provenance``
(``tabst ingest st`` / ``visium`` / ``hest`` write ``platform``) or, for stores without one,
when every sample's ``/images/<sample>`` has a finite ``spot_diameter_px`` (cell-level
ingests write NaN). Spot stores change defaults (patch size = the spot, no position prior, no
cell-density features on the regular spot grid) and the words of every report.
"""
from __future__ import annotations

import json
import math

SPOT_PLATFORMS = frozenset({"st", "visium", "visium hd", "hest-1k", "hest", "spots"})


def _number(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def diameters(images: dict) -> dict:
    """``{sample: spot_diameter_px}`` of the samples whose ``/images`` attrs (a mapping sample
    -> attrs, e.g. ``f["images"]`` or plain dicts) record a finite one."""
    out = {}
    for s, a in images.items():
        attrs = getattr(a, "attrs", a)
        d = _number(attrs.get("spot_diameter_px"))
        if d is not None:
            out[str(s)] = d
    return out


def platform(provenance) -> str:
    """The ingest platform named in a provenance (JSON text or dict), ``""`` if none."""
    if isinstance(provenance, (str, bytes)):
        try:
            provenance = json.loads(provenance or "{}")
        except ValueError:
            return ""
    if not isinstance(provenance, dict):
        return ""
    return str(provenance.get("platform") or "")


def is_spot_platform(name: str) -> bool:
    return str(name).strip().lower() in SPOT_PLATFORMS


def is_spot_images(images: dict, provenance=None) -> bool:
    """Spot-based? From the provenance's platform when it names one, else every sample has a
    spot diameter."""
    p = platform(provenance) if provenance is not None else ""
    if p:
        return is_spot_platform(p)
    return bool(images) and len(diameters(images)) == len(images)


def is_spot_store(f) -> bool:
    """:func:`is_spot_images` of an open store (h5py File)."""
    images = f["images"] if "images" in f else {}
    return is_spot_images(images, f.attrs.get("provenance", ""))
