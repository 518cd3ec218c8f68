"""``tabst compare``: a leakage-free benchmark of every model on one store.

For each fold (by sample, see :func:`tabst.evaluate.make_folds`):

0. the genes are selected (config ``genes``, :mod:`tabst.genes`): all, a list file, or the top-k
   highly variable genes computed on the fold's training rows only; the fold's models learn
   and predict only those genes and the fold is scored on them;
1. a :class:`tabst.dataset.FeatureBuilder` is fitted on the fold's training rows only (scalers,
   embedding PCA...), then transforms training and test rows;
2. every model is built from the config (``REGISTRY[name](**params)``), fitted on the training
   rows with ``groups`` = sample (so inner CV / early stopping split by sample too), and
   predicts the test rows;
3. the predictions are scored with the challenge metrics and written to ``predictions.h5``.

The ``mean`` baseline is always included. A model that raises is recorded with its error (the
traceback goes to ``logs/<model>.log``) and the others go on. The leaderboard ranks only the
models that finished every fold and refuses a metric a fold cannot define (the cell-wise
Spearman with fewer than 2 genes), ranking by the next one and saying so
(:mod:`tabst.leaderboard`; notes in ``run.json`` ``leaderboard_notes``).

Run folder (written into a hidden temp folder beside it and renamed when complete)::

    <run>/leaderboard.csv      one row per model: metrics mean and sd over folds, costs, status
    <run>/per_fold.csv         one row per model x fold
    <run>/per_sample.csv       one row per model x fold x test sample
    <run>/per_gene.csv         one row per model x gene: Pearson mean/sd over the folds that
                               selected the gene (n_folds) + per fold (empty: not selected)
    <run>/predictions.h5       /genes (union over folds); /fold_<k>/{genes, gene_index, cell_id,
                               sample, x, y, row, truth, pred/<model>} (truth/pred columns =
                               fold_<k>/genes = /genes[gene_index])
    <run>/models/<model>/fold_<k>/   fitted model per fold (``save_fold_models``)
    <run>/models/<model>/all/        refit on every row (``refit_all``), for predict / explain;
                                     its genes are selected on every row (model.target_names_)
    <run>/features/fold_<k>/         fitted FeatureBuilder of each fold (FeatureBuilder.load)
    <run>/features/all/              fitted FeatureBuilder of the refit (``refit_all``)
    <run>/config.yaml          the resolved config
    <run>/run.json             seeds, versions, store summary, embedding attrs, folds, timing
    <run>/logs/<model>.log     tracebacks of failures
    <run>/report.html          rendered from the files above (``tabst report RUN`` rebuilds it)
"""
from __future__ import annotations

import json
import shutil
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

import numpy as np

from . import cost
from .cluster import cluster_client, describe
from .compare_dask import fit_predict, submit_fits
from .compare_support import (
    _codec_label,
    _fit_notes,
    _Null,
    _own_features,
    _tuner,
    write_run_files,
)
from .config import load_config, model_params
from .errors import StoreError, TabstError
from .evaluate import METRICS, make_folds, score_fold
from .leaderboard import (
    genes_label,
    leaderboard_frame,
    leaderboard_notes,
    leaderboard_table,
    per_gene_frame,
    refuse_undefined,
)
from .outputs import is_fatal_io
from .run_inputs import (
    feature_spec,
    resolve_embedding,
    resolve_group_column,
    resolve_region_column,
    transform_warning,
)
from .run_record import _attrs, package_versions
from .run_record import run_record as _run_record
from .store import opened, put, read_strings
from .util import atomic_dir, progress


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _fold_record(fd, regions) -> dict:
    d = fd.to_dict()
    if regions is not None:
        names, counts = np.unique(regions[fd.test], return_counts=True)
        d["test_regions"] = {str(r): int(c) for r, c in zip(names, counts)}
    return d


def _cells(f, rows, name, cfg_key):
    if f"cells/{name}" not in f:
        raise StoreError(f"{f.filename}: no column /cells/{name} (config key {cfg_key!r}). "
                         f"Columns: {', '.join(f['cells'].keys())}.")
    ds = f[f"cells/{name}"]
    vals = read_strings(ds) if ds.dtype.kind == "O" else ds[()]
    return np.asarray(vals)[rows]


def _write_log(tmp: Path, name: str, text: str) -> None:
    d = tmp / "logs"
    d.mkdir(exist_ok=True)
    with open(d / f"{name}.log", "a") as fh:
        fh.write(text)


# --------------------------------------------------------------------------------------------
# main entry
# --------------------------------------------------------------------------------------------
def run_compare(store, config=None, out=None, *, overrides=(), models=None, features=None,
                folds=None, unsafe_random_split: bool = False, genes=None, force: bool = False,
                cluster: str | None = None, show_progress: bool = True, render: bool = True,
                command=None) -> Path:
    """Benchmark every configured model with sample-wise folds; write a run folder.

    Parameters
    ----------
    store : path or h5py.File
        A tabst store with ``/expression`` and the features the config asks for.
    config : str, path or dict, optional
        Preset name (``default``, ``crunch1``, ``hest``), YAML path, or a config dict (resolved
        or not). Default: ``default``.
    out : path, optional
        Run folder; default ``reports/<config name>-<YYYYmmdd-HHMMSS>``.
    overrides : list of str
        ``--set`` items (``ridge.alphas=[0.1,1]``).
    models, features, folds, unsafe_random_split
        Command-line overrides: comma-separated model names, an embedding name (``--features``
        picks ``/embeddings/<name>``), fold scheme, random-split permission.
    genes : str, optional
        ``--genes``: ``all``, ``hvg``, ``hvg:K`` or a gene list file (replaces config ``genes``).
    cluster : str, optional
        ``--cluster``: ``local``, ``local:N`` or a Dask scheduler address (replaces config
        ``cluster``): the fits run as Dask tasks (:mod:`tabst.compare_dask`), same results.
    force : bool
        Replace an existing run folder.
    show_progress : bool
        Rich progress bar (model x fold) on stderr.
    render : bool
        Render ``report.html`` at the end (a rendering failure is logged, not fatal).
    command : list of str, optional
        Command line to record in ``run.json`` (default ``sys.argv``).

    Returns
    -------
    Path
        The completed run folder.
    """
    t_start = time.perf_counter()
    cfg = load_config(config, overrides, models=models, folds=folds, embedding=features,
                      unsafe_random_split=unsafe_random_split, genes=genes, cluster=cluster)
    if isinstance(cfg["embedding"], list):  # several embeddings: one sub-run each
        from .compare_multi import run_multi

        return run_multi(store, cfg, out, force=force, show_progress=show_progress,
                         render=render, command=command, t_start=t_start)
    from .dataset import FeatureBuilder, load_targets, rows_with_expression
    from .models import REGISTRY

    if out is None:
        out = Path("reports") / f"{cfg['name']}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out = Path(out)
    with atomic_dir(out, force=force) as tmp:  # checks --out, locks it, never replaces unasked
        with opened(store) as f, cluster_client(cfg["cluster"]) as client:
            store_path = Path(f.filename).resolve()
            info = _compare_in(f, cfg, tmp, REGISTRY, FeatureBuilder, load_targets,
                               rows_with_expression, show_progress, out=out, client=client)
            info["cluster"] = None if client is None else {
                "workers": describe(client),
                "fits_on_workers": int(info["timing"].pop("fits_on_workers", 0))}
        info["timing"]["total_seconds"] = round(time.perf_counter() - t_start, 3)
        run = _run_record(cfg, store_path, info, command)
        from .report.render import render_report

        write_run_files(tmp, cfg, run, render_report if render else None, out.name)
    if cfg["tune"]["enabled"]:  # the studies are in the run folder now (tuning/)
        from .tuning import study_dir

        shutil.rmtree(study_dir(out), ignore_errors=True)
    return out


def _compare_in(f, cfg, tmp: Path, REGISTRY, FeatureBuilder, load_targets, rows_with_expression,
                show_progress: bool, out: Path | None = None, client=None) -> dict:
    import h5py
    import pandas as pd

    from .genes import read_gene_list, select_genes, selection_label

    timing = {"features_seconds": 0.0, "refit_seconds": 0.0}
    guard, estimate = cost.Guard(cfg["max_hours"], time.perf_counter()), None
    rows = np.asarray(rows_with_expression(f), dtype=np.int64)
    if rows.size == 0:
        raise StoreError(f"{f.filename}: no cell has measured expression; nothing to evaluate.")
    samples = _cells(f, rows, "sample", "sample").astype(str)
    cell_id = _cells(f, rows, "cell_id", "cell_id").astype(str)
    xs = _cells(f, rows, "x", "x").astype(np.float64)
    ys = _cells(f, rows, "y", "y").astype(np.float64)
    region_col = resolve_region_column(f, cfg)
    regions = _cells(f, rows, region_col, "region_column").astype(str) if region_col else None
    group_col, fold_unit = resolve_group_column(f, cfg, rows, samples)
    groups = _cells(f, rows, group_col, "group_column").astype(str) if group_col else None
    warns = [w for w in [transform_warning(f, cfg)] if w]
    for w in warns + [f"folds by {fold_unit}"]:
        sys.stderr.write(f"{'WARNING' if w in warns else 'note'}: {w}\n")
    emb_name = resolve_embedding(f, cfg)
    spec = feature_spec(cfg, emb_name)
    folds = make_folds(samples, cfg["folds"], groups=groups,
                       unsafe_random_split=cfg["unsafe_random_split"], seed=cfg["seed"])
    # gene selection: per fold on its training rows only (hvg), and on every row for the refit
    t0 = time.perf_counter()
    gsel = cfg["genes"]
    store_genes = [str(g) for g in read_strings(f["expression/genes"])]
    G_store = len(store_genes)
    fixed = read_gene_list(gsel["file"], store_genes) if gsel["select"] == "list" else None
    sel_fold = {fd.k: fixed if fixed is not None else
                select_genes(f, rows[fd.train], gsel, store_genes) for fd in folds}
    sel_all = None
    if cfg["refit_all"]:
        sel_all = fixed if fixed is not None else select_genes(f, rows, gsel, store_genes)
    pred_cols = np.unique(np.concatenate(list(sel_fold.values())))  # store columns, ascending
    load_cols = np.unique(np.concatenate([pred_cols] + ([sel_all] if sel_all is not None else [])))
    timing["genes_seconds"] = time.perf_counter() - t0
    Y, _ = load_targets(f, rows, columns=None if len(load_cols) == G_store else load_cols)
    Y = np.asarray(Y, dtype=np.float32)
    if len(load_cols) == G_store:
        load_cols = np.arange(G_store)
    genes = [store_genes[j] for j in pred_cols]  # root /genes of predictions.h5
    clip = cfg["clip_predictions"]
    clip = bool(Y.size and float(Y.min()) >= 0) if clip == "auto" else bool(clip)

    def ycols(sel):  # columns of Y holding the store columns ``sel``
        return np.searchsorted(load_cols, sel)
    names = list(cfg["models"])

    def plain(name):  # a model a Dask worker can fit: not tuned, on the run's feature set
        m = None if name in tuned else REGISTRY[name](**model_params(cfg, name))
        return m if m is not None and m.feature_spec(spec) == spec else None
    # inside a fit (ridge's CV, early-stopping splits, max_train_cells_per_group) rows are
    # grouped by sample even when the folds are by patient: a training fold may hold a single
    # patient, and inner splits by sample stay leak-free within it
    fit_groups = samples

    (tmp / "features").mkdir()
    (tmp / "models").mkdir()
    per_fold, per_sample, gene_scores = [], [], {m: {} for m in names}
    tuner, tuned = _tuner(f, cfg, spec, out or tmp, clip, regions, folds)
    if tuner is not None and not cfg["tune"]["keep_default"]:
        names = [m for m in names if m not in tuned.values()]
    names = names + list(tuned)  # tuned models ("xgboost+tuned") after the defaults
    gene_scores.update({k: {} for k in tuned})
    labels = {m: m for m in names}
    codecs = {m: "" for m in names}
    n_features = None
    feature_info = {}
    total = len(folds) * len(names) + (len(names) if cfg["refit_all"] else 0)
    pbar = progress(unit="fits") if show_progress else None
    with h5py.File(tmp / "predictions.h5", "w") as ph, (pbar or _Null()) as p:
        task = p.add_task("compare", total=total) if pbar else None
        ph.attrs["description"] = ("tabst compare predictions: per fold the test cells, their "
                                   "measured expression (truth) and each model's prediction")
        ph.attrs["unsafe_random_split"] = bool(cfg["unsafe_random_split"])
        ph.attrs["folds"] = cfg["folds"]
        ph.attrs["clipped_at_zero"] = clip
        ph.attrs["gene_selection"] = json.dumps(gsel)
        put(ph, "genes", np.asarray(genes, dtype=object),
            description="every gene predicted in some fold (union over folds, store order); each "
                        "fold's own columns are fold_<k>/genes (= genes[fold_<k>/gene_index])")
        for fold in folds:
            tr, te = rows[fold.train], rows[fold.test]
            t0 = time.perf_counter()
            fb = FeatureBuilder(spec)
            fb.fit(f, tr)
            Xtr = np.asarray(fb.transform(f, tr), dtype=np.float32)
            Xte = np.asarray(fb.transform(f, te), dtype=np.float32)
            t_build = time.perf_counter() - t0
            timing["features_seconds"] += t_build
            fb.save(tmp / "features" / f"fold_{fold.k}")
            own = {}  # feature matrices of models that want another feature set, per spec
            fnames = list(fb.feature_names_)
            fgroups = list(fb.feature_groups_)
            n_features = Xtr.shape[1]
            feature_info = fb.summary(feature_info, fold.k)  # run.json "features"
            g = ph.create_group(f"fold_{fold.k}")
            g.attrs["description"] = f"fold {fold.k}: test cells of {', '.join(fold.test_samples)}"
            g.attrs["test_samples"] = json.dumps(fold.test_samples)
            g.attrs["n_train"] = len(tr)
            put(g, "cell_id", cell_id[fold.test].astype(object), description="test cell ids")
            put(g, "sample", samples[fold.test].astype(object), description="sample of each cell")
            put(g, "x", xs[fold.test], description="cell x in its sample image", unit="px")
            put(g, "y", ys[fold.test], description="cell y in its sample image", unit="px")
            put(g, "row", te, description="row index of the cell in the store's /cells")
            if regions is not None:
                put(g, "region", regions[fold.test].astype(object), description="region of cell")
            sel = sel_fold[fold.k]
            genes_k = [store_genes[j] for j in sel]
            put(g, "genes", np.asarray(genes_k, dtype=object),
                description="genes (columns) of this fold's truth and pred, selected on its "
                            "training rows only")
            put(g, "gene_index", np.searchsorted(pred_cols, sel).astype(np.int64),
                description="position of each of this fold's genes in the root /genes")
            cols = ycols(sel)
            if len(cols) == Y.shape[1]:
                Ytr, Yte = Y[fold.train], Y[fold.test]
            else:
                Ytr, Yte = Y[np.ix_(fold.train, cols)], Y[np.ix_(fold.test, cols)]
            put(g, "truth", Yte, description="measured expression [cells, genes of this fold]",
                compression="fast")
            pg = g.create_group("pred")
            pg.attrs["description"] = ("predictions [cells, genes of this fold], one dataset per "
                                       "model")
            if fold is folds[0] and cost.wanted(cfg, max(len(fd.train) for fd in folds)):
                fit_kw = dict(feature_names=fnames, feature_groups=fgroups, target_names=genes_k)
                estimate = cost.estimate_compare(cfg, [n for n in names if n not in tuned],
                                                 REGISTRY, Xtr, Ytr, fit_groups, folds, fold,
                                                 fit_kw, t_build)
            remote = {} if client is None else submit_fits(
                client, names, plain, Xtr, Ytr, Xte, fit_groups[fold.train],
                dict(feature_names=fnames, feature_groups=fgroups, target_names=genes_k))
            for name in names:
                if pbar:
                    p.update(task, description=f"fold {fold.k + 1}/{len(folds)} · {name}")
                rec = {"model": name, "fold": fold.k, "test_samples": ";".join(fold.test_samples),
                       "n_train": len(tr), "n_test": len(te), "n_features": n_features,
                       "n_genes": len(genes_k), "status": "ok", "error": ""}
                try:
                    params = None if name in tuned else model_params(cfg, name)
                    Xa, Xb, fn, fg = Xtr, Xte, fnames, fgroups
                    if name in tuned:  # a study on the training rows only, then the outer fit
                        params, Xa, Xb, fn, fg, fbt = tuner.inputs(
                            name, fold.k, tr, Ytr, samples[fold.train], fold.train, Xtr, Xte,
                            fnames, fgroups, genes_k, test_rows=te)
                        if fbt is not None:
                            fbt.save(tmp / "features" / name / f"fold_{fold.k}")
                    model = REGISTRY[tuned.get(name, name)](**params)
                    if name not in tuned and model.feature_spec(spec) != spec:  # e.g. context
                        Xa, Xb, fn, fg = _own_features(own, FeatureBuilder, f, model.feature_spec(
                            spec), tr, te, tmp / "features" / name / f"fold_{fold.k}")
                    if name in remote:  # fitted on a Dask worker (tabst.compare_dask)
                        model, P, predict_s = remote.pop(name).result()
                        timing["fits_on_workers"] = timing.get("fits_on_workers", 0) + 1
                    else:
                        model, P, predict_s = fit_predict(model, Xa, Ytr, Xb,
                                                          fit_groups[fold.train], dict(
                                                              feature_names=fn, feature_groups=fg,
                                                              target_names=genes_k))
                    labels[name] = model.display_name + (" (tuned)" if name in tuned else "")
                    codecs[name] = _codec_label(model)
                    if clip and model.expression_scale:  # scored as `tabst predict` writes
                        rec["n_clipped"] = int((P < 0).sum())
                        np.maximum(P, 0, out=P)
                    if P.shape != Yte.shape:
                        raise TabstError(f"predict returned shape {P.shape}, expected {Yte.shape}")
                    put(pg, name, P, description=f"predictions of {model.display_name}",
                        label=model.display_name, compression="fast")
                    if cfg["save_fold_models"]:
                        model.save(tmp / "models" / name / f"fold_{fold.k}")
                    sc = score_fold(Yte, P, samples[fold.test],
                                    None if regions is None else regions[fold.test])
                    metrics = sc.metrics()  # a metric the fold cannot define -> NaN
                    refuse_undefined(metrics, sc.per_sample, len(genes_k))
                    rec.update(metrics, n_fit=int(model.n_fit_rows_),
                               fit_seconds=float(model.fit_seconds_),
                               predict_seconds=predict_s,
                               peak_mem_mb=float(getattr(model, "peak_mem_mb_", np.nan)))
                    gene_scores[name][fold.k] = (sc.per_gene.per_gene, sc.per_gene_mse,
                                                 sc.per_gene.constant_truth,
                                                 sc.per_gene.constant_pred,
                                                 np.searchsorted(pred_cols, sel))
                    for s, v in sc.per_sample.items():
                        per_sample.append({"model": name, "fold": fold.k, "sample": s, **v})
                except Exception as e:  # a failing model must not stop the others
                    if is_fatal_io(e):  # ... but a full disk stops the run
                        raise
                    rec.update(status="failed", error=f"{type(e).__name__}: {e}".strip())
                    _write_log(tmp, name, f"--- fold {fold.k} ({', '.join(fold.test_samples)})\n"
                               + traceback.format_exc() + "\n")
                per_fold.append(rec)
                guard.check(f"{name} on fold {fold.k + 1} of {len(folds)}")
                if pbar:
                    p.advance(task)
            del Xtr, Xte, Ytr, Yte
        refit = {}
        if cfg["refit_all"]:
            t0 = time.perf_counter()
            fb = FeatureBuilder(spec)
            fb.fit(f, rows)
            Xall = np.asarray(fb.transform(f, rows), dtype=np.float32)
            fb.save(tmp / "features" / "all")
            own = {}
            timing["features_seconds"] += time.perf_counter() - t0
            genes_all = [store_genes[j] for j in sel_all]
            cols = ycols(sel_all)
            Yall = Y if len(cols) == Y.shape[1] else Y[:, cols]
            ok_names = [m for m in names if any(r["model"] == m and r["status"] == "ok"
                                                for r in per_fold)]
            remote = {} if client is None else submit_fits(
                client, ok_names, plain, Xall, Yall, None, fit_groups,
                dict(feature_names=list(fb.feature_names_), feature_groups=list(
                    fb.feature_groups_), target_names=genes_all))
            for name in names:
                if pbar:
                    p.update(task, description=f"refit on all rows · {name}")
                if name not in ok_names:
                    refit[name] = {"status": "skipped", "error": "failed on every fold"}
                else:
                    try:
                        t1 = time.perf_counter()
                        params = None if name in tuned else model_params(cfg, name)
                        Xa, fn, fg = Xall, list(fb.feature_names_), list(fb.feature_groups_)
                        if name in tuned:  # chosen by the same inner CV, over every sample
                            params, Xa, _, fn, fg, fbt = tuner.inputs(
                                name, "all", rows, Yall, samples, np.arange(len(rows)), Xall,
                                None, fn, fg, genes_all)
                            if fbt is not None:
                                fbt.save(tmp / "features" / name / "all")
                        model = REGISTRY[tuned.get(name, name)](**params)
                        if name not in tuned and model.feature_spec(spec) != spec:
                            Xa, _, fn, fg = _own_features(own, FeatureBuilder, f,
                                                          model.feature_spec(spec), rows, None,
                                                          tmp / "features" / name / "all")
                        if name in remote:
                            model = remote.pop(name).result()[0]
                            timing["fits_on_workers"] = timing.get("fits_on_workers", 0) + 1
                        else:
                            fit_predict(model, Xa, Yall, None, fit_groups, dict(
                                feature_names=fn, feature_groups=fg, target_names=genes_all))
                        model.save(tmp / "models" / name / "all")
                        refit[name] = {"status": "ok", "fit_seconds": model.fit_seconds_,
                                       "seconds": time.perf_counter() - t1,
                                       "path": f"models/{name}/all"}
                    except Exception as e:
                        if is_fatal_io(e):
                            raise
                        refit[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
                        _write_log(tmp, name, "--- refit on all rows\n" + traceback.format_exc())
                guard.check(f"the refit of {name}")
                if pbar:
                    p.advance(task)
            timing["refit_seconds"] = time.perf_counter() - t0
            del Xall, Yall
    if tuner is not None:
        tuner.finish(tmp)
        timing["tuning_seconds"] = tuner.t_total

    pf = pd.DataFrame(per_fold)
    for m in METRICS:
        if m not in pf:
            pf[m] = np.nan
    pf.insert(1, "label", pf["model"].map(labels))
    pf.to_csv(tmp / "per_fold.csv", index=False)
    ps = pd.DataFrame(per_sample, columns=["model", "fold", "sample", "n_cells",
                                           "cellwise_spearman", "genewise_pearson", "mse"])
    ps.insert(1, "label", ps["model"].map(labels))
    ps.to_csv(tmp / "per_sample.csv", index=False)
    per_gene_frame(gene_scores, genes, labels, [fd.k for fd in folds]) \
        .to_csv(tmp / "per_gene.csv", index=False)
    lb = leaderboard_frame(pf, cfg["primary_metric"], codecs, refit,
                           genes_label=genes_label(gsel, sel_fold, G_store))
    lb.to_csv(tmp / "leaderboard.csv", index=False)
    emb_attrs = _attrs(f["embeddings"][emb_name]) if emb_name else None
    gene_info = {**gsel, "label": selection_label(gsel), "n_store_genes": G_store,
                 "n_union": len(genes),
                 "n_per_fold": {str(k): int(len(v)) for k, v in sel_fold.items()},
                 "n_all_folds": int(len(set.intersection(*(set(v.tolist())
                                                           for v in sel_fold.values())))),
                 "n_refit": None if sel_all is None else int(len(sel_all)),
                 "seconds": round(timing["genes_seconds"], 3)}
    if gsel["select"] == "list":
        from .util import sha256_file

        gene_info["file"] = str(Path(gsel["file"]).resolve())
        gene_info["file_sha256"] = sha256_file(gsel["file"])
    return {"folds": [_fold_record(fd, regions) for fd in folds], "region_column": region_col,
            "group_column": group_col, "fold_unit": fold_unit, "clipped_at_zero": clip,
            "estimate": estimate.to_dict() if estimate is not None else None,
            "warnings": warns,
            "n_rows": int(len(rows)), "genes": genes,
            "n_store_genes": G_store, "gene_selection": gene_info,
            "samples": {s: int(c) for s, c in zip(*np.unique(samples, return_counts=True))},
            "embedding": {"name": emb_name, "attrs": emb_attrs} if emb_name else None,
            "feature_spec": spec, "features": feature_info, "refit": refit,
            "labels": labels, "timing": {k: round(v, 3) for k, v in timing.items()},
            "tuning": tuner.summary() if tuner is not None else None,
            "n_failed": int((lb["status"] != "ok").sum()),
            "ranked_by": str(lb["ranked_by"].iloc[0]),
            "leaderboard_notes": [f"WARNING: {w}" for w in warns]
            + leaderboard_notes(lb, pf, cfg["primary_metric"]) + _fit_notes(pf, clip)}


__all__ = ["run_compare", "leaderboard_frame", "leaderboard_table", "resolve_embedding",
           "feature_spec", "package_versions"]
