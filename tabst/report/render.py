"""Render ``report.html`` from a ``tabst compare`` run folder alone.

Computing and rendering are separate: :func:`render_report` reads only the files of the run folder
(``run.json``, ``config.yaml``, ``leaderboard.csv``, ``per_sample.csv``, ``per_gene.csv``,
``per_fold.csv``, ``predictions.h5``; a tuned run's ``tuning.csv`` and ``tuning/``), so ``tabst
report RUN`` rebuilds the page anywhere.

The page is one offline file: CSS inline, figures as base64 PNG (matplotlib, Agg), no script and no
remote URL. It is sized for a projector (large type, high contrast) and prints cleanly (print
CSS). If it exceeds the size budget (``report.max_mb``, default 5 MB) the figures are redrawn at a
lower resolution.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import TabstError
from .common import b64img, corrupt, fmt, mean_sd_text, setup_mpl
from .maps import choose_map_sample, fig_spatial
from .tables import (
    feature_groups,
    gene_tables,
    is_spot_run,
    spot_text,
    store_spot_diameter,
    unit_words,
)
from .thumbnail import cached_spot_diameter
from .tuning import load_tuning, tuning_section

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
REQUIRED = ("run.json", "leaderboard.csv", "per_sample.csv", "per_gene.csv", "predictions.h5")
PALETTE = ["#0b5394", "#e69138", "#38761d", "#990000", "#674ea7", "#45818e", "#bf9000",
           "#a64d79", "#434343", "#3d85c6"]


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
        "tuning": load_tuning(run_dir, run),   # None: not a tuned run
    }


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise corrupt(path, f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise corrupt(path, f"expected a JSON object, found {type(data).__name__}")
    return data


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise corrupt(path, f"not valid YAML ({str(e).splitlines()[0]})") from None
    if data is not None and not isinstance(data, dict):
        raise corrupt(path, f"expected a YAML mapping, found {type(data).__name__}")
    if not isinstance((data or {}).get("report") or {}, dict):
        raise corrupt(path, "key 'report' must be a mapping")
    return data or {}


def _read_csv(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise corrupt(path, f"not a readable CSV table ({str(e).strip()})") from None


def _check_h5(path: Path) -> None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "genes" not in f:
                raise corrupt(path, "no /genes dataset (not a tabst predictions file)")
    except OSError as e:
        raise corrupt(path, f"not a readable HDF5 file ({str(e).splitlines()[0]})") from None


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def fig_gene_distribution(per_gene, order, labels, dpi):
    """Box + strip plot of per-gene Pearson (mean over folds) per model."""
    plt = setup_mpl()
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
    return b64img(fig, dpi)


def fig_per_sample(per_sample, order, labels, metric, metric_label, dpi):
    """Grouped bars: the primary metric per held-out sample and model."""
    plt = setup_mpl()
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
    return b64img(fig, dpi)


def fig_cost(lb, labels, dpi):
    """Horizontal bars: fit seconds per fold and peak memory per model."""
    plt = setup_mpl()
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
            ax.text(np.nan_to_num(v), p, " " + fmt(v, 2), va="center", fontsize=11)
        ax.margins(x=0.25)
    return b64img(fig, dpi)


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

    rows = _leaderboard_rows(lb, ok, metrics, order_m, direction)
    store = run.get("store") or {}
    spot_d = store_spot_diameter(store.get("path"), list(store.get("samples") or {})) \
        or cached_spot_diameter(run_dir)
    spots = is_spot_run(run, spot_d)
    words = unit_words(spots)
    labels_m = {k: spot_text(v, spots) for k, v in labels_m.items()}

    ps, pg = R["per_sample"], R["per_gene"]
    samples, samp_rows = _per_sample_table(ps, ok_models, labels, primary)
    figs = _figures(lb, ps, pg, ok_models, labels, primary, labels_m[primary], dpi)

    # best model by the primary metric (excluding the constant mean baseline) for genes and maps
    cand = ok[ok["model"] != "mean"] if (ok["model"] != "mean").any() else ok
    gene_model = None
    if not cand.empty:
        gene_model = cand.sort_values(f"{primary}_mean", ascending=direction[primary] < 0,
                                      na_position="last")["model"].iloc[0]
    genes = {"best": [], "worst": [], "const": [], "map_candidates": [], "rule": ""}
    if gene_model is not None and not pg.empty:
        n_ok = int(lb.loc[lb["model"] == gene_model, "n_folds_ok"].iloc[0])
        genes = gene_tables(pg, gene_model, n_ok, int(rep["n_best_worst"]))
    show = [gene_model] + [m for m in ok_models if m not in (gene_model, "mean")][:1]
    spatial = _spatial(run_dir, run, ps, rep, genes["map_candidates"], show, labels, dpi,
                       gene_model, primary, labels_m[primary])
    emb = run.get("embedding") or {}
    eattrs = (emb.get("attrs") or {}) if isinstance(emb, dict) else {}
    weights = str(eattrs.get("weights", "")) if eattrs else ""
    versions = run.get("versions") or {}
    fails = [r for r in rows if not r["ok"]]
    return {
        "title": f"tabst compare · {run.get('config_name', '')}",
        "run": run, "run_name": run_name, "primary": primary,
        "metric_cols": [{"key": m, "label": labels_m[m], "up": direction[m] > 0,
                         "primary": m == primary} for m in order_m],
        "rows": rows, "fails": fails, "samples": samples, "samp_rows": samp_rows,
        "lb_notes": [spot_text(n, spots) for n in run.get("leaderboard_notes") or []],
        "spots": spots, **words, "feature_groups": feature_groups(run, run_dir, words),
        "primary_label": labels_m[primary], "cw_label": labels_m["cellwise_spearman"],
        "figs": figs, "gene_model": labels.get(gene_model),
        "genes": genes, "spatial": spatial,
        "random_weights": weights.lower() == "random",
        "unsafe": bool(run.get("unsafe_random_split")),
        "embedding_name": emb.get("name") if isinstance(emb, dict) else None,
        "embedding_attrs": [(k, _short(v)) for k, v in eattrs.items()
                            if k not in ("description",)],
        "store": store, "samples_info": store.get("samples") or {},
        "gene_selection": spot_text(_gene_selection_text(run), spots),
        "features": run.get("features") or {}, "feature_spec": run.get("feature_spec") or {},
        "folds": run.get("folds") or [], "versions": [(k, v) for k, v in versions.items() if v],
        "seeds": run.get("seeds") or {}, "timing": run.get("timing") or {},
        "provenance": _short(store.get("provenance")),
        "command": " ".join(run.get("command") or []),
        "tuning": tuning_section(R.get("tuning"), lb, R["per_fold"], labels, order_m, labels_m,
                                 direction, dpi),
        "fmt": fmt,
    }


def _spatial(run_dir, run, ps, rep, candidates, show, labels, dpi, gene_model, primary,
             metric_label) -> dict | None:
    """The maps section: the chosen section, why, and its figure (None: nothing to map)."""
    if not candidates or int(rep["n_map_genes"]) <= 0 or gene_model is None or ps.empty:
        return None
    sample, reason = choose_map_sample(ps, gene_model, primary, metric_label,
                                       rep.get("map_sample"))
    if sample is None:
        return None
    got = fig_spatial(run_dir, (run.get("store") or {}).get("path"), sample, candidates, show,
                      labels, dpi, n_show=int(rep["n_map_genes"]))
    return None if got is None else {**got, "sample": sample, "reason": reason}


def _leaderboard_rows(lb, ok, metrics, order_m, direction) -> list[dict]:
    """One template row per leaderboard line; the best value of each metric is marked."""
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
            cells.append({"text": mean_sd_text(mu, sd),
                          "best": m in best and math.isfinite(mu) and np.isclose(mu, best[m])})
        ranked = r.get("ranked", True)
        ranked = True if ranked != ranked else bool(ranked)  # NaN (older runs): ranked
        rows.append({"rank": int(r["rank"]) if ranked else "—", "model": r["model"],
                     "label": r["label"], "note": str(r["note"]) if "note" in r and
                     isinstance(r["note"], str) else "",
                     "cells": cells, "status": r["status"], "error": r.get("error", ""),
                     "ok": r["status"] == "ok", "fit": fmt(r["fit_seconds"], 2),
                     "predict": fmt(r["predict_seconds"], 3), "mem": fmt(r["peak_mem_mb"], 0),
                     "n_features": int(r["n_features"]), "codec": r.get("codec", ""),
                     "refit": r.get("refit", "")})

    return rows


def _per_sample_table(ps, ok_models, labels, primary):
    """Held-out samples and one row per model of its primary metric on each."""
    if ps.empty:
        return [], []
    agg = ps.groupby(["model", "sample"], sort=False)[primary].mean().unstack("sample")
    samples = sorted(agg.columns, key=str)
    return samples, [{"label": labels[m], "vals": [fmt(agg.loc[m, s]) for s in samples]}
                     for m in ok_models if m in agg.index]


def _figures(lb, ps, pg, ok_models, labels, primary, primary_label, dpi) -> dict:
    """The per-sample, per-gene and cost figures (None where there is nothing to draw)."""
    figs = dict.fromkeys(("per_sample", "genes", "cost"))
    if ok_models and not ps.empty:
        figs["per_sample"] = fig_per_sample(ps, ok_models, labels, primary, primary_label, dpi)
    if ok_models and not pg.empty:
        figs["genes"] = fig_gene_distribution(pg, [m for m in ok_models if m in set(pg["model"])],
                                              labels, dpi)
    figs["cost"] = fig_cost(lb, labels, dpi)
    return figs


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
