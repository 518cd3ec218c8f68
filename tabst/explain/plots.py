"""Matplotlib figures of the explain report, returned as base64 PNG strings (offline report).

Every function takes plain arrays and returns ``"data:image/png;base64,..."`` ready for an
``<img src=...>``; figures are small (dpi :data:`DPI`) so a report with a handful of genes stays
well under the size budget. Matplotlib is imported lazily with the non-interactive Agg backend.
"""
from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np

DPI = 80
GROUP_COLOURS = {"embedding": "#9e9e9e", "morphology": "#1f77b4", "stain": "#9467bd",
                 "neighbourhood": "#2ca02c", "tissue": "#ff7f0e", "position": "#8c564b"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def group_colour(group: str) -> str:
    return GROUP_COLOURS.get(str(group), "#17becf")


def to_data_uri(fig, dpi: int | None = None) -> str:
    """Render a figure to a base64 PNG data URI and close it (``dpi`` default: :data:`DPI`)."""
    plt = _plt()
    dpi = DPI if dpi is None else dpi
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def array_to_data_uri(img: np.ndarray) -> str:
    """uint8 image [h, w, 3] → base64 PNG data URI (PIL)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def group_bars(groups: Sequence[str], by_model: dict, title: str = "") -> str:
    """Horizontal grouped bars: share of |group attribution| per feature group, one bar per model
    (shares, so models whose attributions differ in scale stay comparable).

    ``by_model`` maps model name → shares [n_groups] (summing to 1).
    """
    plt = _plt()
    models = list(by_model)
    ng, nm = len(groups), max(1, len(models))
    fig, ax = plt.subplots(figsize=(5.2, 0.45 * ng * max(1, nm * 0.6) + 0.9))
    h = 0.8 / nm
    cmap = plt.get_cmap("tab10")
    for j, m in enumerate(models):
        ys = np.arange(ng) + (j - (nm - 1) / 2) * h
        ax.barh(ys, by_model[m], height=h, color=cmap(j % 10), label=m)
    ax.set_yticks(np.arange(ng))
    ax.set_yticklabels(groups)
    for t, g in zip(ax.get_yticklabels(), groups):
        t.set_color(group_colour(g))
    ax.invert_yaxis()
    ax.set_xlabel("share of the model's mean |attribution| for this gene")
    ax.set_xlim(0, 1)
    if title:
        ax.set_title(title, fontsize=10)
    if nm > 1:
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return to_data_uri(fig)


def beeswarm(values: np.ndarray, features: np.ndarray, names: Sequence[str],
             groups: Sequence[str], title: str = "", seed: int = 0) -> str:
    """A SHAP-style beeswarm: one row per feature, one dot per cell at its attribution,
    coloured by the cell's feature value (low blue → high red, per-feature percentile scale).

    ``values`` and ``features`` are [n, k] for the k features shown (top first).
    """
    plt = _plt()
    rng = np.random.default_rng(seed)
    k = values.shape[1]
    fig, ax = plt.subplots(figsize=(5.6, 0.42 * k + 1.0))
    for r in range(k):
        v = values[:, r]
        f = features[:, r].astype(np.float64)
        ok = np.isfinite(f)
        lo, hi = (np.nanpercentile(f, [5, 95]) if ok.any() else (0.0, 1.0))
        c = np.clip((f - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
        # jitter proportional to local density, as in shap's beeswarm
        hist, edges = np.histogram(v, bins=30)
        dens = hist[np.clip(np.digitize(v, edges) - 1, 0, len(hist) - 1)] / max(1, hist.max())
        yj = r + (rng.random(len(v)) - 0.5) * 0.7 * dens
        ax.scatter(v[ok], yj[ok], c=c[ok], cmap="coolwarm", s=7, vmin=0, vmax=1, linewidths=0)
        ax.scatter(v[~ok], yj[~ok], c="#bbbbbb", s=7, linewidths=0)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_yticks(np.arange(k))
    ax.set_yticklabels(names)
    for t, g in zip(ax.get_yticklabels(), groups):
        t.set_color(group_colour(g))
    ax.invert_yaxis()
    ax.set_xlabel("attribution to predicted expression")
    sm = plt.cm.ScalarMappable(cmap="coolwarm")
    cb = fig.colorbar(sm, ax=ax, fraction=0.04, pad=0.02, ticks=[0, 1])
    cb.ax.set_yticklabels(["low", "high"])
    cb.set_label("feature value", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return to_data_uri(fig)


def dependence(feature: np.ndarray, values: np.ndarray, samples: np.ndarray, fname: str,
               title: str = "") -> str:
    """Dependence plot: feature value (x) vs its attribution (y), coloured by sample."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    uniq = list(dict.fromkeys(np.asarray(samples).tolist()))
    cmap = plt.get_cmap("tab10")
    for j, s in enumerate(uniq[:10]):
        m = np.asarray(samples) == s
        ax.scatter(feature[m], values[m], s=8, color=cmap(j % 10), label=str(s), alpha=0.8,
                   linewidths=0)
    if len(uniq) > 10:
        m = ~np.isin(np.asarray(samples), uniq[:10])
        ax.scatter(feature[m], values[m], s=8, color="#999999", label="other", linewidths=0)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel(fname)
    ax.set_ylabel(f"attribution of {fname}")
    ax.legend(fontsize=7, title="held-out sample", title_fontsize=7, markerscale=1.5)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return to_data_uri(fig)


def spatial_maps(x, y, values, samples, title: str = "", max_panels: int = 3) -> str:
    """Cells at their positions coloured by an attribution (diverging, symmetric around 0),
    one panel per held-out sample (the ``max_panels`` samples with most cells)."""
    plt = _plt()
    samples = np.asarray(samples)
    uniq, counts = np.unique(samples, return_counts=True)
    order = [uniq[i] for i in np.argsort(-counts, kind="stable")][:max_panels]
    lim = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    lim = lim if lim > 0 else 1.0
    fig, axes = plt.subplots(1, len(order), figsize=(3.4 * len(order) + 0.8, 3.3), squeeze=False)
    sc = None
    for ax, s in zip(axes[0], order):
        m = samples == s
        sc = ax.scatter(x[m], y[m], c=values[m], cmap="RdBu_r", vmin=-lim, vmax=lim, s=9,
                        linewidths=0)
        ax.set_title(f"sample {s}", fontsize=9)
        ax.set_aspect("equal")
        ax.invert_yaxis()  # image coordinates: y grows downwards
        ax.set_xticks([])
        ax.set_yticks([])
    if sc is not None:
        fig.colorbar(sc, ax=axes[0].tolist(), fraction=0.03, pad=0.02).set_label("attribution",
                                                                                 fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return to_data_uri(fig)


def heatmap(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str = "",
            cbar: str = "", fmt: str = "{:.2f}", cmap: str = "viridis") -> str:
    """Annotated heatmap ``matrix [rows, cols]``."""
    plt = _plt()
    nr, nc = matrix.shape
    fig, ax = plt.subplots(figsize=(max(3.5, 0.55 * nc + 2.2), max(2.0, 0.38 * nr + 1.2)))
    im = ax.imshow(matrix, cmap=cmap, aspect="auto")
    ax.set_xticks(np.arange(nc))
    ax.set_xticklabels(cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(np.arange(nr))
    ax.set_yticklabels(rows, fontsize=8)
    if nr * nc <= 400:
        vmax = float(np.nanmax(matrix)) if matrix.size else 1.0
        for i in range(nr):
            for j in range(nc):
                v = matrix[i, j]
                if np.isfinite(v):
                    ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                            color="white" if v < 0.6 * vmax else "black")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02).set_label(cbar, fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return to_data_uri(fig)


def paired_bars(labels: Sequence[str], a: np.ndarray, b: np.ndarray, label_a: str, label_b: str,
                title: str = "", groups: Sequence[str] | None = None) -> str:
    """Two importance profiles side by side (e.g. TabNet mask share vs SHAP share); tick labels
    are coloured by ``groups`` (default: the labels are group names themselves)."""
    plt = _plt()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(5.4, 0.42 * n + 1.0))
    ys = np.arange(n)
    ax.barh(ys - 0.2, a, height=0.4, color="#4c72b0", label=label_a)
    ax.barh(ys + 0.2, b, height=0.4, color="#dd8452", label=label_b)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    for t, g in zip(ax.get_yticklabels(), groups if groups is not None else labels):
        t.set_color(group_colour(g))
    ax.invert_yaxis()
    ax.set_xlabel("share of importance")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return to_data_uri(fig)
