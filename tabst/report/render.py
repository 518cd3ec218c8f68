"""Render ``report.html`` from a ``tabst compare`` run folder alone.

Computing and rendering are separate: :func:`render_report` reads only the files of the run folder
(``run.json``, ``config.yaml``, ``leaderboard.csv``, ``per_sample.csv``, ``per_gene.csv``,
``per_fold.csv``, ``predictions.h5``), so ``tabst report RUN`` rebuilds the page anywhere.

The page is one offline file: CSS inline, figures as base64 PNG (matplotlib, Agg), no script and no
remote URL. It is sized for a projector (large type, high contrast) and prints cleanly (print
CSS). If it exceeds the size budget (``report.max_mb``, default 5 MB) the figures are redrawn at a
lower resolution.
"""
from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np

from ..errors import TabstError

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
REQUIRED = ("run.json", "leaderboard.csv", "per_sample.csv", "per_gene.csv", "predictions.h5")
PALETTE = ["#0b5394", "#e69138", "#38761d", "#990000", "#674ea7", "#45818e", "#bf9000",
           "#a64d79", "#434343", "#3d85c6"]


def _b64png(fig, dpi: int) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v, nd=3):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(v):
        return "—"
    if v != 0 and (abs(v) < 10 ** -nd or abs(v) >= 1e5):
        return f"{v:.{nd}g}"
    return f"{v:.{nd}f}"


def load_run(run_dir) -> dict:
    """Read every table of a run folder (raises :class:`TabstError` if something is missing)."""

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TabstError(f"{run_dir}: no such run folder. Create one with `tabst compare STORE`.")
    missing = [n for n in REQUIRED if not (run_dir / n).exists()]
    if missing:
        raise TabstError(f"{run_dir}: not a complete tabst compare run (missing "
                         f"{', '.join(missing)}). Re-run `tabst compare`.")
    run = _read_json(run_dir / "run.json")
    cfg = _read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else {}
    _check_h5(run_dir / "predictions.h5")
    per_fold = _read_csv(run_dir / "per_fold.csv").fillna({"error": ""}) \
        if (run_dir / "per_fold.csv").exists() else None
    return {
        "run": run, "config": cfg,
        "leaderboard": _read_csv(run_dir / "leaderboard.csv").fillna({"error": "", "codec": ""}),
        "per_sample": _read_csv(run_dir / "per_sample.csv"),
        "per_gene": _read_csv(run_dir / "per_gene.csv"),
        "per_fold": per_fold,
    }


def _corrupt(path: Path, why: str) -> TabstError:
    return TabstError(f"{path}: {why}. The run folder is damaged (an interrupted copy or a hand "
                      "edit?): restore the file, or re-run `tabst compare`.")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise _corrupt(path, f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise _corrupt(path, f"expected a JSON object, found {type(data).__name__}")
    return data


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise _corrupt(path, f"not valid YAML ({str(e).splitlines()[0]})") from None
    if data is not None and not isinstance(data, dict):
        raise _corrupt(path, f"expected a YAML mapping, found {type(data).__name__}")
    if not isinstance((data or {}).get("report") or {}, dict):
        raise _corrupt(path, "key 'report' must be a mapping")
    return data or {}


def _read_csv(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise _corrupt(path, f"not a readable CSV table ({str(e).strip()})") from None


def _check_h5(path: Path) -> None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "genes" not in f:
                raise _corrupt(path, "no /genes dataset (not a tabst predictions file)")
    except OSError as e:
        raise _corrupt(path, f"not a readable HDF5 file ({str(e).splitlines()[0]})") from None


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def _setup_mpl():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 13, "axes.titlesize": 14, "axes.labelsize": 13,
                         "xtick.labelsize": 12, "ytick.labelsize": 12, "legend.fontsize": 12,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def fig_gene_distribution(per_gene, order, labels, dpi):
    """Box + strip plot of per-gene Pearson (mean over folds) per model."""
    plt = _setup_mpl()
    data = [per_gene.loc[per_gene["model"] == m, "pearson_mean"].to_numpy() for m in order]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(order) + 1.6))
    pos = np.arange(len(order))[::-1]
    import matplotlib

    horiz = ({"orientation": "horizontal"}
             if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10)
             else {"vert": False})
    ax.boxplot(data, positions=pos, widths=0.55, showfliers=False, **horiz,
               medianprops={"color": "black", "linewidth": 2})
    rng = np.random.default_rng(0)
    for i, (d, p) in enumerate(zip(data, pos)):
        ax.scatter(d, p + rng.uniform(-0.18, 0.18, len(d)), s=9, alpha=0.55,
                   color=PALETTE[i % len(PALETTE)], linewidths=0, rasterized=True)
    ax.set_yticks(pos)
    ax.set_yticklabels([labels[m] for m in order])
    ax.axvline(0, color="#777", lw=1, ls="--")
    ax.set_xlabel("gene-wise Pearson r (one dot per gene, mean over folds)")
    ax.set_title("Distribution of per-gene Pearson per model")
    return _b64png(fig, dpi)


def fig_per_sample(per_sample, order, labels, metric, metric_label, dpi):
    """Grouped bars: the primary metric per held-out sample and model."""
    plt = _setup_mpl()
    ps = per_sample.groupby(["model", "sample"], sort=False)[metric].mean().reset_index()
    samples = sorted(ps["sample"].unique(), key=str)
    fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(samples) * max(1, len(order)) ** 0.5 + 3),
                                    4.2))
    w = 0.8 / max(1, len(order))
    x = np.arange(len(samples))
    for i, m in enumerate(order):
        d = ps[ps["model"] == m].set_index("sample")[metric]
        ax.bar(x + (i - (len(order) - 1) / 2) * w, [d.get(s, np.nan) for s in samples], w,
               label=labels[m], color=PALETTE[i % len(PALETTE)])
    ax.set_xticks(x)
    ax.set_xticklabels(samples, rotation=30 if len(samples) > 6 else 0, ha="right"
                       if len(samples) > 6 else "center")
    ax.set_ylabel(metric_label)
    ax.set_xlabel("held-out sample")
    ax.axhline(0, color="#777", lw=1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"{metric_label} per held-out sample")
    return _b64png(fig, dpi)


def fig_cost(lb, labels, dpi):
    """Horizontal bars: fit seconds per fold and peak memory per model."""
    plt = _setup_mpl()
    d = lb[np.isfinite(lb["fit_seconds"].to_numpy(dtype=float))]
    if d.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 * len(d) + 1.8))
    pos = np.arange(len(d))[::-1]
    names = [labels.get(m, m) for m in d["model"]]
    for ax, col, title in ((axes[0], "fit_seconds", "fit time per fold (s)"),
                           (axes[1], "peak_mem_mb", "peak memory increase (MB)")):
        vals = d[col].to_numpy(dtype=float)
        ax.barh(pos, np.nan_to_num(vals), color="#0b5394")
        ax.set_yticks(pos)
        ax.set_yticklabels(names if ax is axes[0] else [""] * len(d))
        ax.set_title(title)
        for p, v in zip(pos, vals):
            ax.text(np.nan_to_num(v), p, " " + _fmt(v, 2), va="center", fontsize=11)
        ax.margins(x=0.25)
    return _b64png(fig, dpi)


def _read_maps(pred_file, sample, genes_show, models_show, n_show):
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


def fig_spatial(pred_file, sample, genes_show, models_show, labels, dpi, n_show=None):
    """Measured vs predicted expression maps of a few genes on one held-out sample.

    ``genes_show`` are candidates in order; the first ``n_show`` (default all) that the sample's
    fold predicted are drawn (with a per-fold gene selection a fold may lack some genes).
    Returns ``(png, column titles, genes drawn)``."""
    plt = _setup_mpl()
    try:
        got = _read_maps(pred_file, sample, genes_show, models_show, n_show)
    except (OSError, KeyError, ValueError, IndexError) as e:
        raise _corrupt(Path(pred_file), f"cannot read the maps of sample {sample!r} "
                       f"({type(e).__name__}: {e})") from None
    if got is None:
        return None, [], []
    x, y, genes_show, truth, preds = got
    cols = [("measured", truth)] + [(labels.get(m, m), v) for m, v in preds.items()]
    n = len(x)
    size = float(np.clip(9000.0 / max(n, 1), 1.5, 40.0))
    span_x, span_y = np.ptp(x) or 1.0, np.ptp(y) or 1.0
    aspect = span_y / span_x
    w = 3.4
    fig, axes = plt.subplots(len(genes_show), len(cols), squeeze=False,
                             figsize=(w * len(cols) + 0.8, max(2.2, w * aspect) * len(genes_show)
                                      + 0.5))
    for r, g in enumerate(genes_show):
        lo, hi = np.nanpercentile(truth[:, r], [1, 99])
        if not hi > lo:
            lo, hi = float(np.nanmin(truth[:, r])), float(np.nanmax(truth[:, r])) + 1e-6
        for c, (name, vals) in enumerate(cols):
            ax = axes[r, c]
            sc = ax.scatter(x, y, c=vals[:, r], s=size, cmap="viridis", vmin=lo, vmax=hi,
                            linewidths=0, rasterized=True)
            ax.set_aspect("equal")
            ax.invert_yaxis()
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
            if r == 0:
                ax.set_title(name, fontsize=14)
            if c == 0:
                ax.set_ylabel(g, fontsize=14)
        fig.colorbar(sc, ax=list(axes[r, :]), shrink=0.85, pad=0.01)
    return _b64png(fig, dpi), [c[0] for c in cols], list(genes_show)


# --------------------------------------------------------------------------------------------
# page
# --------------------------------------------------------------------------------------------
def _context(R: dict, run_dir: Path, dpi: int, run_name: str) -> dict:
    run, cfg, lb = R["run"], R["config"], R["leaderboard"]
    rep = {"n_map_genes": 3, "n_best_worst": 10, "map_sample": None, **(cfg.get("report") or {})}
    metrics = ["cellwise_spearman", "genewise_pearson", "mse"]
    labels_m = run.get("metric_labels") or {"cellwise_spearman": "cell-wise Spearman",
                                            "genewise_pearson": "gene-wise Pearson", "mse": "MSE"}
    direction = run.get("metric_direction") or {"cellwise_spearman": 1, "genewise_pearson": 1,
                                                "mse": -1}
    primary = run.get("ranked_by") or run.get("primary_metric", "cellwise_spearman")
    order_m = [primary] + [m for m in metrics if m != primary]
    labels = dict(zip(lb["model"], lb["label"]))
    ok = lb[lb["n_folds_ok"] > 0]
    ok_models = list(ok["model"])

    best = {}
    for m in metrics:
        v = ok[f"{m}_mean"].to_numpy(dtype=float)
        if np.isfinite(v).any():
            best[m] = float(np.nanmax(v) if direction[m] > 0 else np.nanmin(v))
    rows = []
    for _, r in lb.iterrows():
        cells = []
        for m in order_m:
            mu, sd = float(r[f"{m}_mean"]), float(r[f"{m}_sd"])
            cells.append({"text": f"{_fmt(mu)} ± {_fmt(sd)}" if math.isfinite(mu) else "—",
                          "best": m in best and math.isfinite(mu) and np.isclose(mu, best[m])})
        ranked = r.get("ranked", True)
        ranked = True if ranked != ranked else bool(ranked)  # NaN (older runs): ranked
        rows.append({"rank": int(r["rank"]) if ranked else "—", "model": r["model"],
                     "label": r["label"], "note": str(r["note"]) if "note" in r and
                     isinstance(r["note"], str) else "",
                     "cells": cells, "status": r["status"], "error": r.get("error", ""),
                     "ok": r["status"] == "ok", "fit": _fmt(r["fit_seconds"], 2),
                     "predict": _fmt(r["predict_seconds"], 3), "mem": _fmt(r["peak_mem_mb"], 0),
                     "n_features": int(r["n_features"]), "codec": r.get("codec", ""),
                     "refit": r.get("refit", "")})

    # per-sample table + figure
    ps = R["per_sample"]
    samp_rows, samples = [], []
    if not ps.empty:
        agg = ps.groupby(["model", "sample"], sort=False)[primary].mean().unstack("sample")
        samples = sorted(agg.columns, key=str)
        for m in ok_models:
            if m in agg.index:
                samp_rows.append({"label": labels[m],
                                  "vals": [_fmt(agg.loc[m, s]) for s in samples]})
    figs = dict.fromkeys(("per_sample", "genes", "cost", "spatial"))  # None = not drawn
    pg = R["per_gene"]
    if ok_models and not ps.empty:
        figs["per_sample"] = fig_per_sample(ps, ok_models, labels, primary, labels_m[primary], dpi)
    if ok_models and not pg.empty:
        figs["genes"] = fig_gene_distribution(pg, [m for m in ok_models if m in set(pg["model"])],
                                              labels, dpi)
    figs["cost"] = fig_cost(lb, labels, dpi)

    # best model by gene-wise Pearson (excluding the constant mean baseline) for gene tables/maps
    cand = ok[ok["model"] != "mean"] if (ok["model"] != "mean").any() else ok
    gene_model = None
    if not cand.empty:
        gene_model = cand.sort_values(f"{primary}_mean", ascending=direction[primary] < 0,
                                      na_position="last")["model"].iloc[0]
    best_genes, worst_genes, const_genes = [], [], []
    map_genes = []
    if gene_model is not None and not pg.empty:
        g = pg[pg["model"] == gene_model].sort_values("pearson_mean", ascending=False)
        nb = min(int(rep["n_best_worst"]), len(g) // 2)
        to_row = lambda r: {"gene": r["gene"], "r": _fmt(r["pearson_mean"]),  # noqa: E731
                            "sd": _fmt(r["pearson_sd"]), "mse": _fmt(r["mse_mean"])}
        best_genes = [to_row(r) for _, r in g.head(nb).iterrows()]
        worst_genes = [to_row(r) for _, r in g.tail(nb).iloc[::-1].iterrows()] if nb else []
        const_genes = g.loc[g["n_folds_constant_truth"] > 0, "gene"].tolist()
        # genes measured as constant in every fold have nothing to map (a one-cell test sample
        # makes every gene constant in its own fold only)
        n_f = g["n_folds"] if "n_folds" in g else 1
        usable = g[g["n_folds_constant_truth"] < n_f]
        map_genes = usable["gene"].tolist() if int(rep["n_map_genes"]) > 0 else []
    spatial_sample, spatial_cols = None, []
    if map_genes and ok_models:
        spatial_sample = rep.get("map_sample")
        if not spatial_sample:
            cnt = ps[ps["model"] == ok_models[0]].groupby("sample")["n_cells"].max() \
                if not ps.empty else None
            spatial_sample = str(cnt.idxmax()) if cnt is not None and len(cnt) else None
        show = [gene_model] + [m for m in ok_models if m not in (gene_model, "mean")][:1]
        if spatial_sample:
            figs["spatial"], spatial_cols, map_genes = fig_spatial(
                run_dir / "predictions.h5", str(spatial_sample), map_genes, show, labels, dpi,
                n_show=int(rep["n_map_genes"]))

    emb = run.get("embedding") or {}
    eattrs = (emb.get("attrs") or {}) if isinstance(emb, dict) else {}
    weights = str(eattrs.get("weights", "")) if eattrs else ""
    store = run.get("store") or {}
    versions = run.get("versions") or {}
    fails = [r for r in rows if not r["ok"]]
    return {
        "title": f"tabst compare · {run.get('config_name', '')}",
        "run": run, "run_name": run_name, "primary": primary,
        "metric_cols": [{"key": m, "label": labels_m[m], "up": direction[m] > 0,
                         "primary": m == primary} for m in order_m],
        "rows": rows, "fails": fails, "samples": samples, "samp_rows": samp_rows,
        "lb_notes": list(run.get("leaderboard_notes") or []),
        "primary_label": labels_m[primary], "figs": figs, "gene_model": labels.get(gene_model),
        "best_genes": best_genes, "worst_genes": worst_genes, "const_genes": const_genes,
        "spatial_sample": spatial_sample, "spatial_cols": spatial_cols, "map_genes": map_genes,
        "random_weights": weights.lower() == "random",
        "unsafe": bool(run.get("unsafe_random_split")),
        "embedding_name": emb.get("name") if isinstance(emb, dict) else None,
        "embedding_attrs": [(k, _short(v)) for k, v in eattrs.items()
                            if k not in ("description",)],
        "store": store, "samples_info": store.get("samples") or {},
        "gene_selection": _gene_selection_text(run),
        "features": run.get("features") or {}, "feature_spec": run.get("feature_spec") or {},
        "folds": run.get("folds") or [], "versions": [(k, v) for k, v in versions.items() if v],
        "seeds": run.get("seeds") or {}, "timing": run.get("timing") or {},
        "provenance": _short(store.get("provenance")),
        "command": " ".join(run.get("command") or []),
        "fmt": _fmt,
    }


def _gene_selection_text(run: dict) -> str:
    """One sentence on the run's gene selection (run.json ``gene_selection``)."""
    g = run.get("gene_selection") or {}
    n_store = g.get("n_store_genes", (run.get("store") or {}).get("n_genes", "?"))
    sel = g.get("select", "all")
    if sel == "all":
        return f"all {n_store} genes of the store"
    per = g.get("n_per_fold") or {}
    nums = sorted(set(per.values()))
    per_txt = (str(nums[0]) if len(nums) == 1 else f"{nums[0]}–{nums[-1]}") if nums else "?"
    if sel == "list":
        return (f"{per_txt} of {n_store} genes from the list {g.get('file', '?')} "
                f"(sha256 {str(g.get('file_sha256', ''))[:12]})")
    refit = g.get("n_refit")
    return (f"top {g.get('k')} highly variable genes ({g.get('flavor')}) selected inside each fold "
            f"on its training rows only: {per_txt} of {n_store} genes per fold, "
            f"{g.get('n_union', '?')} in some fold, {g.get('n_all_folds', '?')} in every fold; "
            "each fold is scored on its own genes and per-gene scores average over the folds that "
            "selected the gene" + (f"; the refit models use {refit} genes selected on all rows"
                                   if refit else ""))


def _short(v, n: int = 300) -> str:
    if isinstance(v, (dict, list)):
        v = json.dumps(v)
    s = "" if v is None else str(v)
    return s if len(s) <= n else s[:n] + " …"


def render_report(run_dir, out=None, run_name: str | None = None) -> Path:
    """Build ``report.html`` (one offline file) from the run folder; return its path.

    Raises :class:`TabstError` when the folder is not a complete run, or when the page cannot be
    brought under the size budget (``report.max_mb`` in the run's config). ``run_name``
    (default: the folder's name) is the name shown in the page.
    """
    import jinja2

    from ..outputs import atomic_output, prepare_output

    run_dir = Path(run_dir)
    R = load_run(run_dir)
    out = prepare_output(Path(out) if out is not None else run_dir / "report.html", "file",
                         force=True)
    rep = R["config"].get("report") or {}
    dpi = int(rep.get("dpi", 100))
    budget = float(rep.get("max_mb", 5.0)) * 1e6
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             autoescape=jinja2.select_autoescape(["html"]),
                             undefined=jinja2.StrictUndefined)
    tpl = env.get_template("report.html")
    while True:
        html = tpl.render(**_context(R, run_dir, dpi, run_name or run_dir.name))
        size = len(html.encode("utf-8"))
        if size <= budget:
            break
        if dpi <= 40:
            raise TabstError(f"{run_dir}: report.html would be {size / 1e6:.1f} MB, over the "
                             f"{budget / 1e6:.1f} MB budget even at {dpi} dpi. Lower "
                             "report.n_map_genes or raise report.max_mb.")
        dpi = max(40, int(dpi * 0.7))
    with atomic_output(out, "file", force=True, what="report") as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out
