"""Render ``explain.html``: one offline file (inline CSS, base64 PNG figures, no external links).

Computation lives in :mod:`tabst.explain.run`; this module only turns
:class:`~tabst.explain.attribution.ModelAttributions` (+ patches, tree rules, scores) into
figures and HTML with the jinja2 template ``tabst/explain/templates/explain.html``.

Size budget: the page is rendered at decreasing levels of detail until it fits ``max_bytes``
(default 5 MB): full → fewer gallery patches → no gallery → smaller figures. The level used is
stated in the page when it is not the full one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from . import plots
from .attribution import ADDITIVITY_ATOL, ModelAttributions
from .grouping import (
    group_importance,
    group_matrix,
    group_shares,
    ordered_groups,
    readable_importance,
)
from .trust import dominance_rule, fold_table, samples_per_fold

MAX_BYTES = 5 * 1024 * 1024
TEMPLATE = "explain.html"


@dataclass
class ReportInputs:
    """Everything the report shows besides the attributions themselves.

    Attributes
    ----------
    run_name : str
    best_model : the best model overall (leaderboard order).
    best_per_gene : ``{gene: model}``, the explained model with the highest gene-wise Pearson for
        that gene; its explanation drives that gene's panels (falls back to ``best_model``).
    mode_text : one paragraph saying which models explained which cells.
    scores : ``{model: {gene: gene-wise Pearson}}`` (optional, for captions).
    mean_scores : ``{model: mean gene-wise Pearson}`` (optional).
    banner : red banner text (e.g. random encoder weights), or None.
    warnings : extra yellow notes.
    rules : ``{gene: (rules_text, note)}`` of the decision tree, optional.
    patches : ``{cell_id: uint8 [h, w, 3] or None}`` for the gallery.
    gallery_k : highest/lowest cells per gene in the gallery.
    unit : what a row is, ``"cell"`` or ``"spot"`` (the report's wording).
    patch_text : the patch-size choice and the resolved px per sample (one line).
    hidden : ``{model: why}`` of models kept out of the headline charts (:mod:`.trust`).
    """

    run_name: str = ""
    best_model: str = ""
    best_per_gene: dict = field(default_factory=dict)
    mode_text: str = ""
    scores: dict = field(default_factory=dict)
    mean_scores: dict = field(default_factory=dict)
    score_label: str = "gene-wise Pearson"
    banner: str | None = None
    warnings: list = field(default_factory=list)
    rules: dict = field(default_factory=dict)
    patches: dict = field(default_factory=dict)
    gallery_k: int = 6
    top_features: int = 8
    unit: str = "cell"
    patch_text: str = ""
    hidden: dict = field(default_factory=dict)

    def shown(self, results: dict) -> dict:
        """The models of ``results`` the headline charts show (all when every one is hidden)."""
        keep = {m: r for m, r in results.items() if m not in self.hidden}
        return keep or dict(results)


def _env():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("tabst.explain", "templates"),
                              autoescape=jinja2.select_autoescape(["html"]),
                              undefined=jinja2.StrictUndefined)


def top_readable(res: ModelAttributions, gene: str, top: int | None = None) -> list[dict]:
    """Readable features of ``res`` ranked by mean |attribution| for ``gene``."""
    return readable_importance(res.values, res.features, res.groups, res.gene_index(gene), top)


def correlated_features(res: ModelAttributions, f0: int, threshold: float = 0.7,
                        top: int = 4, unit: str = "cell") -> str:
    """A note naming the readable features whose values correlate with feature ``f0`` over the
    explained cells (|Spearman ρ| ≥ ``threshold``): attributions can be shared among them."""
    if res.inputs is None or res.n < 5:
        return ""
    from scipy.stats import spearmanr

    x0 = res.inputs[:, f0].astype(np.float64)
    found = []
    for j, (name, g) in enumerate(zip(res.features, res.groups)):
        if j == f0 or g == "embedding":
            continue
        xj = res.inputs[:, j].astype(np.float64)
        ok = np.isfinite(x0) & np.isfinite(xj)
        if ok.sum() < 5 or np.ptp(x0[ok]) == 0 or np.ptp(xj[ok]) == 0:
            continue
        rho = float(spearmanr(x0[ok], xj[ok]).correlation)
        if np.isfinite(rho) and abs(rho) >= threshold:
            found.append((abs(rho), name, rho))
    if not found:
        return ""
    found.sort(reverse=True)
    lst = ", ".join(f"{n} (ρ = {r:+.2f})" for _, n, r in found[:top])
    return (f"{res.features[f0]} is correlated with {lst} over these {unit}s: a model can "
            "attribute a shared signal to any of them, so read them together.")


def _fmt(v, spec="{:.3f}") -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "–"
    return spec.format(v) if np.isfinite(v) else "–"


def _gene_section(gene: str, results: dict, inp: ReportInputs, level: int) -> dict:
    model = inp.best_per_gene.get(gene, inp.best_model)
    best = results[model]
    gi = best.gene_index(gene)
    groups = ordered_groups(best.groups)
    by_model = {}
    for name, r in inp.shown(results).items():
        if gene not in r.genes:
            continue
        gs, imp = group_importance(r.values[:, :, [r.gene_index(gene)]], r.groups, groups)
        by_model[name] = group_shares(imp)[:, 0]
    score = inp.scores.get(model, {}).get(gene)
    sec = {"name": gene, "model": model, "group_bars": plots.group_bars(groups, by_model,
                                                       "share of mean |attribution| per group"),
           "beeswarm": None, "dependence": None, "spatial": None, "top_feature": None,
           "readable": [], "gallery": [], "rules": None, "rules_note": "", "correlated": "",
           "folds": fold_table(inp.shown(results), gene, samples_per_fold(best.fold, best.sample),
                               inp.unit)}
    readable = top_readable(best, gene, inp.top_features)
    sec["readable"] = readable
    tops = []
    if readable:
        top = readable[0]
        sec["top_feature"] = top["feature"]
        idx = [r["index"] for r in readable]
        vals = best.values[:, idx, gi].astype(np.float64)
        feats = (best.inputs[:, idx] if best.inputs is not None
                 else np.full(vals.shape, np.nan))
        sec["beeswarm"] = plots.beeswarm(vals, feats, [r["feature"] for r in readable],
                                         [r["group"] for r in readable],
                                         f"{gene}: named features ({model})")
        f0 = top["index"]
        if best.inputs is not None:
            sec["dependence"] = plots.dependence(best.inputs[:, f0], best.values[:, f0, gi],
                                                 best.sample, top["feature"],
                                                 f"{gene} ({model})")
        if best.x is not None and best.y is not None and level < 3:
            sec["spatial"] = plots.spatial_maps(best.x, best.y, best.values[:, f0, gi], best.sample,
                                                f"attribution of {top['feature']} to {gene}")
        tops = [f"top named feature: {top['feature']} ({top['group']})"]
        sec["correlated"] = correlated_features(best, f0, unit=inp.unit)
    # share of the readable groups in the best model's attribution
    _, imp = group_importance(best.values[:, :, [gi]], best.groups, groups)
    share = group_shares(imp)[:, 0]
    top_group = groups[int(np.argmax(share))] if len(groups) else "–"
    parts = [f"{model}: gene-wise Pearson {_fmt(score)}" if score is not None
             else f"{model}", f"largest group: {top_group} "
             f"({share.max() * 100:.0f}% of |attribution|)" if len(groups) else ""] + tops
    sec["summary"] = " · ".join(p for p in parts if p)
    # gallery
    k = {0: inp.gallery_k, 1: min(3, inp.gallery_k)}.get(level, 0)
    if k > 0 and best.n > 0:
        from .gallery import extreme_cells

        hi, lo = extreme_cells(best.prediction[:, gi], k)
        truth = best.truth[:, gi] if best.truth is not None else None
        for label, sel in (("highest predicted", hi), ("lowest predicted", lo)):
            cells = []
            for i in sel:
                cid = str(best.cell_id[i])
                p = inp.patches.get(cid)
                cells.append({"cell_id": cid, "sample": str(best.sample[i]),
                              "uri": plots.array_to_data_uri(p) if p is not None else None,
                              "pred": float(best.prediction[i, gi]),
                              "truth": _fmt(truth[i], "{:.2f}") if truth is not None else "–"})
            sec["gallery"].append({"label": label, "cells": cells})
    if gene in inp.rules:
        sec["rules"], sec["rules_note"] = inp.rules[gene]
    return sec


def _tabnet_section(results: dict, genes: Sequence[str], inp: ReportInputs) -> dict | None:
    tab = next((r for r in results.values() if r.mask_aggregate is not None), None)
    if tab is None:
        return None
    groups = ordered_groups(tab.groups)
    M = group_matrix(tab.groups, groups)
    mask_g = (tab.mask_aggregate.astype(np.float64) @ M)           # [n, n_groups]
    mask_share = group_shares(mask_g.mean(axis=0)[:, None])[:, 0]
    _, imp = group_importance(tab.values, tab.groups, groups)       # [n_groups, g]
    shap_share = group_shares(group_shares(imp).mean(axis=1)[:, None])[:, 0]
    panels = [{"title": "Feature groups: mask vs attribution",
               "uri": plots.paired_bars(groups, mask_share, shap_share,
                                        "attention mask (all genes)",
                                        f"attribution (mean over {len(tab.genes)} genes)")}]
    # named features
    feat_mask = tab.mask_aggregate.astype(np.float64).mean(axis=0)
    feat_shap = np.abs(tab.values.astype(np.float64)).mean(axis=0)  # [F, g]
    feat_shap = group_shares(feat_shap).mean(axis=1)
    readable = [i for i, g in enumerate(tab.groups) if g != "embedding"]
    if readable:
        order = sorted(readable, key=lambda i: -(feat_mask[i] + feat_shap[i]))[:10]
        panels.append({"title": "Named features: mask vs attribution",
                       "uri": plots.paired_bars([tab.features[i] for i in order],
                                                feat_mask[order] / max(feat_mask.sum(), 1e-12),
                                                feat_shap[order] / max(feat_shap.sum(), 1e-12),
                                                "attention mask", "attribution",
                                                groups=[tab.groups[i] for i in order])})
    if tab.mask_steps is not None and tab.mask_steps.shape[0] > 0:
        steps = np.einsum("snf,fj->sj", tab.mask_steps.astype(np.float64), M) / tab.n
        panels.append({"title": "Mask per decision step (share per group)",
                       "uri": plots.heatmap(steps, [f"step {s + 1}" for s in
                                                    range(steps.shape[0])], groups,
                                            cbar="mean mask share")})
    for what, lab in (("sample", tab.sample), ("tissue", tab.tissue)):
        if lab is None:
            continue
        lab = np.asarray(lab)
        uniq = list(dict.fromkeys(lab.tolist()))[:20]
        mat = np.stack([mask_g[lab == u].mean(axis=0) for u in uniq])
        panels.append({"title": f"Aggregate mask per {what}",
                       "uri": plots.heatmap(mat, [str(u) for u in uniq], groups,
                                            cbar="mean mask share")})
    u = inp.unit
    note = (f"Model {tab.model}. TabNet's attention masks select features per {u} and decision "
            f"step, shared by all genes (one mask per {u}); the attribution on the right is per "
            "gene (" + (tab.method or "model explain") + "), here averaged over the explained "
            "genes after normalising each gene to shares. Masks say what the network looked at, "
            "attributions how much it moved each gene's prediction; where they disagree, trust "
            "the attribution for a gene-level statement."
            + (f" {inp.hidden[tab.model]}" if tab.model in inp.hidden else ""))
    return {"note": note, "panels": panels}


def render_report(results: dict, genes: Sequence[str], inp: ReportInputs,
                  max_bytes: int = MAX_BYTES) -> tuple[str, int]:
    """HTML of the report and the detail level used (0 = full). See the module docstring."""
    from .. import __version__

    env = _env()
    html, level = "", 0
    for level in range(4):
        dpi_before = plots.DPI
        if level == 3:
            plots.DPI = 55
        try:
            ctx = _context(results, genes, inp, level, __version__)
            html = env.get_template(TEMPLATE).render(**ctx)
        finally:
            plots.DPI = dpi_before
        if len(html.encode("utf-8")) <= max_bytes:
            break
    return html, level


def _context(results: dict, genes, inp: ReportInputs, level: int, version: str) -> dict:
    best = results[inp.best_model]
    warnings = list(inp.warnings)
    models = []
    for name, r in results.items():
        tol = ADDITIVITY_ATOL + 1e-3 * float(np.abs(r.prediction).max() if r.prediction.size else 0)
        additive = r.max_additivity_error <= tol
        if not additive:
            warnings.append(f"{name}: attributions are not additive (max |base + Σ − prediction| "
                            f"= {r.max_additivity_error:.3g}); read its panels with care.")
        models.append({"name": name, "method": r.method or "–", "n_cells": r.n,
                       "score": _fmt(inp.mean_scores.get(name)),
                       "max_err": f"{r.max_additivity_error:.2e}", "additive": additive,
                       "best": name == inp.best_model, "hidden": name in inp.hidden})
    warnings += [inp.hidden[m] for m in results if m in inp.hidden]
    if level > 0:
        warnings.append(["", "Report shortened to fit the size budget: fewer patches per gene.",
                         "Report shortened to fit the size budget: no patch gallery.",
                         "Report shortened to fit the size budget: no gallery, no spatial maps, "
                         "smaller figures."][level])
    gene_secs = [_gene_section(g, results, inp, level) for g in genes]
    dominated = [n for sec in gene_secs for n in (sec["folds"] or {}).get("flags", [])]
    if dominated:
        warnings.append(f"One fold dominates the attribution of {len(dominated)} gene/model "
                        f"pair(s): {', '.join(dominated)}. Rule: {dominance_rule(inp.unit)}. "
                        "See the per-fold shares under each gene.")
    heatmaps = []
    for name, r in list(inp.shown(results).items())[:6]:
        if float(np.abs(r.values).max(initial=0.0)) == 0.0:
            continue  # a constant model (mean baseline) has nothing to show
        groups = ordered_groups(r.groups)
        _, imp = group_importance(r.values, r.groups, groups)
        heatmaps.append({"title": f"Share of |attribution| per group: {name}",
                         "uri": plots.heatmap(group_shares(imp), groups, list(r.genes),
                                              cbar="share of |attribution|")})
    return {
        "title": f"tabst explain: {inp.run_name}" if inp.run_name else "tabst explain",
        "run_name": inp.run_name,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": version, "banner": inp.banner, "warnings": warnings,
        "mode_text": inp.mode_text, "models": models, "best_model": inp.best_model,
        "score_label": inp.score_label,
        "group_legend": [{"name": g, "colour": plots.group_colour(g)}
                         for g in ordered_groups(best.groups)],
        "genes": gene_secs,
        "cross": {"heatmaps": heatmaps, "tabnet": _tabnet_section(results, genes, inp)},
        "unit": inp.unit, "patch_text": inp.patch_text,
        "dominance_rule": dominance_rule(inp.unit),
    }


def write_report(path, results: dict, genes: Sequence[str], inp: ReportInputs,
                 max_bytes: int = MAX_BYTES) -> Path:
    """Render and write the report atomically; returns the path."""
    from ..outputs import atomic_output

    html, _ = render_report(results, genes, inp, max_bytes)
    path = Path(path)
    with atomic_output(path, "file", force=True, what="report") as tmp:
        tmp.write_text(html, encoding="utf-8")
    return path
