"""The report's "Hyperparameter tuning" section, from the files of a tuned run folder alone.

Sources: ``tuning.csv`` (one row per trial of every study), run.json ``tuning`` (the chosen
parameters per model and outer fold, the spaces) and the Optuna journals ``tuning/<model>/
fold_<k>.log`` (for fANOVA parameter importances only). A missing or unreadable journal costs the
importances, nothing else; a run without tuning has no section (:func:`load_tuning` is None).

:func:`load_tuning` reads once (fANOVA takes a second per study); :func:`tuning_section` draws
the figures at the report's current resolution and builds the template's rows.
"""
from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from .common import b64img, fmt, setup_mpl

SUFFIX = "+tuned"   # as tabst.tuning.tuned_key (not imported: the report reads files only)


def _fold_order(folds) -> list[str]:
    folds = [str(f) for f in folds]
    num = sorted((f for f in folds if f.isdigit()), key=int)
    return num + sorted(f for f in folds if not f.isdigit() and f != "all") + \
        (["all"] if "all" in folds else [])


def _fold_name(f: str) -> str:
    return "refit (all)" if f == "all" else f"fold {f}"


def _json(s, default):
    if not isinstance(s, str):
        return default
    try:
        return json.loads(s)
    except ValueError:
        return default


def _val(v) -> str:
    """A parameter value for a table cell."""
    if v is None:
        return "—"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or float(v).is_integer() and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.3g}"


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def load_tuning(run_dir, run: dict) -> dict | None:
    """Everything the section needs that does not depend on the figure resolution (None: the
    run was not tuned)."""
    import pandas as pd

    run_dir = Path(run_dir)
    info = run.get("tuning")
    path = run_dir / "tuning.csv"
    if not info and not path.exists():
        return None
    info = info if isinstance(info, dict) else {}
    notes, trials = [], None
    if not run.get("tuning"):
        notes.append("run.json has no tuning record (an older run?): the chosen parameters are "
                     "read from tuning.csv (the best complete trial of each study).")
    if path.exists():
        try:
            trials = pd.read_csv(path, dtype={"fold": str, "model": str})
            missing = {"model", "fold", "trial", "state", "inner_score"} - set(trials.columns)
            if missing:
                raise ValueError(f"columns missing: {', '.join(sorted(missing))}")
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError,
                UnicodeDecodeError) as e:
            notes.append(f"tuning.csv is unreadable ({str(e).strip()[:200]}): no optimisation "
                         "history; the rest comes from run.json.")
            trials = None
    else:
        notes.append("tuning.csv is missing: no optimisation history; the rest comes from "
                     "run.json.")
    if trials is not None:
        trials = trials.copy()
        trials["state"] = trials["state"].astype(str).str.lower()
        for c, d in (("default", False), ("pruned", False), ("seconds", np.nan),
                     ("params", "{}"), ("inner_scores", "[]")):
            if c not in trials.columns:
                trials[c] = d
        trials["default"] = trials["default"].astype(str).str.lower() == "true"
        for c in ("trial", "inner_score", "seconds"):
            trials[c] = pd.to_numeric(trials[c], errors="coerce")
        trials = trials[trials["trial"].notna()]
    models = list((info.get("models") or {}).keys())
    if trials is not None:
        models += [m for m in dict.fromkeys(trials["model"]) if m not in models]
    metric = str(info.get("metric") or run.get("primary_metric") or run.get("ranked_by")
                 or "cellwise_spearman")  # what the trials were scored on
    return {"info": info, "trials": trials, "models": models, "notes": notes, "metric": metric,
            "direction": (run.get("metric_direction") or {}).get(metric, -1 if metric == "mse"
                                                                 else 1),
            "importance": {m: _importances(run_dir, m, info, trials) for m in models}}


def _studies(run_dir: Path, model: str, folds: list[str]):
    """{fold: optuna Study or the reason it could not be read} for the outer folds' journals."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    out = {}
    for f in folds:
        p = run_dir / "tuning" / model / f"fold_{f}.log"
        if not p.is_file():   # JournalFileBackend would create it
            out[f] = f"no journal {p.relative_to(run_dir)}"
            continue
        try:
            st = JournalStorage(JournalFileBackend(str(p)))
            names = optuna.study.get_all_study_names(st)
            if not names:
                raise ValueError("no study in it")
            out[f] = optuna.load_study(study_name=names[-1], storage=st)
        except Exception as e:   # any damage: the section renders without it
            out[f] = f"journal {p.relative_to(run_dir)} unreadable ({type(e).__name__}: " \
                     f"{str(e)[:120]})"
    return out


def _importances(run_dir: Path, model: str, info: dict, trials) -> dict:
    """fANOVA importances per outer-fold study, averaged: {rows, n, skipped}."""
    import optuna

    folds = list(((info.get("models") or {}).get(model) or {}).keys())
    if trials is not None:
        folds += list(trials.loc[trials["model"] == model, "fold"].unique())
    folds = [f for f in _fold_order(set(folds)) if f != "all"]
    per, skipped = {}, []
    for f, s in _studies(run_dir, model, folds).items():
        if isinstance(s, str):
            skipped.append(f"{_fold_name(f)}: {s}")
            continue
        done = [t for t in s.trials if t.state == optuna.trial.TrialState.COMPLETE
                and t.value is not None and math.isfinite(t.value)]
        if len(done) < 2:
            skipped.append(f"{_fold_name(f)}: {len(done)} complete trial(s), fANOVA needs 2")
            continue
        if np.ptp([t.value for t in done]) == 0:
            skipped.append(f"{_fold_name(f)}: every complete trial scored the same "
                           "(constant objective)")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(
                    s, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except Exception as e:
            skipped.append(f"{_fold_name(f)}: fANOVA failed ({type(e).__name__}: {e})")
            continue
        per[f] = {k: float(v) for k, v in imp.items()}
    keys = sorted({k for d in per.values() for k in d})
    rows = []
    for k in keys:
        v = np.array([d.get(k, 0.0) for d in per.values()])
        rows.append({"param": k, "mean": float(v.mean()), "lo": float(v.min()),
                     "hi": float(v.max())})
    rows.sort(key=lambda r: -r["mean"])
    top = max([r["mean"] for r in rows] + [1e-12])
    for r in rows:
        r.update(text=fmt(r["mean"], 3), range=f"{fmt(r['lo'], 2)}–{fmt(r['hi'], 2)}",
                 width=round(100 * r["mean"] / top, 1))
    return {"rows": rows, "n": len(per), "n_folds": len(folds), "skipped": skipped}


# --------------------------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------------------------
def _plot_values(d) -> np.ndarray:
    """The inner score to draw per trial: complete -> its score; pruned -> the mean of the inner
    folds it finished (NaN if it was stopped inside the first one: its stored value is then a
    boosting-round validation loss, another scale); failed -> NaN."""
    out = []
    for _, r in d.iterrows():
        if r["state"] == "complete":
            out.append(float(r["inner_score"]))
        elif r["state"] == "pruned":
            sc = [x for x in _json(r["inner_scores"], []) if isinstance(x, (int, float))]
            out.append(float(np.mean(sc)) if sc else np.nan)
        else:
            out.append(np.nan)
    return np.array(out, dtype=float)


def fig_history(trials, model: str, label: str, metric_label: str, direction: int, dpi: int):
    """Small multiples: inner score per trial, one panel per study (outer folds, refit)."""
    d_all = trials[trials["model"] == model]
    folds = _fold_order(d_all["fold"].unique())
    if not folds:
        return None
    plt = setup_mpl()
    from matplotlib.ticker import MaxNLocator

    nc = min(len(folds), 5)
    nr = math.ceil(len(folds) / nc)
    fig, axes = plt.subplots(nr, nc, figsize=(3.3 * nc + 0.6, 2.9 * nr + 1.1), squeeze=False,
                             sharey=True)
    vals = {f: _plot_values(d_all[d_all["fold"] == f].sort_values("trial")) for f in folds}
    fin = np.concatenate([v[np.isfinite(v)] for v in vals.values()])
    fin = fin if fin.size else np.array([0.0])
    lo, hi = float(fin.min()), float(fin.max())
    span = (hi - lo) or 1.0
    floor = lo - 0.12 * span
    for ax in axes.flat[len(folds):]:
        ax.axis("off")
    for ax, f in zip(axes.flat, folds):
        d = d_all[d_all["fold"] == f].sort_values("trial")
        x, v, st = d["trial"].to_numpy(), vals[f], d["state"].to_numpy()
        comp = (st == "complete") & np.isfinite(v)
        if comp.any():
            best = (np.fmax if direction > 0 else np.fmin).accumulate(np.where(comp, v, np.nan))
            ax.step(x, best, where="post", color="#38761d", lw=2, label="best so far")
            ax.scatter(x[comp], v[comp], s=30, color="#0b5394", zorder=3, label="complete")
        pr = st == "pruned"
        ax.scatter(x[pr & np.isfinite(v)], v[pr & np.isfinite(v)], s=36, marker="x",
                   color="#e69138", zorder=3, label="pruned (mean of inner folds done)")
        ax.scatter(x[pr & ~np.isfinite(v)], np.full((pr & ~np.isfinite(v)).sum(), floor),
                   s=36, marker="v", color="#e69138", zorder=3,
                   label="pruned in the first inner fold (no score)")
        fl = st == "fail"
        ax.scatter(x[fl], np.full(fl.sum(), floor), s=40, marker="X", color="#990000",
                   zorder=3, label="failed")
        dft = d["default"].to_numpy(dtype=bool) & np.isfinite(v)
        ax.scatter(x[dft], v[dft], s=170, marker="*", color="#bf9000", edgecolors="black",
                   linewidths=0.6, zorder=4, label="default parameters (trial 0)")
        ax.set_title(_fold_name(f))
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(floor - 0.06 * span, hi + 0.08 * span)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"inner {metric_label}")
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if not hasattr(h, "get_offsets") or len(h.get_offsets()):   # skip empty markers
                handles.setdefault(lab, h)
    ncol = min(3, max(1, len(handles)))
    h_in = fig.get_figheight()
    leg = (0.28 * math.ceil(len(handles) / ncol) + 0.05) / h_in
    fig.legend(list(handles.values()), list(handles), loc="lower center", frameon=False,
               ncol=ncol, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"{label}: optimisation history (inner CV on each study's training samples)")
    fig.tight_layout(rect=(0, leg, 1, 1))
    return b64img(fig, dpi)


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def _chosen(T: dict, model: str) -> dict:
    """{fold: {"values": {param: value}, "best": float, "default": float, counts}} per study."""
    out = {}
    for f, r in ((T["info"].get("models") or {}).get(model) or {}).items():
        if isinstance(r, dict):
            out[str(f)] = {"values": {**(r.get("params") or {}), **(r.get("features") or {})},
                           "best": r.get("best_inner"), "default": r.get("default_inner"),
                           "note": r.get("note") or "", "trials": r.get("n_trials"),
                           "pruned": r.get("n_pruned"), "failed": r.get("n_failed")}
    tr = T["trials"]
    if tr is not None:
        for f, d in tr[tr["model"] == model].groupby("fold"):
            comp = d[(d["state"] == "complete") & np.isfinite(d["inner_score"].astype(float))]
            if f not in out and not comp.empty:
                b = comp.loc[comp["inner_score"].idxmax() if T["direction"] > 0
                             else comp["inner_score"].idxmin()]
                df = comp[comp["default"]]
                out[f] = {"values": _json(b["params"], {}), "best": float(b["inner_score"]),
                          "default": float(df["inner_score"].iloc[0]) if len(df) else None,
                          "note": ""}
            if f in out:
                out[f].update(trials=len(d), pruned=int((d["state"] == "pruned").sum()),
                              failed=int((d["state"] == "fail").sum()),
                              seconds=float(np.nansum(d["seconds"].astype(float))))
    return out


def _stability(values: list, kind: str) -> str:
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return "—"
    numeric = kind != "choice" and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                       for v in vals)
    if numeric:
        a = np.array(vals, dtype=float)
        if np.ptp(a) == 0:
            return "identical"
        cv = a.std() / abs(a.mean()) if a.mean() else float("inf")
        return f"range {_val(a.min())}–{_val(a.max())} · CV {fmt(cv, 2)}"
    top, n = Counter(map(_val, vals)).most_common(1)[0]
    return f"{n}/{len(vals)} folds agree on {top}"


def _param_table(T: dict, model: str, chosen: dict) -> dict:
    folds = _fold_order(chosen)
    spaces = T["info"].get("spaces") or {}
    space = {**(spaces.get(model) or {}), **(spaces.get("features") or {})}
    keys = list(space) or sorted({k for c in chosen.values() for k in c["values"]})
    keys += sorted({k for c in chosen.values() for k in c["values"]} - set(keys) - {"n_a"})
    tr = T["trials"]
    dflt = {}
    if tr is not None:
        d0 = tr[(tr["model"] == model) & tr["default"]]
        dflt = _json(d0["params"].iloc[0], {}) if len(d0) else {}
    rows = []
    for k in keys:
        kind = next(iter(space[k])) if isinstance(space.get(k), dict) and space[k] else ""
        rng = list(space[k][kind]) if kind else []
        vals = [chosen[f]["values"].get(k) for f in folds]
        outer = [chosen[f]["values"].get(k) for f in folds if f != "all"]
        rows.append({"param": k, "space": f"{kind} {rng}" if kind else "",
                     "default": _val(dflt.get(k)), "vals": [_val(v) for v in vals],
                     "stability": _stability(outer, kind)})
    score = [{"param": "best inner score", "vals": [fmt(chosen[f].get("best")) for f in folds]},
             {"param": "default inner score",
              "vals": [fmt(chosen[f].get("default")) for f in folds]}]
    notes = [f"{_fold_name(f)}: {chosen[f]['note']}" for f in folds if chosen[f].get("note")]
    return {"folds": [_fold_name(f) for f in folds], "rows": rows, "score_rows": score,
            "notes": notes}


def _gain(m: str, lb, per_fold, order_m, labels_m, direction, chosen) -> dict:
    """Default vs tuned on the outer test folds (the leaderboard's numbers)."""
    key = m + SUFFIX
    by = {r["model"]: r for _, r in lb.iterrows()}
    d, t = by.get(m), by.get(key)

    def cell(r, met):
        if r is None or not int(r["n_folds_ok"]):
            return float("nan"), "—"
        mu, sd = float(r[f"{met}_mean"]), float(r[f"{met}_sd"])
        return mu, (f"{fmt(mu)} ± {fmt(sd)}" if math.isfinite(mu) else "—")

    mets = []
    for met in order_m:
        (dm, dt), (tm, tt) = cell(d, met), cell(t, met)
        delta = tm - dm
        rel = direction[met] * delta / abs(dm) * 100 if math.isfinite(delta) and dm else np.nan
        tie = math.isfinite(delta) and delta == 0
        mets.append({"label": labels_m[met], "default": dt, "tuned": tt,
                     "delta": "0" if tie else f"{delta:+.3f}" if math.isfinite(delta) else "—",
                     "rel": "0 %" if tie else f"{rel:+.1f} %" if math.isfinite(rel) else "—",
                     "worse": bool(math.isfinite(delta) and direction[met] * delta < 0),
                     "better": bool(math.isfinite(delta) and direction[met] * delta > 0)})
    wins = "—"
    if per_fold is not None and {"model", "fold", "status"} <= set(per_fold.columns):
        pf = per_fold[per_fold["status"] == "ok"]
        a = pf[pf["model"] == m].set_index("fold")[order_m[0]]
        b = pf[pf["model"] == key].set_index("fold")[order_m[0]]
        both = a.index.intersection(b.index)
        if len(both):
            diff = direction[order_m[0]] * (b[both] - a[both])
            ties = int((diff == 0).sum())
            wins = f"{int((diff > 0).sum())}/{len(both)} folds" + (f" ({ties} tied)" if ties else "")
    outer = [c for f, c in chosen.items() if f != "all"]

    def mean_of(k):
        v = [float(c[k]) for c in outer if isinstance(c.get(k), (int, float))]
        v = [x for x in v if math.isfinite(x)]
        return fmt(np.mean(v)) if v else "—"
    return {"label_default": str(d["label"]) if d is not None else f"{m} (not run)",
            "label_tuned": str(t["label"]) if t is not None else key, "metrics": mets,
            "wins": wins, "inner_default": mean_of("default"), "inner_best": mean_of("best"),
            **{k: sum(int(c.get(k, 0) or 0) for c in chosen.values())
               for k in ("trials", "pruned", "failed")},
            "seconds": fmt(sum(float(c.get("seconds", 0) or 0) for c in chosen.values()), 1)}


def tuning_section(T: dict | None, lb, per_fold, labels: dict, order_m: list, labels_m: dict,
                   direction: dict, dpi: int) -> dict | None:
    """The template's ``tuning`` (None: no section)."""
    if T is None:
        return None
    primary = T["metric"] if T["metric"] in labels_m else order_m[0]   # what the studies scored
    notes = list(T["notes"])
    if primary != order_m[0]:
        notes.append(f"The studies optimised the inner {labels_m[primary]} (the configured primary "
                     f"metric); the leaderboard ranks by {labels_m[order_m[0]]} instead (see its "
                     "notes).")
    models = []
    for m in T["models"]:
        chosen = _chosen(T, m)
        label = labels.get(m + SUFFIX, f"{m} (tuned)")
        hist = None
        if T["trials"] is not None and (T["trials"]["model"] == m).any():
            hist = fig_history(T["trials"], m, label, labels_m[primary], T["direction"], dpi)
        models.append({"model": m, "label": label, "history": hist,
                       "params": _param_table(T, m, chosen), "importance": T["importance"][m],
                       "gain": _gain(m, lb, per_fold, order_m, labels_m, direction, chosen)})
    info = T["info"]
    return {"models": models, "notes": notes, "primary_label": labels_m[primary],
            "rank_label": labels_m[order_m[0]],
            "trials": info.get("trials"), "minutes": info.get("minutes"),
            "inner_folds": info.get("inner_folds"),
            "seconds": fmt(info["seconds"], 1) if isinstance(info.get("seconds"), (int, float))
            else ""}
