"""Patch gallery: the H&E patches of chosen cells, read through the store's image readers.

Patches are cut with :mod:`tabst.patches` (same centre convention as the embedding) from region
readers, or fitted from per-cell patch readers, downscaled to at most ``max_px`` pixels and
encoded as small PNG data URIs. A sample whose pixels cannot be opened gives ``None`` patches
(the report then shows a placeholder) rather than failing the whole report.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np


def read_patches(store_path, rows: Sequence[int], samples: Sequence[str], x, y,
                 size: int | dict = 64, max_px: int = 72) -> list:
    """Patches (uint8 [s, s, 3] with s ≤ ``max_px``, or None) of store rows ``rows``.

    ``samples``, ``x``, ``y`` are the cells' sample and centroid (aligned with ``rows``).
    ``size``: the patch side in px, or ``{sample: px}`` (spot runs: each sample's resolved spot
    size, as the embedding cut them).
    """
    from ..images import open_sample_image, sample_attrs
    from ..patches import crop_patch, fit_patch, resize_patch
    from ..store import opened

    rows = [int(r) for r in rows]
    out: list = [None] * len(rows)
    if not rows:
        return out
    samples = np.asarray(samples)
    with opened(store_path) as f:
        store_file = f.filename
        for s in list(dict.fromkeys(samples.tolist())):
            idx = [i for i in range(len(rows)) if samples[i] == s]
            side = int(size[str(s)] if isinstance(size, dict) else size)
            try:
                attrs = sample_attrs(f, s)
                reader = open_sample_image(store_file, attrs, s)
            except Exception as e:  # noqa: BLE001 - gallery is best-effort
                warnings.warn(f"patch gallery: cannot open the image of sample {s!r}: {e}")
                continue
            try:
                fields = {}
                if getattr(reader, "patch_based", False):
                    for k in getattr(reader, "row_fields", ()):
                        ds = f["cells"][k]
                        vals = [ds[rows[i]] for i in idx]
                        fields[k] = [v.decode() if isinstance(v, bytes) else v for v in vals]
                for jj, i in enumerate(idx):
                    try:
                        if getattr(reader, "patch_based", False):
                            raw = reader.read_patch(rows[i], {k: v[jj] for k, v in fields.items()})
                            p, _ = fit_patch(raw, side)
                        else:
                            p, _ = crop_patch(reader, float(x[i]), float(y[i]), side)
                        p = np.asarray(p, dtype=np.uint8)
                        if p.shape[0] > max_px:
                            p = resize_patch(p, max_px)
                        out[i] = p
                    except Exception as e:  # noqa: BLE001
                        warnings.warn(f"patch gallery: cannot read the patch of row {rows[i] + 1} "
                                      f"of sample {s!r}: {e}")
            finally:
                try:
                    reader.close()
                except Exception:  # noqa: BLE001
                    pass
    return out


def extreme_cells(pred: np.ndarray, k: int = 5):
    """Indices of the ``k`` highest and ``k`` lowest predictions (highest first; lowest first)."""
    pred = np.asarray(pred, dtype=np.float64)
    order = np.argsort(pred, kind="stable")
    k = int(min(k, len(pred) // 2 if len(pred) >= 2 else len(pred)))
    return order[::-1][:k].tolist(), order[:k].tolist()
