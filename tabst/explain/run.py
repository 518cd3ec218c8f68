"""``tabst explain RUN``: attributions of held-out cells for a finished ``tabst compare`` run.

Which model explains which cell (the honest default)
----------------------------------------------------
Each fold of the run held out one or more samples. A cell is explained by **the model of the
fold that held its sample out** (``models/<model>/fold_<k>/``, with that fold's fitted
``features/fold_<k>/``), i.e. by a model that never saw the cell, its sample, or any
spatial neighbour — the same predictions that were scored in the leaderboard (checked: the
reloaded model must reproduce ``predictions.h5``). Each fold model has its own base value
(its training mean), so ``base`` is stored per cell.

With ``refit=True`` the models refitted on all rows (``models/<model>/all/``, features
``features/all/``) explain the same cells instead: the model one would deploy, but the
cells were *in its training data*; the report says so in its header.

Bounded work
------------
At most ``cells`` held-out cells are explained in total (spread over the folds in proportion to
their test size, drawn at random with ``seed``), for ``top_genes`` genes (default: the best
model's best genes by gene-wise Pearson) plus any named ``genes``. The built-in models need no
background sample (ridge and TabNet use the training mean as baseline, the trees are explained
path-dependently / by XGBoost's exact TreeSHAP); ``background`` rows of the fold's training data
are passed to models whose ``explain`` accepts a ``background=`` argument.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import TabstError
from ..safeio import UnsafeFileError
from .attribution import (
    AdditivityWarning,
    ModelAttributions,
    concat,
    explain_model,
    read_attributions,
    tabnet_masks,
    write_attributions,
)
from .grouping import readable_importance
from .runfolder import (
    SKIP_MODELS,
    Run,
    _cells_per_fold,
    best_per_gene,
    check_store,
    choose_best,
    choose_genes,
    patch_sizes,
    store_unit,
)
from .trust import IG_RESIDUAL_LIMIT, residual_notes

DEFAULT_CELLS = 600
DEFAULT_TOP_GENES = 5
DEFAULT_BACKGROUND = 200


# --------------------------------------------------------------------------------------------
# computation
# --------------------------------------------------------------------------------------------
def explain_run(run_dir, *, genes: Sequence[str] | None = None, top_genes: int = DEFAULT_TOP_GENES,
                models: Sequence[str] | None = None, cells: int = DEFAULT_CELLS,
                refit: bool = False, background: int = DEFAULT_BACKGROUND, seed: int = 0,
                store=None, show_progress: bool = True, embedding: str | None = None):
    """Compute attributions for a compare run (no files written). On a multi-embedding run,
    the sub-run of ``embedding`` (default: the best-ranked; see
    :func:`tabst.compare_multi.resolve_run_dir`).

    Returns ``(results {model: ModelAttributions}, info dict)``; ``info`` has ``best_model``,
    ``genes``, ``mode_text``, ``warnings``, ``store``.
    """
    import h5py

    from ..compare_multi import resolve_run_dir
    from ..models import load_model
    from ..store import opened, read_strings
    from ..util import progress

    run_dir, _ = resolve_run_dir(run_dir, embedding, purpose="explain", models=models)
    run = Run(run_dir)
    ok = run.ok_models()
    if models:
        models = [m.strip() for m in models if m and m.strip()]
        unknown = [m for m in models if m not in list(run.leaderboard["model"].astype(str))]
        if unknown:
            raise TabstError(f"model(s) {', '.join(unknown)} are not in this run (it has: "
                             f"{', '.join(run.leaderboard['model'].astype(str))}).")
        failed = [m for m in models if m not in ok]
        if failed:
            raise TabstError(f"model(s) {', '.join(failed)} failed in at least one fold of this "
                             "run; they cannot be explained (see the run's logs/).")
    else:
        models = [m for m in ok if m not in SKIP_MODELS] or ok
    if not models:
        raise TabstError(f"{run.dir}: no model finished every fold; nothing to explain.")
    if cells < 1:
        raise TabstError("--cells must be >= 1.")
    folds = run.folds()
    missing = [(m, k) for m in models for k in ([None] if refit else folds)
               if not (run.model_dir(m, k) / "model.json").exists()]
    if missing:
        what = "refit models (models/<model>/all)" if refit else "fold models"
        fix = ("re-run compare with refit_all: true" if refit else
               "re-run compare with save_fold_models: true, or pass --refit to use the refit "
               "models")
        raise TabstError(f"{run.dir}: the {what} are missing for "
                         f"{', '.join(sorted({m for m, _ in missing}))}: {fix}.")
    best = choose_best(run, models)
    genes = choose_genes(run, best, genes, top_genes,
                         candidates=run.explainable_genes(models, refit))
    fold_genes = {k: run.fold_genes(k) for k in folds}
    gidx_fold = {k: [fold_genes[k].index(g) for g in genes] for k in folds}
    store_path = run.store_path(store)
    with opened(store_path) as f:  # the run's genes and evaluated cells, at the run's rows
        check_store(run, f, given=store is not None)
        unit = store_unit(f)
    rng = np.random.default_rng(seed)
    warn = []

    # held-out cells of each fold, from predictions.h5
    fold_cells = {}
    with h5py.File(run.dir / "predictions.h5", "r") as ph:
        sizes = {k: int(ph[f"fold_{k}/cell_id"].shape[0]) for k in folds}
        fold_rows = {k: ph[f"fold_{k}/row"][()].astype(np.int64) for k in folds
                     if "row" in ph[f"fold_{k}"]}
        want = _cells_per_fold(sizes, cells)
        for k in folds:
            g = ph[f"fold_{k}"]
            pick = np.sort(rng.choice(sizes[k], size=want[k], replace=False))
            if "row" not in g:
                raise TabstError(f"{run.dir}/predictions.h5: fold_{k} has no 'row' dataset "
                                 "(store rows of the test cells); re-run `tabst compare`.")
            fold_cells[k] = {
                "row": g["row"][()][pick].astype(np.int64),
                "cell_id": read_strings(g["cell_id"])[pick],
                "sample": read_strings(g["sample"])[pick],
                "x": g["x"][()][pick] if "x" in g else None,
                "y": g["y"][()][pick] if "y" in g else None,
                # sorted fancy reads: only the picked rows leave the disk
                "truth": g["truth"][pick][:, gidx_fold[k]].astype(np.float32),
                "pred": {m: g[f"pred/{m}"][pick][:, gidx_fold[k]] for m in models
                         if f"pred/{m}" in g},
            }

    parts: dict = {m: [] for m in models}
    n_units = len(models) * len(folds)
    pbar = progress(unit="fits") if show_progress else None
    with opened(store_path) as f:
        tissue_all = (read_strings(f["cells/tissue"]) if "cells/tissue" in f else None)
        cm = pbar if pbar is not None else _Null()
        with cm as p:
            task = p.add_task("explain", total=n_units) if pbar is not None else None
            fb_cache = {}
            for k in folds:
                fc = fold_cells[k]
                rows = fc["row"]
                order = np.argsort(rows, kind="stable")  # store reads want sorted rows
                fkey = None if refit else k
                if fkey not in fb_cache:
                    fb_cache = {fkey: run.feature_builder(fkey)}
                fb = fb_cache[fkey]
                Xs = np.asarray(fb.transform(f, rows[order]), dtype=np.float32)
                X = np.empty_like(Xs)
                X[order] = Xs
                X_shared, fb_shared = X, fb
                for m in models:
                    if pbar is not None:
                        p.update(task, description=f"explain · fold {k} · {m}")
                    X, fb = X_shared, fb_shared
                    if run.own_features(m, fkey):  # a tuned model's own feature builder
                        fb = run.feature_builder(fkey, m)
                        X = np.empty((len(rows), len(fb.feature_names_)), dtype=np.float32)
                        X[order] = np.asarray(fb.transform(f, rows[order]), dtype=np.float32)
                    model = load_model(run.model_dir(m, fkey))
                    mgenes = list(getattr(model, "target_names_", fold_genes[k]))
                    if not refit and mgenes != fold_genes[k]:
                        raise TabstError(f"{run.model_dir(m, fkey)}: the model's genes differ from "
                                         f"fold {k} of the run's predictions.h5.")
                    if any(g not in mgenes for g in genes):
                        raise TabstError(f"{run.model_dir(m, fkey)}: the model did not learn "
                                         f"gene(s) {', '.join(g for g in genes if g not in mgenes)}"
                                         ".")
                    gidx = [mgenes.index(g) for g in genes]
                    bg = None
                    if background and background > 0 and accepts_background(model):
                        bg = _background(f, fb, fold_rows, k, refit, background, rng)
                    with warnings.catch_warnings(record=True) as wl:
                        warnings.simplefilter("always")
                        values, base, pred, err, method, fn, fg = explain_model(
                            model, X, gidx, background=bg, what=f"{m} fold {k}")
                    for w in wl:
                        if issubclass(w.category, AdditivityWarning):
                            warn.append(str(w.message))
                    if not refit and m in fc["pred"]:  # compare clipped them if it said so
                        shown = np.maximum(pred, 0) if run.meta.get("clipped_at_zero") else pred
                        diff = float(np.max(np.abs(shown - fc["pred"][m]), initial=0.0))
                        if diff > 1e-3 + 1e-3 * float(np.abs(pred).max(initial=0.0)):
                            warn.append(f"{m} fold {k}: the reloaded model's predictions differ "
                                        f"from predictions.h5 by up to {diff:.3g}.")
                    res = ModelAttributions(
                        model=m, cell_id=fc["cell_id"], sample=fc["sample"],
                        fold=np.full(len(rows), -1 if refit else k, dtype=np.int32),
                        genes=list(genes), features=fn, groups=fg, values=values,
                        base=np.broadcast_to(base, (len(rows), len(genes))).copy(),
                        prediction=pred, truth=fc["truth"], x=fc["x"], y=fc["y"],
                        method=method, source=f"models/{m}/" + ("all" if refit else "fold_<k>"),
                        max_additivity_error=err, inputs=X,
                        tissue=None if tissue_all is None else tissue_all[rows])
                    if hasattr(model, "ig_total_residual_"):
                        res.ig_residual = float(model.ig_total_residual_)
                    mk = tabnet_masks(model, X) if hasattr(model, "masks") else None
                    if mk is not None:
                        res.mask_aggregate, res.mask_steps = mk
                    parts[m].append(res)
                    if pbar is not None:
                        p.advance(task)
    results = {m: concat(parts[m]) for m in models}
    hidden = residual_notes(results)
    if hidden and len(hidden) == len(models):  # nothing else to show: show it, with the caveat
        warn += [f"{m} is shown although its integrated-gradients correction is large "
                 f"({results[m].ig_residual:.3g} of the total |f(x) - f(baseline)|, limit "
                 f"{IG_RESIDUAL_LIMIT:g}): no other model was explained; read its charts with "
                 "care." for m in hidden]
        hidden = {}
    shown = [m for m in models if m not in hidden]
    if best not in shown:
        best = choose_best(run, shown)
    samples = list(dict.fromkeys(str(s) for k in folds for s in fold_cells[k]["sample"]))
    with opened(store_path) as f:
        patch_choice, patch_px = patch_sizes(run, f, samples)
    store_rows = {str(c): int(r) for k in folds
                  for c, r in zip(fold_cells[k]["cell_id"], fold_cells[k]["row"])}
    info = {"best_model": best, "genes": genes,
            "mode_text": _mode_text(results[best].n, len(folds), refit, seed, unit),
            "best_per_gene": best_per_gene(run, shown, genes, best),
            "warnings": _run_warnings(run, refit, unit) + warn, "hidden": hidden,
            "unit": unit, "patch_choice": patch_choice, "patch_px": patch_px,
            "store_rows": store_rows,
            "store": str(store_path), "run": run, "refit": refit, "folds": folds}
    return results, info


def _mode_text(n: int, n_folds: int, refit: bool, seed: int, unit: str) -> str:
    """The paragraph saying which models explained which cells (spots)."""
    if refit:
        return (f"{n} {unit}s drawn at random from the held-out {unit}s of the {n_folds} folds, "
                "explained by the models REFITTED ON ALL ROWS (models/<model>/all). These "
                f"{unit}s were part of those models' training data: the explanations describe "
                "the model one would deploy, not out-of-sample behaviour.")
    return (f"{n} held-out {unit}s drawn at random (seed {seed}) over the {n_folds} "
            f"cross-validation folds; each {unit} is explained by the model of the fold that "
            "held its sample out (models/<model>/fold_<k>, with that fold's feature builder), "
            f"i.e. by a model that never saw the {unit} or its sample. Each fold model has its "
            "own base value (its training mean).")


def _run_warnings(run: Run, refit: bool, unit: str) -> list:
    out = []
    if run.meta.get("unsafe_random_split"):
        out.append(f"This run used a RANDOM {unit.upper()}-LEVEL split: held-out {unit}s have "
                   "spatial neighbours in the training data; scores and explanations are "
                   "optimistic.")
    if refit:
        out.append(f"Refit models explain {unit}s they were trained on (in-sample).")
    return out


def accepts_background(model) -> bool:
    """Whether ``model.explain`` takes a ``background=`` argument."""
    import inspect

    try:
        params = inspect.signature(model.explain).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False
    return "background" in params


def _background(f, fb, fold_rows: dict, k: int, refit: bool, n: int, rng) -> np.ndarray:
    """``n`` random training rows of fold ``k`` (the other folds' test rows), as features."""
    pool = np.concatenate([r for j, r in fold_rows.items() if refit or j != k])
    pick = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
    return np.asarray(fb.transform(f, pick), dtype=np.float32)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def add_task(self, *a, **k):
        return None


def tree_rules(run: Run, genes: Sequence[str], refit_first: bool = True, max_depth: int = 4,
               max_lines: int = 120) -> dict:
    """``{gene: (rules_text, note)}`` of the run's decision tree (``tree`` model), if any.

    The refitted tree (``models/tree/all``) is shown when it exists (the tree one would read and
    deploy), else the tree of fold 0. Through a PCA codec the tree's splits were learned for all
    components jointly; its leaves are shown as this gene's value decoded through the loadings,
    and the note names the component with the largest loading for the gene.
    """
    from ..models import load_model

    cands = [run.model_dir("tree", None)] if refit_first else []
    cands += [run.model_dir("tree", k) for k in run.folds()]
    path = next((p for p in cands if (p / "model.json").exists()), None)
    if path is None:
        return {}
    try:
        tree = load_model(path)
    except UnsafeFileError:  # a pickle in a shared run folder: refuse loudly, never skip quietly
        raise
    except Exception as e:  # noqa: BLE001 - rules are an extra
        warnings.warn(f"cannot load the decision tree at {path}: {e}")
        return {}
    if not hasattr(tree, "rules_text"):
        return {}
    where = "refitted on all rows" if path.name == "all" else f"of fold {path.name[5:]}"
    out = {}
    codec = getattr(tree, "codec_", None)
    for g in genes:
        try:
            text = tree.rules_text(g, max_depth=max_depth)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"decision tree rules for {g}: {e}")
            continue
        lines = text.splitlines()
        if len(lines) > max_lines:
            text = "\n".join(lines[:max_lines] + [f"... ({len(lines) - max_lines} more lines)"])
        note = f"Tree {where} ({tree.display_name}), shown to depth {max_depth}. "
        comps = getattr(codec, "components_", None)
        if comps is not None and g in tree.target_names_:
            j = tree.target_names_.index(g)
            c = int(np.argmax(np.abs(comps[:, j])))
            note += (f"The tree predicts {comps.shape[0]} target-PCA components with shared "
                     f"splits; leaf values here are {g} decoded through the loadings. {g} loads "
                     f"most on component {c} (loading {comps[c, j]:+.3f}), so these splits are "
                     f"mostly those that serve component {c}.")
        else:
            note += "Leaf values are the predicted expression of this gene."
        out[g] = (text, note)
    return out


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------
def run_explain(run_dir, genes: Sequence[str] | None = None, top_genes: int = DEFAULT_TOP_GENES,
                models: Sequence[str] | None = None, cells: int = DEFAULT_CELLS, *,
                refit: bool = False, background: int = DEFAULT_BACKGROUND, out=None,
                store=None, seed: int = 0, gallery: int = 6, max_bytes: int | None = None,
                show_progress: bool = True, embedding: str | None = None) -> Path:
    """Explain a compare run: write ``attributions.h5`` in the run folder and the report.

    Parameters
    ----------
    run_dir : a finished ``tabst compare`` run folder.
    genes : genes to explain (validated against the run).
    top_genes : additionally, the best model's top-N genes by gene-wise Pearson (0: none).
    models : models to explain (default: every model that finished all folds, except the
        constant ``mean`` baseline).
    cells : total held-out cells to explain (spread over the folds).
    refit : use the refit-on-all-rows models instead of the fold models (in-sample; flagged).
    background : rows passed to models whose ``explain`` takes a background (none built-in).
    out : report path (default ``RUN/explain.html``).
    store : the run's store, when it moved since ``compare``.
    seed : cell sampling seed.  gallery : highest/lowest cells per gene in the patch gallery.
    max_bytes : report size budget (default 5 MB).
    embedding : on a multi-embedding run, the embedding to explain (default: the best-ranked);
        the files are written in its sub-run ``RUN/embeddings/<name>/``.

    Returns
    -------
    Path of the written report.
    """
    from .gallery import extreme_cells, read_patches
    from .report import MAX_BYTES, ReportInputs, write_report

    results, info = explain_run(run_dir, genes=genes, top_genes=top_genes, models=models,
                                cells=cells, refit=refit, background=background, seed=seed,
                                store=store, show_progress=show_progress, embedding=embedding)
    run: Run = info["run"]
    genes = info["genes"]
    best = info["best_model"]
    per_gene = info["best_per_gene"]
    write_attributions(run.dir / "attributions.h5", list(results.values()),
                       attrs={"best_model": best, "genes": list(genes),
                              "best_model_per_gene": [per_gene[g] for g in genes],
                              "mode": "refit" if refit else "fold models",
                              "run": str(run.dir.resolve()), "unit": info["unit"],
                              "patch_size": info["patch_choice"],
                              "patch_size_px": info["patch_px"],
                              "hidden_from_charts": info["hidden"]})
    # patch gallery: extreme predictions of each gene's best model (same cells for every model)
    b = results[best]
    want = {}
    for j, g in enumerate(genes):
        hi, lo = extreme_cells(results[per_gene[g]].prediction[:, j], gallery)
        for i in hi + lo:
            want[i] = True
    idx = sorted(want)
    patches = {}
    if idx and b.x is not None:
        rowmap = [info["store_rows"][str(c)] for c in b.cell_id[idx]]
        with warnings.catch_warnings(record=True) as wl:
            warnings.simplefilter("always")
            ps = read_patches(info["store"], rowmap, b.sample[idx], b.x[idx], b.y[idx],
                              size=info["patch_px"])
        if any(p is None for p in ps):
            info["warnings"].append("Some gallery patches could not be read: "
                                    + "; ".join(sorted({str(w.message) for w in wl})[:3]))
        patches = {str(b.cell_id[i]): p for i, p in zip(idx, ps)}
    inp = ReportInputs(
        run_name=run.dir.name, best_model=best, best_per_gene=per_gene,
        mode_text=info["mode_text"],
        scores={m: run.gene_scores(m) for m in results},
        mean_scores={m: run.mean_score(m) for m in results},
        banner=run.random_weights_banner(), warnings=info["warnings"],
        rules=tree_rules(run, genes), patches=patches, gallery_k=gallery,
        unit=info["unit"], patch_text=_patch_text(info["patch_choice"], info["patch_px"]),
        hidden=info["hidden"])
    out = Path(out) if out is not None else run.dir / "explain.html"
    return write_report(out, results, genes, inp, max_bytes or MAX_BYTES)


def _patch_text(choice: str, px: dict) -> str:
    """``--patch-size spot; resolved per sample: MOB1 23 px, MOB2 22 px`` for the report."""
    sizes = ", ".join(f"{s} {v} px" for s, v in px.items())
    return (f"Image patches: {choice}; resolved per sample: {sizes} (the gallery cuts the same "
            "sizes).")


def top_readable_feature(source, gene: str, model: str | None = None) -> str:
    """The named (non-embedding) feature with the largest mean |attribution| for ``gene``.

    ``source``: a run folder (reads its ``attributions.h5``), an ``attributions.h5`` path, or a
    ``{model: ModelAttributions}`` dict. ``model`` defaults to the gene's best model recorded in
    the file (highest gene-wise Pearson on that gene; the one the report's panels use), else the
    best model overall.
    """
    return readable_ranking(source, gene, model, top=1)[0]["feature"]


def readable_ranking(source, gene: str, model: str | None = None, top: int | None = None):
    """Named features ranked for ``gene`` (see :func:`top_readable_feature`): list of dicts
    ``{feature, group, index, importance, mean_attribution}``."""
    import h5py

    from ..store import get_str_list

    best = None
    if isinstance(source, dict):
        results = source
    else:
        p = Path(source)
        if p.is_dir():
            p = p / "attributions.h5"
        results = read_attributions(p)
        with h5py.File(p, "r") as f:
            best = f.attrs.get("best_model")
            if "best_model_per_gene" in f.attrs:
                per_gene = dict(zip(get_str_list(f, "genes"),
                                    get_str_list(f, "best_model_per_gene")))
                best = per_gene.get(gene, best)
    if model is None:
        model = str(best) if best else next(iter(results))
    if model not in results:
        raise TabstError(f"model {model!r} was not explained (explained: {', '.join(results)}).")
    r = results[model]
    ranking = readable_importance(r.values, r.features, r.groups, r.gene_index(gene), top)
    if not ranking:
        raise TabstError(f"model {model}: no named (non-embedding) features to rank.")
    return ranking
