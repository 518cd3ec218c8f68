"""The compare run folder as ``tabst explain`` reads it (:class:`Run`), the choice of models,
genes and cells, the check that a store is the one the run was computed on
(:func:`check_store`), what a row of the store is (:func:`store_unit`: cells or spots) and the
embedding's patch size per sample (:func:`patch_sizes`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import TabstError
from ..safeio import check_legacy_file
from ..spots import diameters as spot_diameters
from ..spots import is_spot_store

SKIP_MODELS = ("mean",)  # constant baseline: all attributions are 0
#: ``platform`` values the spot ingests (st, visium, hest) record in the store's provenance.
#: Gallery patch size when neither the embedding nor the store gives one (cell-level stores).
FALLBACK_PATCH_PX = 64


# --------------------------------------------------------------------------------------------
# the run folder
# --------------------------------------------------------------------------------------------
class Run:
    """Read-only view of a compare run folder (see :mod:`tabst.compare` for the layout)."""

    def __init__(self, run_dir):
        import pandas as pd

        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise TabstError(f"{self.dir}: no such run folder. Create one with `tabst compare`.")
        for name in ("run.json", "leaderboard.csv", "predictions.h5"):
            if not (self.dir / name).exists():
                raise TabstError(f"{self.dir}: not a complete tabst compare run (no {name}). "
                                 "Re-run `tabst compare`.")
        self.meta = json.loads((self.dir / "run.json").read_text())
        self.leaderboard = pd.read_csv(self.dir / "leaderboard.csv")
        pg = self.dir / "per_gene.csv"
        self.per_gene = pd.read_csv(pg) if pg.exists() else None
        self.primary = self.meta.get("primary_metric", "cellwise_spearman")

    def store_path(self, store=None) -> Path:
        p = Path(store) if store is not None else Path(self.meta.get("store", {}).get("path", ""))
        if not p.exists():
            raise TabstError(f"{self.dir}: the run's store {p} does not exist (moved?). Pass "
                             "--store PATH to point at it.")
        return p

    def ok_models(self) -> list[str]:
        lb = self.leaderboard
        return [str(m) for m, n, k in zip(lb["model"], lb["n_folds_ok"], lb["n_folds"])
                if int(n) == int(k) and int(n) > 0]

    def label(self, model: str) -> str:
        return str(self.meta.get("labels", {}).get(model, model))

    def model_dir(self, model: str, fold: int | None) -> Path:
        return self.dir / "models" / model / ("all" if fold is None else f"fold_{fold}")

    def features_path(self, fold: int | None, model: str | None = None) -> Path:
        """Folder of the fitted FeatureBuilder (``features/fold_<k>`` or ``features/all``);
        a model with its own (a tuned model whose study chose another PCA k):
        ``features/<model>/fold_<k>``."""
        part = "all" if fold is None else f"fold_{fold}"
        own = self.dir / "features" / model / part if model else None
        return own if own is not None and own.is_dir() else self.dir / "features" / part

    def own_features(self, model: str, fold: int | None) -> bool:
        return self.features_path(fold, model) != self.features_path(fold)

    def feature_builder(self, fold: int | None, model: str | None = None):
        """The fitted :class:`tabst.dataset.FeatureBuilder` of a fold (None: the refit's)."""
        from ..dataset import FeatureBuilder

        p = self.features_path(fold, model)
        check_legacy_file(p)  # refuses the fold_<k>.joblib of older run folders: pickles run code
        if p.is_dir():
            return FeatureBuilder.load(p)
        raise TabstError(f"{p}: the fitted feature builder is missing; re-run `tabst compare`.")

    def folds(self) -> list[int]:
        import h5py

        with h5py.File(self.dir / "predictions.h5", "r") as f:
            return sorted(int(k.split("_")[1]) for k in f.keys() if k.startswith("fold_"))

    def genes(self) -> list[str]:
        import h5py

        from ..store import read_strings

        with h5py.File(self.dir / "predictions.h5", "r") as f:
            return [str(g) for g in read_strings(f["genes"])]

    def fold_genes(self, fold: int) -> list[str]:
        """Genes (truth / pred columns) of fold ``fold`` in predictions.h5: ``fold_<k>/genes``
        when the run selected genes per fold, else the root ``genes``."""
        import h5py

        from ..store import read_strings

        with h5py.File(self.dir / "predictions.h5", "r") as f:
            ds = f[f"fold_{fold}/genes"] if f"fold_{fold}/genes" in f else f["genes"]
            return [str(g) for g in read_strings(ds)]

    def explainable_genes(self, models: Sequence[str], refit: bool = False) -> list[str]:
        """Genes that every fold selected (and, with ``refit``, every refit model of ``models``
        learned), in the run's gene order: with a per-fold gene selection (``genes: hvg``) only
        these can be explained for all held-out cells."""
        keep = set(self.genes())
        for k in self.folds():
            keep &= set(self.fold_genes(k))
        if refit:
            for m in models:
                mj = self.model_dir(m, None) / "model.json"
                if mj.exists():
                    names = json.loads(mj.read_text()).get("target_names")
                    if names is not None:
                        keep &= {str(g) for g in names}
        return [g for g in self.genes() if g in keep]

    def gene_scores(self, model: str) -> dict:
        if self.per_gene is None:
            return {}
        d = self.per_gene[self.per_gene["model"] == model]
        return {str(g): float(v) for g, v in zip(d["gene"], d["pearson_mean"])}

    def mean_score(self, model: str, metric: str = "genewise_pearson") -> float:
        d = self.leaderboard[self.leaderboard["model"] == model]
        return float(d[f"{metric}_mean"].iloc[0]) if len(d) else float("nan")

    def random_weights_banner(self) -> str | None:
        emb = self.meta.get("embedding") or {}
        attrs = emb.get("attrs") or {}
        w = str(attrs.get("weights", ""))
        if w.lower() == "random":
            return (f"The image embedding '{emb.get('name')}' was computed with RANDOM encoder "
                    "weights (not ImageNet-pretrained): embedding features carry no learned "
                    "histology; attributions to the embedding group are not meaningful.")
        return None


def choose_best(run: Run, models: Sequence[str]) -> str:
    """The best of ``models`` by the run's primary metric (leaderboard order)."""
    for m in run.leaderboard["model"].astype(str):
        if m in models:
            return m
    raise TabstError("none of the chosen models is in the leaderboard.")


def best_per_gene(run: Run, models: Sequence[str], genes: Sequence[str], default: str) -> dict:
    """For each gene, the model (of ``models``) with the highest gene-wise Pearson on it.

    Ties and genes without a finite score go to ``default`` (the best model overall)."""
    scores = {m: run.gene_scores(m) for m in models}
    out = {}
    for g in genes:
        cand = [(float(scores[m].get(g, np.nan)), m) for m in models]
        cand = [(v, m) for v, m in cand if np.isfinite(v)]
        top = max((v for v, _ in cand), default=None)
        winners = [m for v, m in cand if v == top]
        out[g] = default if (not winners or default in winners) else winners[0]
    return out


def choose_genes(run: Run, best: str, genes: Sequence[str] | None, top_genes: int,
                 candidates: Sequence[str] | None = None) -> list[str]:
    """Named genes (validated) + the best model's ``top_genes`` genes by gene-wise Pearson.

    ``candidates``: the genes that can be explained (default: every gene of the run; with a
    per-fold gene selection, :meth:`Run.explainable_genes`)."""
    run_genes = run.genes()
    all_genes = list(run_genes) if candidates is None else list(candidates)
    out = []
    for g in genes or []:
        if g not in run_genes:
            close = [x for x in run_genes if x.lower().startswith(str(g).lower()[:3])][:8]
            raise TabstError(f"gene {g!r} is not in the run (it has {len(run_genes)} genes"
                             + (f"; similar: {', '.join(close)}" if close else "") + ").")
        if g not in all_genes:
            raise TabstError(f"gene {g!r} was not selected in every fold of the run (gene "
                             "selection per fold, see run.json gene_selection) or not learned by "
                             f"the refit model, so not every held-out cell has a prediction of it;"
                             f" {len(all_genes)} genes can be explained"
                             + (f", e.g. {', '.join(all_genes[:8])}" if all_genes else "") + ".")
        if g not in out:
            out.append(g)
    if top_genes and top_genes > 0:
        sc = run.gene_scores(best)
        ranked = sorted((g for g in all_genes if np.isfinite(sc.get(g, np.nan))),
                        key=lambda g: -sc[g])
        if not ranked:
            ranked = list(all_genes)
        for g in ranked:
            if len(out) >= len(genes or []) + top_genes:
                break
            if g not in out:
                out.append(g)
    if not out:
        raise TabstError("no genes to explain: pass --genes G1,G2 or --top-genes N (N >= 1).")
    return out


def _cells_per_fold(sizes: dict, total: int) -> dict:
    """Spread ``total`` cells over folds in proportion to their test size (≥ 1 each)."""
    n_all = sum(sizes.values())
    if total >= n_all:
        return dict(sizes)
    out = {k: max(1, int(round(total * v / n_all))) for k, v in sizes.items()}
    return {k: min(v, sizes[k]) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# is this the run's store?
# --------------------------------------------------------------------------------------------
def _some(names, n: int = 5) -> str:
    names = [str(x) for x in names]
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _gene_problem(run: Run, f) -> str | None:
    """How the store's genes differ from the run's (None: they do not)."""
    from ..store import read_strings

    have = [str(g) for g in read_strings(f["expression/genes"])] if "expression/genes" in f \
        else []
    had = run.meta.get("store", {}).get("n_genes")
    missing = [g for g in run.genes() if g not in set(have)]
    if missing:
        return (f"it lacks {len(missing)} of the run's {len(run.genes())} genes "
                f"({_some(missing)})")
    if had is not None and int(had) != len(have):
        extra = [g for g in have if g not in set(run.genes())]
        named = f" ({_some(extra)} not in the run)" if len(run.genes()) == int(had) else ""
        return f"it has {len(have)} genes, the run's store had {int(had)}{named}"
    return None


def _cell_problem(run: Run, f) -> str | None:
    """Whether the run's evaluated cells (every fold's test cells in predictions.h5) sit in the
    store at the rows the run recorded (None: they do)."""
    import h5py

    from ..store import read_strings

    ids, rows = [], []
    with h5py.File(run.dir / "predictions.h5", "r") as ph:
        for k in run.folds():
            ids.append(np.asarray(read_strings(ph[f"fold_{k}/cell_id"]), dtype=object))
            rows.append(ph[f"fold_{k}/row"][()].astype(np.int64))
    ids, rows = np.concatenate(ids).astype(str), np.concatenate(rows)
    have = np.asarray(read_strings(f["cells/cell_id"]), dtype=object).astype(str) \
        if "cells/cell_id" in f else np.array([], dtype=str)
    absent = ~np.isin(ids, have)
    if absent.any():
        return (f"{int(absent.sum())} of the run's {len(ids)} evaluated cells are not in it "
                f"(e.g. {_some(ids[absent], 3)}; it has {len(have)} cells, the run's store had "
                f"{run.meta.get('store', {}).get('n_cells', '?')})")
    inside = rows < len(have)
    moved = ~inside | (have[np.where(inside, rows, 0)] != ids)
    if moved.any():
        return (f"it holds {int(moved.sum())} of the run's {len(ids)} evaluated cells in other "
                f"rows (e.g. {_some(ids[moved], 3)}): another ingest of the data")
    return None


def check_store(run: Run, f, given: bool = True) -> None:
    """Refuse a store other than the one the run was computed on.

    The attributions read each held-out cell's features from the store at the row recorded in
    ``predictions.h5`` and are compared with the run's predictions of the run's genes, so the
    store must hold the same genes and the run's evaluated cells at the same rows.

    Parameters
    ----------
    run : Run
    f : h5py.File
        The store (``--store``, or the path recorded in ``run.json``).
    given : bool
        Whether the store was passed with ``--store`` (only changes the wording).

    Raises
    ------
    TabstError
        naming which genes / how many cells differ.
    """
    problems = [p for p in (_gene_problem(run, f), _cell_problem(run, f)) if p]
    if not problems:
        return
    recorded = run.meta.get("store", {}).get("path", "?")
    what = (f"--store {f.filename} is not the store this run was computed on ({recorded})"
            if given else f"the run's store {f.filename} has changed since the run")
    raise TabstError(f"{what}: {'; '.join(problems)}. Pass --store with the run's store, or re-run "
                     "`tabst compare` on this one.")


# --------------------------------------------------------------------------------------------
# cells or spots; patch size per sample
# --------------------------------------------------------------------------------------------
def store_unit(f) -> str:
    """``"spot"`` when the store holds spots (:func:`tabst.spots.is_spot_store`), else
    ``"cell"``."""
    return "spot" if is_spot_store(f) else "cell"


def patch_sizes(run: Run, f, samples) -> tuple[str, dict]:
    """The user's patch-size choice and the resolved pixel size of each of ``samples``.

    Read from the run's embedding attrs: ``patch_size`` (an int, or ``"spot"``) and
    ``patch_size_px`` (``{sample: px}``, written by ``tabst embed``). A sample missing there
    falls back to the number given, else its ``spot_diameter_px``, else
    :data:`FALLBACK_PATCH_PX`. Returns ``(choice text, {sample: px})``.
    """
    attrs = (run.meta.get("embedding") or {}).get("attrs") or {}
    choice = attrs.get("patch_size")
    px = attrs.get("patch_size_px") or {}
    if isinstance(px, str):
        try:
            px = json.loads(px)
        except ValueError:
            px = {}
    px = px if isinstance(px, dict) else {}
    diam = spot_diameters(f["images"] if "images" in f else {})
    out = {}
    for s in samples:
        s = str(s)
        v = px.get(s)
        if v is None and str(choice).strip().isdigit():
            v = int(str(choice).strip())
        if v is None and s in diam:
            v = int(round(diam[s]))
        out[s] = int(v) if v is not None else FALLBACK_PATCH_PX
    if choice in (None, ""):
        text = "no embedding patch size recorded"
    else:
        text = f"--patch-size {choice}"
    return text, out
