"""The run's tables: the leaderboard (ranking, honesty notes), per-gene scores, the terminal table.

Honest ranking (issue 13)
-------------------------
- A metric that a fold cannot define is refused (NaN, with a note), never counted as 0: the
  cell-wise Spearman ranks each cell's G genes, so with G < 2 (after the fold's gene selection)
  every model scores 0 and the constant ``mean`` baseline would rank first. The leaderboard
  is then ranked by the next metric (``genewise_pearson``, then ``mse``) and says so.
- Only models that finished every fold are ranked (``ranked`` = True). A model that failed on
  some folds is listed below them, its means over the folds it survived (``n_folds_ok`` of
  ``n_folds``), with a note; failed models come last.

``leaderboard.csv`` columns: ``rank`` (row order: ranked models first), ``ranked``,
``ranked_by`` (the metric that orders the ranked rows), ``model``, ``label``, ``codec``,
``genes``, ``status``, ``error``, ``n_folds``, ``n_folds_ok``, ``<metric>_mean`` / ``_sd``,
costs, ``refit``, ``note``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .evaluate import METRIC_DIRECTION, METRIC_LABEL, METRICS, mean_sd

MIN_GENES = {"cellwise_spearman": 2}  # fewest genes a fold needs for the metric to mean anything
WHY = {"cellwise_spearman": "a per-cell rank correlation needs at least 2 genes"}


def undefined_metrics(n_genes: int) -> dict:
    """Metrics a fold with ``n_genes`` genes cannot define → the reason, in words."""
    return {m: WHY[m] for m, k in MIN_GENES.items() if n_genes < k}


def refuse_undefined(metrics: dict, per_sample: dict, n_genes: int) -> list[str]:
    """Set the metrics a fold cannot define to NaN in its record and per-sample scores (in
    place); returns the refused metric names."""
    refused = list(undefined_metrics(n_genes))
    for m in refused:
        metrics[m] = float("nan")
        for v in per_sample.values():
            v[m] = float("nan")
    return refused


def refused_metrics(pf) -> dict:
    """Metrics refused on some fold of the per-fold table → note, e.g. ``cell-wise Spearman not
    computed (a per-cell rank correlation needs at least 2 genes; fold 0: 1 gene)``."""
    out = {}
    folds = pf.drop_duplicates("fold")[["fold", "n_genes"]]
    for m in MIN_GENES:
        bad = folds[folds["n_genes"].astype(int) < MIN_GENES[m]]
        if len(bad):
            out[m] = f"{METRIC_LABEL[m]} not computed ({WHY[m]}; {_where(bad, len(folds))})"
    return out


def _where(bad, n_folds: int) -> str:
    """``every fold has 1 gene`` or ``fold 0: 1 gene, fold 3: 0 genes`` (at most 5 listed)."""
    def genes(g):
        return f"{int(g)} gene{'' if int(g) == 1 else 's'}"

    if len(bad) == n_folds and bad["n_genes"].nunique() == 1:
        return f"every fold has {genes(bad['n_genes'].iloc[0])}"
    items = [f"fold {int(k)}: {genes(g)}" for k, g in zip(bad["fold"], bad["n_genes"])]
    return ", ".join(items[:5]) + (f" and {len(items) - 5} more folds" if len(items) > 5 else "")


def ranking_metric(primary: str, refused) -> str:
    """``primary``, or the next metric (in ``METRICS`` order after it) that is not refused."""
    i = METRICS.index(primary)
    for m in METRICS[i:] + METRICS[:i]:
        if m not in refused:
            return m
    return primary


def _model_row(name, d, codecs: dict, refit: dict, genes_label: str) -> dict:
    """One leaderboard row from the per-fold records ``d`` of one model."""
    import pandas as pd

    ok = d[d["status"] == "ok"]
    n, n_ok = len(d), len(ok)
    status = "ok" if n_ok == n else ("failed" if n_ok == 0 else f"partial ({n_ok}/{n} folds)")
    errors = [e for e in d["error"].tolist() if isinstance(e, str) and e]
    row = {"model": name, "label": d["label"].iloc[0], "codec": codecs.get(name, ""),
           "genes": genes_label, "status": status, "error": errors[0] if errors else "",
           "n_folds": n, "n_folds_ok": n_ok}
    for m in METRICS:
        row[f"{m}_mean"], row[f"{m}_sd"] = mean_sd(ok[m].tolist())
    row["n_const_truth_genes"] = int(ok["n_const_truth_genes"].max()) if n_ok else 0
    row["fit_seconds"] = float(ok["fit_seconds"].mean()) if n_ok else np.nan
    row["predict_seconds"] = float(ok["predict_seconds"].mean()) if n_ok else np.nan
    row["peak_mem_mb"] = float(ok["peak_mem_mb"].max()) if n_ok else np.nan
    nf = d["n_features"].iloc[0]
    row["n_features"] = int(nf) if pd.notna(nf) else 0
    row["refit"] = (refit.get(name) or {}).get("status", "off")
    return row


def _row_note(r) -> str:
    if r["n_folds_ok"] == 0:
        return "failed on every fold: not ranked"
    if r["n_folds_ok"] < r["n_folds"]:
        return (f"failed on {r['n_folds'] - r['n_folds_ok']} of {r['n_folds']} folds: not ranked; "
                f"its means are over the {r['n_folds_ok']} folds it finished")
    return ""


def leaderboard_frame(pf, primary: str, codecs: dict, refit: dict, genes_label: str = ""):
    """One row per model from the per-fold table (see the module docstring for the order).

    Parameters
    ----------
    pf : DataFrame
        ``per_fold.csv``: one record per model x fold (``status``, ``n_genes``, metrics...).
    primary : str
        The configured ranking metric; replaced by the next one when a fold refused it.
    codecs, refit : dict
        Codec label and refit record of each model.
    genes_label : str
        The run's gene selection (column ``genes``; every fold is scored on the genes it
        selected).
    """
    import pandas as pd

    lb = pd.DataFrame([_model_row(name, d, codecs, refit, genes_label)
                       for name, d in pf.groupby("model", sort=False)])
    by = ranking_metric(primary, refused_metrics(pf))
    lb["ranked"] = lb["n_folds_ok"] == lb["n_folds"]
    lb["_tier"] = np.where(lb["ranked"], 0, np.where(lb["n_folds_ok"] > 0, 1, 2))
    lb["_key"] = -METRIC_DIRECTION[by] * lb[f"{by}_mean"]
    lb = lb.sort_values(["_tier", "_key"], na_position="last", kind="stable") \
        .drop(columns=["_tier", "_key"]).reset_index(drop=True)
    lb.insert(0, "rank", np.arange(1, len(lb) + 1))
    lb.insert(2, "ranked_by", by)
    lb.insert(2, "ranked", lb.pop("ranked"))
    lb["note"] = [_row_note(r) for _, r in lb.iterrows()]
    return lb


def leaderboard_notes(lb, pf, primary: str) -> list[str]:
    """The notes a reader of the leaderboard must see (run.json ``leaderboard_notes``, the
    terminal table): refused metrics, a ranking metric other than the configured one, models
    not ranked because they failed on some folds."""
    refused = refused_metrics(pf)
    notes = list(refused.values())
    by = ranking_metric(primary, refused)
    if by != primary:
        notes.append(f"ranked by {METRIC_LABEL[by]} instead of {METRIC_LABEL[primary]} "
                     "(the configured primary metric).")
    for _, r in lb[(lb["n_folds_ok"] > 0) & ~lb["ranked"]].iterrows():
        notes.append(f"{r['label']}: {r['note']}.")
    return notes


def per_gene_frame(gene_scores, genes, labels, fold_ids):
    """One row per model x gene predicted in at least one of the model's successful folds.

    With a per-fold gene selection a gene counts only in the folds that selected it:
    ``pearson_mean`` / ``pearson_sd`` / ``mse_mean`` are over those folds (``n_folds`` of them),
    ``pearson_fold_<k>`` is empty where fold k did not select the gene."""
    import pandas as pd

    frames = []
    G = len(genes)
    for name, by_fold in gene_scores.items():
        if not by_fold:
            continue
        ks = sorted(by_fold)
        r, e, ct, cp = (np.full((len(ks), G), np.nan) for _ in range(4))
        seen = np.zeros((len(ks), G), dtype=bool)
        for i, k in enumerate(ks):
            pr, pe, pct, pcp, idx = by_fold[k]
            r[i, idx], e[i, idx] = pr, pe
            ct[i, idx], cp[i, idx] = pct, pcp
            seen[i, idx] = True
        n = seen.sum(0)
        keep = n > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                sd = np.where(n > 1, np.nanstd(r, axis=0, ddof=1), 0.0)
                d = {"model": name, "label": labels[name], "gene": list(np.asarray(genes)[keep]),
                     "pearson_mean": np.nanmean(r, 0)[keep], "pearson_sd": sd[keep],
                     "mse_mean": np.nanmean(e, 0)[keep], "n_folds": n[keep],
                     "n_folds_constant_truth": np.nansum(ct, 0)[keep].astype(int),
                     "n_folds_constant_pred": np.nansum(cp, 0)[keep].astype(int)}
        for i, k in enumerate(ks):
            d[f"pearson_fold_{k}"] = r[i][keep]
        frames.append(pd.DataFrame(d))
    if not frames:
        return pd.DataFrame(columns=["model", "label", "gene", "pearson_mean", "pearson_sd",
                                     "mse_mean", "n_folds", "n_folds_constant_truth",
                                     "n_folds_constant_pred"])
    return pd.concat(frames, ignore_index=True)


def genes_label(gsel: dict, sel_fold: dict, n_store: int) -> str:
    """Leaderboard text of the gene selection, e.g. ``hvg:50 variance (50/8000 per fold)``."""
    n = sorted({len(v) for v in sel_fold.values()})
    per = str(n[0]) if len(n) == 1 else f"{n[0]}-{n[-1]}"
    if gsel["select"] == "all":
        return f"all ({n_store})"
    if gsel["select"] == "list":
        return f"list {Path(gsel['file']).name} ({per}/{n_store})"
    return f"hvg:{gsel['k']} {gsel['flavor']} ({per}/{n_store} per fold)"


SHORT = {"cellwise_spearman": "cell Spearman", "genewise_pearson": "gene Pearson", "mse": "MSE"}


def _caption(run: dict, by: str) -> str:
    """The table's caption: gene selection, how to read it, and the run's notes (in yellow)."""
    gs = run.get("gene_selection") or {}
    text = ""
    if gs.get("select", "all") == "hvg":
        text = f"genes: hvg:{gs.get('k')} {gs.get('flavor')} (per fold, training rows); "
    elif gs.get("select", "all") == "list":
        text = f"genes: list {Path(str(gs.get('file'))).name}; "
    text += (f"mean ± sd over folds; best in bold green; ★ ranks the table "
             f"({METRIC_LABEL[by]}); — rank: not ranked; fit s = mean per fold")
    from rich.markup import escape

    for note in run.get("leaderboard_notes") or []:
        text += f"\n[yellow]note: {escape(note)}[/]"
    return text


def _metric_cell(mu: float, sd: float, best) -> str:
    if not np.isfinite(mu):
        return "—"
    s = f"{mu:.4f}\n[dim]±{sd:.3f}[/]"
    if best is not None and np.isclose(mu, best):
        s = f"[bold green]{mu:.4f}[/]" + s[len(f"{mu:.4f}"):]
    return s


def _best(lb) -> dict:
    """Best mean of each metric over the ranked models (all models when none is ranked)."""
    pool = lb[lb["ranked"]] if lb["ranked"].any() else lb
    best = {}
    for m in METRICS:
        v = pool[f"{m}_mean"].to_numpy(dtype=float)
        if np.isfinite(v).any():
            best[m] = np.nanmax(v) if METRIC_DIRECTION[m] > 0 else np.nanmin(v)
    return best


def leaderboard_table(run_dir):
    """A rich Table of ``leaderboard.csv``: best value per metric (over the ranked models) in
    bold green, the ranking metric first, unsafe split / failures / notes flagged."""
    import pandas as pd
    from rich import box
    from rich.table import Table

    run_dir = Path(run_dir)
    lb = pd.read_csv(run_dir / "leaderboard.csv", keep_default_na=True)
    run = json.loads((run_dir / "run.json").read_text())
    if "ranked" not in lb:  # a run of an older version: every model with all folds
        lb["ranked"] = lb["n_folds_ok"] == lb["n_folds"]
    by = str(lb["ranked_by"].iloc[0]) if "ranked_by" in lb and len(lb) else run["primary_metric"]
    order = [by] + [m for m in METRICS if m != by]
    title = f"tabst compare · {run['config_name']} · folds: {run['folds_scheme']}"
    if run.get("unsafe_random_split"):
        title += " · [bold red]UNSAFE RANDOM SPLIT (leaky)[/]"
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD,
              caption=_caption(run, by), caption_justify="left")
    t.add_column("#", justify="right")
    t.add_column("model", no_wrap=True)
    for m in order:
        arrow = "↑" if METRIC_DIRECTION[m] > 0 else "↓"
        t.add_column(f"{SHORT[m]} {arrow}" + ("★" if m == by else ""), justify="right",
                     min_width=8)
    for c in ("fit s", "pred s", "MB"):
        t.add_column(c, justify="right")
    t.add_column("status")
    best = _best(lb)
    for _, r in lb.iterrows():
        cells = [str(r["rank"]) if bool(r["ranked"]) else "—", str(r["label"])]
        cells += [_metric_cell(r[f"{m}_mean"], r[f"{m}_sd"], best.get(m)) for m in order]
        for c, fmt in (("fit_seconds", "{:.2f}"), ("predict_seconds", "{:.3f}"),
                       ("peak_mem_mb", "{:.0f}")):
            cells.append(fmt.format(r[c]) if np.isfinite(r[c]) else "—")
        st = str(r["status"])
        cells.append(st if st == "ok" else f"[red]{st}[/]")
        t.add_row(*cells)
    return t
