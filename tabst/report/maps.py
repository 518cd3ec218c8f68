"""The report's spatial maps: measured vs predicted expression of a few genes on one held-out
section, drawn over the section's H&E thumbnail (:mod:`tabst.report.thumbnail`).

The section is chosen deliberately: the user's ``report.map_sample`` if set, else the section
whose score (the run's primary metric for the model whose maps are drawn, in the fold that held
the section out) is the median over the held-out sections (the lower of the two middle ones
when their number is even) — neither the best nor the worst section, and not simply the
largest one. The page says which section and why.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import TabstError
from .common import b64img, corrupt, fmt, setup_mpl
from .thumbnail import region_of, section_thumbnail


def choose_map_sample(per_sample, model: str, primary: str, metric_label: str,
                      user_choice=None) -> tuple[str | None, str]:
    """``(sample, reason)`` of the section to map (see the module docstring).

    ``per_sample`` is the run's ``per_sample.csv``; with an unsafe random split a section is in
    several folds and its score is the mean over them. A ``user_choice`` that was not held out
    raises :class:`TabstError` naming the held-out sections."""
    ps = per_sample[per_sample["model"] == model] if model is not None else per_sample.iloc[:0]
    scores = ps.groupby("sample")[primary].mean()
    held = sorted(map(str, per_sample["sample"].unique()), key=str)
    if user_choice not in (None, ""):
        if str(user_choice) not in held:
            raise TabstError(f"report.map_sample = {user_choice!r} is not a held-out sample of "
                             f"this run (held out: {', '.join(held) or 'none'}). Set it to one "
                             "of them, or remove it to map the median section.")
        return str(user_choice), "chosen by report.map_sample"
    scores = scores[np.isfinite(scores.to_numpy(dtype=float))]
    if scores.empty:
        return None, ""
    order = sorted(scores.items(), key=lambda kv: (float(kv[1]), str(kv[0])))
    sample, score = order[(len(order) - 1) // 2]
    lo, hi = float(order[0][1]), float(order[-1][1])
    n = len(order)
    if n == 1:
        return str(sample), f"the only held-out section ({metric_label} {fmt(score)})"
    return str(sample), (f"median {metric_label} of {n} sections ({fmt(score)}; the sections "
                         f"range {fmt(lo)}–{fmt(hi)})")


def read_maps(pred_file, sample, genes_show, models_show, n_show):
    """Coordinates, drawn genes, truth and predictions of ``sample`` (None: nothing to draw)."""
    import h5py

    with h5py.File(pred_file, "r") as f:
        genes = [g.decode() if isinstance(g, bytes) else str(g) for g in f["genes"][()]]
        grp = None
        for k in sorted(f.keys()):
            if k.startswith("fold_"):
                s = f[k]["sample"].asstr()[()]
                if (s == sample).any():
                    grp, mask = f[k], s == sample
                    break
        if grp is None:
            return None
        if "genes" in grp:  # this fold's own columns
            genes = [g.decode() if isinstance(g, bytes) else str(g) for g in grp["genes"][()]]
        genes_show = [g for g in genes_show if g in genes][:n_show]
        if not genes_show:
            return None
        x, y = grp["x"][()][mask], grp["y"][()][mask]
        gi = [genes.index(g) for g in genes_show]
        truth = grp["truth"][()][mask][:, gi]
        preds = {m: grp["pred"][m][()][mask][:, gi] for m in models_show if m in grp["pred"]}
    return x, y, genes_show, truth, preds


def fig_spatial(run_dir: Path, store_path, sample, genes_show, models_show, labels, dpi,
                n_show=None) -> dict | None:
    """Measured vs predicted maps of ``sample`` over its H&E thumbnail (None: nothing to draw).

    ``genes_show`` are candidates in order; the first ``n_show`` (default all) that the sample's
    fold predicted are drawn. Spots are drawn as discs of their diameter (the image's
    ``spot_diameter_px``), cells (and spots of an image not at hand) as dots. Returns
    ``{"img", "cols", "genes", "hne", "note", "frame"}``: ``hne`` whether the H&E is behind the
    maps, ``note`` why not, ``frame`` the thumbnail's pixel frame (``x0``, ``y0``, ``factor``)."""
    pred_file = Path(run_dir) / "predictions.h5"
    try:
        got = read_maps(pred_file, sample, genes_show, models_show, n_show)
    except (OSError, KeyError, ValueError, IndexError) as e:
        raise corrupt(pred_file, f"cannot read the maps of sample {sample!r} "
                      f"({type(e).__name__}: {e})") from None
    if got is None:
        return None
    x, y, genes_show, truth, preds = got
    region = region_of(x, y)
    thumb, meta, note = section_thumbnail(Path(run_dir), store_path, sample, region)
    d_hint = float((meta or {}).get("spot_diameter_px") or 0.0)
    if thumb is not None:
        f, x0, y0 = float(meta["factor"]), float(meta["x0"]), float(meta["y0"])
        u, v, d = (x - x0) / f, (y - y0) / f, d_hint / f
        extent = (0.0, float(thumb.shape[1]), float(thumb.shape[0]), 0.0)
    else:
        u, v, d = x - region[0], y - region[1], d_hint
        extent = (0.0, float(region[2] - region[0]), float(region[3] - region[1]), 0.0)
    cols = [("measured", truth)] + [(labels.get(m, m), p) for m, p in preds.items()]
    img = _draw(u, v, d, extent, thumb, genes_show, truth, cols, dpi)
    return {"img": img, "cols": [c[0] for c in cols], "genes": list(genes_show),
            "hne": thumb is not None, "note": note, "spot_diameter_px": d_hint or None,
            "frame": None if meta is None else {k: meta[k] for k in ("x0", "y0", "factor")}}


def _draw(u, v, d, extent, thumb, genes, truth, cols, dpi) -> str:
    plt = setup_mpl()
    span_x, span_y = extent[1] - extent[0], extent[2] - extent[3]
    w = 3.6
    fig, axes = plt.subplots(len(genes), len(cols), squeeze=False,
                             figsize=(w * len(cols) + 0.9,
                                      max(2.2, w * span_y / max(span_x, 1e-9)) * len(genes) + 0.5))
    for r, g in enumerate(genes):
        lo, hi = np.nanpercentile(truth[:, r], [1, 99])
        if not hi > lo:
            lo, hi = float(np.nanmin(truth[:, r])), float(np.nanmax(truth[:, r])) + 1e-6
        for c, (name, vals) in enumerate(cols):
            ax = axes[r, c]
            sc = _panel(ax, u, v, d, extent, thumb, vals[:, r], lo, hi, len(u))
            if r == 0:
                ax.set_title(name, fontsize=14)
            if c == 0:
                ax.set_ylabel(g, fontsize=12 if len(g) > 14 else 14)
        fig.colorbar(sc, ax=list(axes[r, :]), shrink=0.85, pad=0.01)
    return b64img(fig, dpi, "jpeg" if thumb is not None else "png")


def _panel(ax, u, v, d, extent, thumb, vals, lo, hi, n):
    """One map: the H&E (if any), then the spots as discs of diameter ``d`` (thumbnail pixels)
    or the cells as dots, coloured by ``vals``."""
    from matplotlib.collections import EllipseCollection
    from matplotlib.colors import Normalize

    if thumb is not None:
        ax.imshow(thumb, extent=extent, interpolation="antialiased", zorder=0)
    norm = Normalize(vmin=lo, vmax=hi)
    if d and d > 0:
        sc = EllipseCollection(np.full(n, d), np.full(n, d), np.zeros(n), units="xy",
                               offsets=np.column_stack([u, v]), offset_transform=ax.transData,
                               cmap="viridis", norm=norm, linewidths=0, zorder=2)
        sc.set_array(np.asarray(vals, dtype=float))
        ax.add_collection(sc)
    else:
        size = float(np.clip(9000.0 / max(n, 1), 1.5, 40.0))
        sc = ax.scatter(u, v, c=vals, s=size, cmap="viridis", norm=norm, linewidths=0,
                        rasterized=True, zorder=2)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])  # y down, as in the image
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_visible(False)
    return sc
