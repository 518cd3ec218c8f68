"""``report.html`` of a multi-embedding compare run (:mod:`tabst.compare_multi`), from its run
folder alone: the encoder x model table of the ranking metric, the stacked leaderboard, and per
embedding its attrs (a loud badge for random weights) and a link to its own report.

One offline file, like :mod:`tabst.report.render`'s: inline CSS, no script, no remote URL.
:func:`render_any` renders either kind of run folder (``tabst report RUN``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from urllib.parse import quote

from ..errors import TabstError
from .common import fmt, mean_sd_text
from .render import TEMPLATE_DIR, _read_csv, _read_json, _short

REQUIRED = ("run.json", "leaderboard.csv", "encoder_table.csv")
#: embedding attrs shown first in each embedding's section (the rest follow)
KEY_ATTRS = ("encoder", "weights_id", "dim", "patch_size", "resize", "layer", "weights")


def render_any(run_dir, out=None) -> Path:
    """Render the report of a compare run folder: the multi-embedding page for a
    multi-embedding run, else :func:`tabst.report.render.render_report`."""
    from ..compare_multi import is_multi
    from .render import render_report

    if is_multi(run_dir):
        return render_multi_report(run_dir, out)
    return render_report(run_dir, out)


def is_random(attrs: dict) -> bool:
    """Whether an embedding's attrs say it was computed with random (untrained) weights."""
    rw = attrs.get("random_weights")
    if isinstance(rw, str):
        rw = rw.strip().lower() in ("1", "true", "yes")
    return bool(rw) or str(attrs.get("weights", "")).lower() == "random"


def load_multi(run_dir) -> dict:
    """The top-level files of a multi-embedding run (raises :class:`TabstError` when missing)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TabstError(f"{run_dir}: no such run folder. Create one with `tabst compare STORE "
                         "--features a,b`.")
    missing = [n for n in REQUIRED if not (run_dir / n).exists()]
    if missing:
        raise TabstError(f"{run_dir}: not a complete multi-embedding run (missing "
                         f"{', '.join(missing)}). Re-run `tabst compare`.")
    return {"run": _read_json(run_dir / "run.json"),
            "leaderboard": _read_csv(run_dir / "leaderboard.csv").fillna({"error": ""}),
            "encoder_table": _read_csv(run_dir / "encoder_table.csv")}


def _context(R: dict, run_dir: Path, out: Path, run_name: str) -> dict:
    from ..compare_multi import SUB_DIR, best_cells, table_models

    run, lb, enc = R["run"], R["leaderboard"], R["encoder_table"]
    labels_m = run.get("metric_labels") or {}
    direction = run.get("metric_direction") or {}
    by = str(run.get("ranked_by") or run.get("primary_metric"))
    metrics = [by] + [m for m in ("cellwise_spearman", "genewise_pearson", "mse") if m != by]
    labels = run.get("labels") or {}
    models = table_models(enc)
    best = best_cells(enc, models, by)
    table = []
    for i, r in enc.iterrows():
        cells = []
        for m in models:
            mu, sd = float(r[f"{m}_mean"]), float(r[f"{m}_sd"])
            cells.append({"text": mean_sd_text(mu, sd),
                          "best": (i, m) in best["column"], "overall": (i, m) == best["overall"]})
        attrs = (run.get("embedding_attrs") or {}).get(str(r["embedding"])) or {}
        table.append({"embedding": str(r["embedding"]), "cells": cells,
                      "random": is_random(attrs)})
    ranked_best = {m: lb.loc[lb["ranked"].astype(bool), f"{m}_mean"].astype(float) for m in metrics}
    best_val = {}
    for m, v in ranked_best.items():
        v = v[v.notna()]
        if len(v):
            best_val[m] = float(v.max() if direction.get(m, 1) > 0 else v.min())
    rows = []
    for _, r in lb.iterrows():
        cells = []
        for m in metrics:
            mu, sd = float(r[f"{m}_mean"]), float(r[f"{m}_sd"])
            cells.append({"text": mean_sd_text(mu, sd),
                          "best": m in best_val and math.isfinite(mu)
                          and math.isclose(mu, best_val[m], rel_tol=1e-9, abs_tol=1e-12)})
        rows.append({"rank": int(r["rank"]) if bool(r["ranked"]) else "—",
                     "embedding": str(r["embedding"]), "label": str(r["label"]),
                     "cells": cells, "status": str(r["status"]), "ok": r["status"] == "ok",
                     "refit": str(r.get("refit", "")),
                     "note": r["note"] if isinstance(r.get("note"), str) else ""})
    embs = []
    for name in run.get("embeddings") or []:
        attrs = (run.get("embedding_attrs") or {}).get(name) or {}
        sub = run_dir / SUB_DIR / name
        rel = Path(os.path.relpath(sub / "report.html", out.parent)).as_posix()
        shown = [k for k in KEY_ATTRS if k in attrs]
        shown += [k for k in attrs if k not in shown and k not in ("description", "versions",
                                                                   "settings")]
        top = lb[lb["embedding"].astype(str) == name].head(1)
        embs.append({"name": name, "random": is_random(attrs),
                     "attrs": [(k, _short(attrs[k], 200)) for k in shown],
                     "description": str(attrs.get("description", "")),
                     "href": quote(rel), "report_exists": (sub / "report.html").exists(),
                     "sub_dir": f"{SUB_DIR}/{name}",
                     "best": None if top.empty else f"{top['label'].iloc[0]} "
                                                   f"({fmt(top[f'{by}_mean'].iloc[0])})"})
    timing = run.get("timing") or {}
    return {"title": f"tabst compare · {run.get('config_name', '')} · {len(embs)} embeddings",
            "run": run, "run_name": run_name, "by_label": labels_m.get(by, by),
            "up": direction.get(by, 1) > 0,
            "model_labels": [labels.get(m, m) for m in models], "table": table,
            "metric_cols": [{"label": labels_m.get(m, m), "up": direction.get(m, 1) > 0,
                             "primary": m == by} for m in metrics],
            "rows": rows, "embeddings": embs,
            "random": [e["name"] for e in embs if e["random"]],
            "unsafe": bool(run.get("unsafe_random_split")),
            "folds": run.get("folds") or [], "store": run.get("store") or {},
            "notes": run.get("leaderboard_notes") or [],
            "timing": timing, "emb_seconds": timing.get("embeddings_seconds") or {},
            "command": " ".join(run.get("command") or []),
            "versions": [(k, v) for k, v in (run.get("versions") or {}).items() if v],
            "fmt": fmt}


def render_multi_report(run_dir, out=None, run_name: str | None = None) -> Path:
    """Build the top-level ``report.html`` of a multi-embedding run; return its path."""
    import jinja2

    from ..outputs import atomic_output, prepare_output

    run_dir = Path(run_dir)
    R = load_multi(run_dir)
    out = prepare_output(Path(out) if out is not None else run_dir / "report.html", "file",
                         force=True)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             autoescape=jinja2.select_autoescape(["html"]),
                             undefined=jinja2.StrictUndefined)
    html = env.get_template("multi_report.html").render(
        **_context(R, run_dir, out, run_name or run_dir.name))
    with atomic_output(out, "file", force=True, what="report") as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out
