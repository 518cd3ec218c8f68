"""Several embeddings in one ``tabst compare`` (``--features a,b``, config ``embedding: [a, b]``).

Every model runs on every embedding with the same folds: each embedding gets one complete,
ordinary run folder (made by the single-embedding code path, :func:`tabst.compare.run_compare`,
with ``embedding`` set to that one name), and the top level compares them::

    <run>/embeddings/<emb>/    an ordinary compare run (leaderboard.csv, predictions.h5,
                               models/, report.html, ...) on embedding <emb>
    <run>/leaderboard.csv      every sub-leaderboard stacked, ``embedding`` first, ranked
                               again by the ranking metric (``embedding_rank``: the rank
                               within its own sub-run)
    <run>/encoder_table.csv    one row per embedding, per model the ranking metric's mean and sd
                               over folds: ``<model>`` ("mean ± sd"), ``<model>_mean``,
                               ``<model>_sd``
    <run>/run.json             kind "multi-embedding", the embeddings with their attrs and
                               sub-run paths, the folds (checked identical in every sub-run),
                               the ranking metric, timing
    <run>/config.yaml          the resolved config (``embedding`` = the list)
    <run>/report.html          encoder x model table, stacked leaderboard, one section per
                               embedding with a link to its own report (:mod:`tabst.report.multi`)

The whole folder is built in a hidden temp folder and renamed when complete (an interrupted run
leaves nothing at ``--out``); ``max_hours`` bounds the whole run (each sub-run gets the time
left). ``tabst predict`` / ``tabst explain`` on such a folder pick one sub-run with
:func:`resolve_run_dir`.
"""
from __future__ import annotations

import copy
import json
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from .errors import StoreError, TabstError

KIND = "multi-embedding"
SUB_DIR = "embeddings"
BASELINES = ("mean",)  # constant profile: the same on every embedding, nothing to explain


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
def run_multi(store, cfg: dict, out=None, *, force: bool = False, show_progress: bool = True,
              render: bool = True, command=None, t_start: float | None = None) -> Path:
    """Run :func:`tabst.compare.run_compare` once per embedding of ``cfg["embedding"]`` (a list)
    into ``<out>/embeddings/<name>/`` and write the comparison at the top (module docstring).

    ``cfg`` is a resolved config (:func:`tabst.config.load_config`); the other arguments are
    :func:`~tabst.compare.run_compare`'s. Returns the completed run folder.
    """
    from .compare import run_compare
    from .locks import note
    from .store import opened
    from .util import atomic_dir

    t_start = time.perf_counter() if t_start is None else t_start
    names = [str(n) for n in cfg["embedding"]]
    if out is None:
        out = Path("reports") / f"{cfg['name']}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out = Path(out)
    with opened(store) as f:  # every embedding exists before anything is fitted
        check_embeddings(f, cfg, names)
    limit = cfg["max_hours"]
    with atomic_dir(out, force=force) as tmp:
        (tmp / SUB_DIR).mkdir()
        seconds = {}
        for i, name in enumerate(names):
            sub = copy.deepcopy(cfg)
            sub["embedding"] = name
            left = ""
            if limit is not None:
                sub["max_hours"] = limit - (time.perf_counter() - t_start) / 3600
                if sub["max_hours"] <= 0:
                    raise TabstError(f"stopped after {', '.join(names[:i]) or 'no embedding'} "
                                     f"(--max-hours {limit:g} for the whole run); nothing was "
                                     "written. Raise --max-hours or compare fewer embeddings.")
                left = f"; {sub['max_hours']:.3g} h left of --max-hours {limit:g}"
            note(f"embedding {i + 1}/{len(names)}: {name}{left}")
            t0 = time.perf_counter()
            run_compare(store, sub, tmp / SUB_DIR / name, show_progress=show_progress,
                        render=render, command=command)
            seconds[name] = round(time.perf_counter() - t0, 3)
        run = summarize(tmp, cfg, names, command)
        run["timing"] = {"total_seconds": round(time.perf_counter() - t_start, 3),
                         "embeddings_seconds": seconds}
        from .compare_support import write_run_files
        from .report.multi import render_multi_report

        write_run_files(tmp, cfg, run, render_multi_report if render else None, out.name)
    return out


def check_embeddings(f, cfg: dict, names: list) -> None:
    """Every name is a ``/embeddings/<name>`` of the store (else the usual error naming it), a
    usable folder name, and the feature set takes its embedding from ``embedding``."""
    from .run_inputs import resolve_embedding

    emb = (cfg.get("features") or {}).get("embedding")
    if emb is None:
        raise TabstError(f"embedding: {names}: several embeddings, but the feature set uses none "
                         "(features.embedding: null). Drop features.embedding: null, or give "
                         "one embedding.")
    if emb.get("name") not in (None, "auto"):
        raise TabstError(f"embedding: {names}: several embeddings, but features.embedding.name "
                         f"is {emb['name']!r}, which fixes one. Set features.embedding.name: auto "
                         "(the default).")
    for name in names:
        if name in (".", "..") or "/" in name:
            raise StoreError(f"embedding {name!r}: not an embedding name.")
        resolve_embedding(f, {**cfg, "embedding": name})


def summarize(run_dir, cfg: dict, names: list, command=None) -> dict:
    """Write the top-level ``leaderboard.csv`` and ``encoder_table.csv`` of the sub-runs in
    ``run_dir`` and return the top-level ``run.json`` record (without timing)."""
    import pandas as pd

    from .evaluate import METRIC_DIRECTION, METRIC_LABEL
    from .run_record import package_versions
    from .store import now_utc

    run_dir = Path(run_dir)
    subs = {n: json.loads((run_dir / SUB_DIR / n / "run.json").read_text()) for n in names}
    lbs = {n: pd.read_csv(run_dir / SUB_DIR / n / "leaderboard.csv") for n in names}
    folds = check_folds(run_dir, names)
    by = str(subs[names[0]]["ranked_by"])
    lb = stack_leaderboards(lbs, by)
    lb.to_csv(run_dir / "leaderboard.csv", index=False)
    enc = encoder_table(lbs, by, list(cfg["models"]))
    enc.to_csv(run_dir / "encoder_table.csv", index=False)
    first = subs[names[0]]
    best = lb[lb["ranked"].astype(bool)].head(1)
    notes = [f"{n}: {t}" for n in names for t in subs[n].get("leaderboard_notes") or []]
    return {
        "kind": KIND, "complete": True, "created_utc": now_utc(),
        "command": list(command) if command is not None else first.get("command"),
        "config_name": cfg["name"], "primary_metric": cfg["primary_metric"], "ranked_by": by,
        "metric_labels": METRIC_LABEL, "metric_direction": METRIC_DIRECTION,
        "unsafe_random_split": bool(cfg["unsafe_random_split"]), "folds_scheme": cfg["folds"],
        "embeddings": list(names),
        "sub_runs": {n: f"{SUB_DIR}/{n}" for n in names},
        "embedding_attrs": {n: ((subs[n].get("embedding") or {}).get("attrs") or {})
                            for n in names},
        "folds": folds, "folds_identical": True,
        "fold_unit": first.get("fold_unit"), "gene_selection": first.get("gene_selection"),
        "store": first.get("store"), "models": list(cfg["models"]),
        "labels": {m: lab for s in subs.values() for m, lab in (s.get("labels") or {}).items()},
        "best": None if best.empty else {"embedding": str(best["embedding"].iloc[0]),
                                         "model": str(best["model"].iloc[0]),
                                         f"{by}_mean": float(best[f"{by}_mean"].iloc[0])},
        "leaderboard_notes": notes, "seeds": first.get("seeds"),
        "versions": package_versions(), "machine": first.get("machine"),
    }


def check_folds(run_dir, names: list) -> list:
    """The folds of the first sub-run (run.json ``folds``); raises :class:`TabstError` unless
    every sub-run tested the same samples and the same store rows in each fold."""
    import h5py

    run_dir = Path(run_dir)

    def key(n):
        folds = json.loads((run_dir / SUB_DIR / n / "run.json").read_text())["folds"]
        with h5py.File(run_dir / SUB_DIR / n / "predictions.h5", "r") as ph:
            rows = [ph[f"fold_{fd['fold']}/row"][()].astype(np.int64) for fd in folds]
        return folds, rows

    f0, r0 = key(names[0])
    for n in names[1:]:
        f, r = key(n)
        same = len(f) == len(f0) and all(
            a["test_samples"] == b["test_samples"] and a["n_train"] == b["n_train"]
            and np.array_equal(x, y) for a, b, x, y in zip(f0, f, r0, r))
        if not same:
            raise TabstError(f"{run_dir}: the folds of embedding {n!r} differ from those of "
                             f"{names[0]!r} (test samples {[a['test_samples'] for a in f]} vs "
                             f"{[a['test_samples'] for a in f0]}); the embeddings cannot be "
                             "compared. Do both embeddings cover the same cells?")
    return f0


def stack_leaderboards(lbs: dict, by: str):
    """Every sub-leaderboard (``{embedding: DataFrame}``), ``embedding`` first, ranked as one:
    the models that finished every fold by ``by``, then partial, then failed ones;
    ``embedding_rank`` keeps the rank within the sub-run."""
    import pandas as pd

    from .evaluate import METRIC_DIRECTION

    frames = []
    for n, d in lbs.items():
        d = d.rename(columns={"rank": "embedding_rank"}).copy()
        d.insert(0, "embedding", n)
        frames.append(d)
    lb = pd.concat(frames, ignore_index=True)
    ranked = lb["ranked"].astype(bool)
    lb["_tier"] = np.where(ranked, 0, np.where(lb["n_folds_ok"] > 0, 1, 2))
    lb["_key"] = -METRIC_DIRECTION[by] * lb[f"{by}_mean"]
    lb = lb.sort_values(["_tier", "_key"], na_position="last", kind="stable") \
        .drop(columns=["_tier", "_key"]).reset_index(drop=True)
    lb.insert(1, "rank", np.arange(1, len(lb) + 1))
    return lb


def encoder_table(lbs: dict, by: str, models: list):
    """One row per embedding; per model the mean and sd over folds of ``by`` from its
    sub-leaderboard: ``<model>`` ("mean ± sd" text), ``<model>_mean``, ``<model>_sd``."""
    import pandas as pd

    seen = [m for m in models if any(m in set(d["model"].astype(str)) for d in lbs.values())]
    seen += [m for d in lbs.values() for m in d["model"].astype(str) if m not in seen]
    rows = []
    for n, d in lbs.items():
        d = d.set_index(d["model"].astype(str))
        row = {"embedding": n}
        for m in seen:
            mu = float(d.loc[m, f"{by}_mean"]) if m in d.index else float("nan")
            sd = float(d.loc[m, f"{by}_sd"]) if m in d.index else float("nan")
            row[m] = f"{mu:.4f} ± {sd:.4f}" if np.isfinite(mu) else ""
            row[f"{m}_mean"], row[f"{m}_sd"] = mu, sd
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# reading a run folder
# --------------------------------------------------------------------------------------------
def read_run_json(run) -> dict | None:
    """``run.json`` of a run folder, or None (no folder, no file, not JSON)."""
    p = Path(run) / "run.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_multi(run) -> bool:
    """Whether ``run`` is a multi-embedding compare run folder."""
    return (read_run_json(run) or {}).get("kind") == KIND


def resolve_run_dir(run, embedding: str | None = None, *, purpose: str = "predict",
                    models=None, announce: bool = True) -> tuple[Path, str | None]:
    """The run folder ``tabst predict`` / ``tabst explain`` work on, and its embedding.

    On a multi-embedding run: the sub-run of ``embedding``; without it, the embedding of the
    best-ranked leaderboard row that has a refit (``purpose="predict"``) or of the best-ranked
    row that is not the ``mean`` baseline (``"explain"``), among ``models`` when given. On an
    ordinary run: ``run`` itself (``embedding``, when given, must be the run's). ``announce``
    prints the choice on stderr. Raises :class:`TabstError` for an unknown embedding, naming
    the available ones.
    """
    from .locks import note

    run = Path(run)
    meta = read_run_json(run)
    if meta is None:  # not a run folder: the caller says so in its own words
        return run, embedding
    if meta.get("kind") != KIND:
        name = (meta.get("embedding") or {}).get("name")
        if embedding is not None and embedding != name:
            have = f"only the embedding {name!r}" if name else "no image embedding"
            raise TabstError(f"{run}: --embedding {embedding!r}: this run used {have}. Drop "
                             "--embedding, or give a multi-embedding run (`tabst compare "
                             "--features a,b`).")
        if announce and name:
            note(f"using embedding {name} (the run's embedding)")
        return run, name
    names = [str(n) for n in meta.get("embeddings") or []]
    by = str(meta.get("ranked_by") or meta.get("primary_metric") or "cellwise_spearman")
    if embedding is not None:
        if embedding not in names:
            raise TabstError(f"{run}: no embedding {embedding!r} in this multi-embedding run. "
                             f"Embeddings: {', '.join(names)}. Pass --embedding NAME.")
        why = "--embedding"
    else:
        embedding, why = _best_embedding(run, names, by, purpose, models)
    sub = run / SUB_DIR / embedding
    if announce:
        tail = "" if why == "--embedding" else "; pass --embedding to choose"
        note(f"using embedding {embedding} ({why}){tail}")
    return sub, embedding


def _best_embedding(run: Path, names: list, by: str, purpose: str, models) -> tuple[str, str]:
    import pandas as pd

    lb = pd.read_csv(run / "leaderboard.csv").sort_values("rank", kind="stable")
    lb = lb[lb["embedding"].astype(str).isin(names)]
    if models:
        lb = lb[lb["model"].astype(str).isin([str(m) for m in models])]
    if purpose == "predict":
        ok = [(r["refit"] == "ok" and (run / SUB_DIR / str(r["embedding"]) / "models"
                                       / str(r["model"]) / "all" / "model.json").exists())
              for _, r in lb.iterrows()]
        pick = lb[np.asarray(ok, dtype=bool)] if len(lb) else lb
        if pick.empty:
            raise TabstError(f"{run}: no embedding has a refitted model"
                             + (f" {', '.join(map(str, models))}" if models else "")
                             + " (models/<model>/all): re-run `tabst compare` with "
                               "--set refit_all=true, or pass --embedding NAME.")
    else:
        pick = lb[lb["ranked"].astype(bool) & ~lb["model"].astype(str).isin(BASELINES)]
        if pick.empty:
            pick = lb
        if pick.empty:
            return names[0], "the first embedding; no model is ranked"
    r = pick.iloc[0]
    what = "with a refit" if purpose == "predict" else "not the mean baseline"
    return str(r["embedding"]), (f"best {by} {float(r[f'{by}_mean']):.4f}: model {r['model']}, "
                                 f"the best-ranked row {what}")


def run_table(run_dir):
    """The terminal table of a run folder: :func:`tabst.leaderboard.leaderboard_table`, or for a
    multi-embedding run the encoder x model table of the ranking metric."""
    import pandas as pd
    from rich import box
    from rich.table import Table

    from .evaluate import METRIC_DIRECTION, METRIC_LABEL
    from .leaderboard import leaderboard_table

    run_dir = Path(run_dir)
    meta = read_run_json(run_dir) or {}
    if meta.get("kind") != KIND:
        return leaderboard_table(run_dir)
    by = str(meta["ranked_by"])
    enc = pd.read_csv(run_dir / "encoder_table.csv")
    models = table_models(enc)
    arrow = "↑" if METRIC_DIRECTION[by] > 0 else "↓"
    t = Table(title=f"tabst compare · {meta.get('config_name', '')} · {len(enc)} embeddings · "
                    f"{METRIC_LABEL[by]} {arrow} (mean ± sd over folds)",
              title_justify="left", box=box.SIMPLE_HEAD,
              caption="best per model in bold green, best overall ★; per embedding: "
                      f"{SUB_DIR}/<embedding>/report.html", caption_justify="left")
    t.add_column("embedding", no_wrap=True)
    for m in models:
        t.add_column(str((meta.get("labels") or {}).get(m, m)), justify="right")
    best = best_cells(enc, models, by)
    for i, r in enc.iterrows():
        cells = [str(r["embedding"])]
        for m in models:
            mu, sd = float(r[f"{m}_mean"]), float(r[f"{m}_sd"])
            s = f"{mu:.4f} ±{sd:.3f}" if np.isfinite(mu) else "—"
            if (i, m) in best["column"]:
                s = f"[bold green]{s}[/]"
            cells.append(s + (" ★" if (i, m) == best["overall"] else ""))
        t.add_row(*cells)
    return t


def table_models(enc) -> list[str]:
    """The models (column triplets ``<m>``, ``<m>_mean``, ``<m>_sd``) of an encoder table."""
    cols = set(enc.columns)
    return [c for c in enc.columns if c != "embedding" and f"{c}_mean" in cols
            and f"{c}_sd" in cols]


def best_cells(enc, models: list, by: str) -> dict:
    """``{"column": {(row, model), ...}, "overall": (row, model) | None}``: the best embedding
    of each model and the best cell of the non-baseline models (of all when only baselines)."""
    from .evaluate import METRIC_DIRECTION

    sign = METRIC_DIRECTION[by]
    column, overall, top = set(), None, -np.inf
    pool = [m for m in models if m not in BASELINES] or list(models)
    for m in models:
        v = sign * enc[f"{m}_mean"].to_numpy(dtype=float)
        if not np.isfinite(v).any():
            continue
        b = np.nanmax(v)
        column |= {(int(i), m) for i in np.flatnonzero(np.isclose(v, b))}
        if m in pool and b > top:
            top, overall = b, (int(np.nanargmax(v)), m)
    return {"column": column, "overall": overall}
