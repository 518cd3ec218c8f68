"""What the report says besides its figures: whether the run is on spots or cells (and the words
for them), the best/worst gene tables with their fold counts, and the feature groups used."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..spots import is_spot_platform
from ..spots import platform as spot_platform
from .common import fmt


# --------------------------------------------------------------------------------------------
# spots or cells
# --------------------------------------------------------------------------------------------
def store_spot_diameter(store_path, samples) -> float | None:
    """Median finite ``spot_diameter_px`` of ``/images/<sample>`` (None: none, or no store)."""
    import h5py
    import numpy as np

    if not store_path or not Path(store_path).is_file():
        return None
    try:
        with h5py.File(store_path, "r") as f:
            ds = [float(f[f"images/{s}"].attrs.get("spot_diameter_px", float("nan")))
                  for s in samples if f"images/{s}" in f]
    except (OSError, ValueError, TypeError):
        return None
    ds = [d for d in ds if math.isfinite(d) and d > 0]
    return float(np.median(ds)) if ds else None


def is_spot_run(run: dict, spot_diameter_px: float | None = None) -> bool:
    """Whether the run's rows are spots: the ingest platform in the store's provenance is a spot
    platform (ST, Visium, HEST-1k, ...), or the images record a spot diameter."""
    store = run.get("store") or {}
    platform = str(store.get("platform") or spot_platform(store.get("provenance"))).lower()
    if platform:
        return is_spot_platform(platform)
    return bool(spot_diameter_px)


def unit_words(spots: bool) -> dict:
    """Template words for one row of the store: ``unit``/``units``/``Units``."""
    u = "spot" if spots else "cell"
    return {"unit": u, "units": u + "s", "Units": u.capitalize() + "s"}


_CELL = re.compile(r"\b([Cc])ell(s?)\b")


def spot_text(text: str, spots: bool) -> str:
    """``text`` with cell/cells (cell-wise, ...) said as spot/spots on a spot run."""
    if not spots or not isinstance(text, str):
        return text
    return _CELL.sub(lambda m: ("S" if m.group(1) == "C" else "s") + "pot" + m.group(2), text)


# --------------------------------------------------------------------------------------------
# best / worst genes
# --------------------------------------------------------------------------------------------
def gene_tables(pg, model: str, n_folds_ok: int, n_best_worst: int) -> dict:
    """Best/worst genes of ``model`` ranked only among genes scored in at least half of the
    folds the model completed (with a per-fold gene selection a gene is scored only in the folds
    that selected it, and a mean over one or two folds rests on one or two sections).

    Returns ``best``/``worst`` rows (gene, r, sd, mse, folds), ``const`` (genes measured as
    constant in some fold), ``map_candidates`` (genes in order for the maps), ``min_folds``,
    ``n_folds``, ``n_ranked``, ``n_left_out`` and ``rule`` (one sentence for the page)."""
    g = pg[pg["model"] == model].sort_values(["pearson_mean", "gene"], ascending=[False, True])
    n_f = int(n_folds_ok) if n_folds_ok else int(g["n_folds"].max()) if len(g) else 0
    min_folds = max(1, math.ceil(n_f / 2))
    ranked = g[g["n_folds"] >= min_folds]
    left = len(g) - len(ranked)
    nb = min(int(n_best_worst), len(ranked) // 2)

    def row(r):
        return {"gene": r["gene"], "r": fmt(r["pearson_mean"]), "sd": fmt(r["pearson_sd"]),
                "mse": fmt(r["mse_mean"]), "folds": f"{int(r['n_folds'])}/{n_f}"}

    if left:
        rule = (f"Ranked among the {len(ranked)} genes scored in at least {min_folds} of the "
                f"{n_f} folds (half or more); {left} gene(s) scored in fewer folds are left out "
                "of the ranking: a per-fold gene selection chose them in few training folds, so "
                "their mean rests on few held-out sections.")
    elif g["n_folds"].min() < n_f if len(g) else False:
        rule = (f"Every gene was scored in at least {min_folds} of the {n_f} folds (half or more) "
                "and is ranked; the folds column says in how many.")
    else:
        rule = f"Every gene was scored in all {n_f} folds."
    # genes measured as constant in every fold that scored them have nothing to map (a one-cell
    # test sample makes every gene constant in its own fold only)
    usable = g[g["n_folds_constant_truth"] < g["n_folds"]]
    first = usable[usable["n_folds"] >= min_folds]["gene"].tolist()
    return {"best": [row(r) for _, r in ranked.head(nb).iterrows()],
            "worst": [row(r) for _, r in ranked.tail(nb).iloc[::-1].iterrows()] if nb else [],
            "const": g.loc[g["n_folds_constant_truth"] > 0, "gene"].tolist(),
            "map_candidates": first + [x for x in usable["gene"].tolist() if x not in set(first)],
            "min_folds": min_folds, "n_folds": n_f, "n_ranked": int(len(ranked)),
            "n_left_out": int(left), "rule": rule}


# --------------------------------------------------------------------------------------------
# feature groups
# --------------------------------------------------------------------------------------------
def _fold_builders(run_dir: Path) -> list[dict]:
    """``features.json`` of each fold's saved feature builder (empty when absent)."""
    out = []
    for p in sorted((run_dir / "features").glob("fold_*/features.json")):
        try:
            meta = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict):
            out.append(meta)
    return out


def _groups_from_run(run: dict, builders: list[dict]) -> dict:
    """group -> number of columns, from the run info (``features.groups``, in the order of
    ``used_groups`` when recorded), else the saved builders, else the config's spec."""
    info = run.get("features") or {}
    groups = info.get("groups")
    if isinstance(groups, list) and groups:  # [{"group": g, "n": k}, ...] or [g, ...]
        out: dict = {}
        for it in groups:
            name = it.get("group", it.get("name")) if isinstance(it, dict) else it
            n = int(it.get("n", it.get("n_columns", 1))) if isinstance(it, dict) else 1
            out[str(name)] = out.get(str(name), 0) + n
        groups = out
    if isinstance(groups, dict) and groups:
        used = info.get("used_groups")
        order = list(used) if isinstance(used, list) and used else list(groups)
        return {str(g): int(groups.get(g, 0)) for g in order}
    for b in builders:
        gs = b.get("feature_groups") or []
        if gs:
            return {g: list(gs).count(g) for g in dict.fromkeys(gs)}
    return _groups_from_spec(run.get("feature_spec") or {})


def _groups_from_spec(spec: dict) -> dict:
    out: dict = {}
    emb = spec.get("embedding")
    if isinstance(emb, dict):
        out["embedding"] = int(emb["pca"]) if emb.get("pca") else 0
    md = spec.get("metadata") or {}
    if md.get("tissue"):
        out["tissue"] = 0
    if md.get("position"):
        out["position"] = 2
    for name in spec.get("features") or []:
        out[str(name)] = 0
    nb = spec.get("neighbourhood")
    if isinstance(nb, dict):
        out["neighbourhood"] = int(nb.get("components") or 0)
    return out


def _constant_groups(run: dict, builders: list[dict]) -> dict:
    """group -> (why, fed) where (some of) its columns carry nothing (``fed``: the models were
    given the constant column): the constant columns the feature builder
    left out (run info ``features.dropped_constant``, per fold), or, for runs from before that
    was recorded, a tissue one-hot with a single tissue in every fold's training rows."""
    dropped = (run.get("features") or {}).get("dropped_constant")
    per_fold = dropped if isinstance(dropped, dict) else {"all": dropped or []}
    n_folds = len(per_fold)
    cols: dict = {}
    for cols_k in per_fold.values():
        for c in cols_k or []:
            if isinstance(c, dict):
                key = (str(c.get("group", "?")), str(c.get("name", "?")), c.get("value"))
                cols[key] = cols.get(key, 0) + 1
    out: dict = {}
    for (g, name, value), k in cols.items():
        val = "" if value is None else f" = {fmt(value, 3)}"
        folds = f" in {k} of {n_folds} folds" if isinstance(dropped, dict) else ""
        out.setdefault(g, []).append(f"{name}{val} on every training row{folds}")
    out = {g: ("; ".join(v) + ": left out, it carries no information", False)
           for g, v in out.items()}
    tissues = [b.get("tissues") for b in builders if isinstance(b.get("tissues"), list)]
    if not out and tissues and all(len(t) <= 1 for t in tissues) \
            and any(str(n).startswith("tissue=") for b in builders
                    for n in b.get("feature_names") or []):
        seen = sorted({x for t in tissues for x in t})
        out["tissue"] = (f"tissue={seen[0] if seen else '?'} is the same for every training row "
                         "of every fold: it carries no information", True)
    return out


def _off_groups(run: dict, groups: dict) -> list[dict]:
    """Groups the config asked about but the run did not use, with the recorded reason."""
    pos = (run.get("features") or {}).get("position")
    if isinstance(pos, dict) and not pos.get("used") and "position" not in groups:
        return [{"group": "position", "why": str(pos.get("reason") or "not used")}]
    return []


def feature_groups(run: dict, run_dir: Path, words: dict) -> dict:
    """``{"used": [{group, n, what}], "constant": [{group, why}], "off": [{group, why}]}`` of the
    run's features: the groups recorded in the run info (else the saved feature builders, else
    the config's ``features`` block) with what each is made of; the groups whose columns were
    constant (left out, or fed but carrying nothing) and the groups switched off, with why."""
    builders = _fold_builders(Path(run_dir))
    groups = _groups_from_run(run, builders)
    const = _constant_groups(run, builders)
    spec = run.get("feature_spec") or {}
    cols, sources = _columns_by_group(builders)
    used = []
    constant = [{"group": g, "why": why} for g, (why, fed) in const.items()
                if fed or g not in groups]
    for g, n in groups.items():
        if any(c["group"] == g for c in constant):
            continue  # constant on every row: not shown as a feature that can matter
        what = _what(g, spec, run, words, cols.get(g, []), sources.get(g, []))
        if g in const:  # some columns left out, the others used
            what += f" ({const[g][0]})"
        used.append({"group": g, "n": n if n else "?", "what": what})
    return {"used": used, "constant": constant, "off": _off_groups(run, groups)}


def _columns_by_group(builders: list[dict]) -> tuple[dict, dict]:
    """group -> column names, and group -> ``/features`` datasets, of the first saved builder."""
    cols: dict = {}
    sources: dict = {}
    for b in builders[:1]:
        for name, g in zip(b.get("feature_names") or [], b.get("feature_groups") or []):
            cols.setdefault(str(g), []).append(str(name))
        for ef in b.get("extra_features") or []:
            for g in dict.fromkeys(ef.get("groups") or []):
                sources.setdefault(str(g), []).append(str(ef.get("name")))
    return cols, sources


def _what(group: str, spec: dict, run: dict, w: dict, cols: list, sources: list) -> str:
    emb = spec.get("embedding") if isinstance(spec.get("embedding"), dict) else {}
    if sources:  # columns of /features/<name> datasets (morphology, ...)
        shown = ", ".join(cols[:6]) + (f", … ({len(cols)} columns)" if len(cols) > 6 else "")
        return "from /features/" + ", /features/".join(sources) + (f": {shown}" if cols else "")
    if group == "embedding":
        name = (run.get("embedding") or {}).get("name") or emb.get("name") or "?"
        pca = emb.get("pca")
        return (f"image embedding {name}" + (f", first {pca} principal components (PCA fitted on "
                                             "each fold's training rows)" if pca else ", raw"))
    if group == "tissue":
        return f"one-hot tissue label of the {w['unit']}" + (f" ({', '.join(cols)})" if cols
                                                              else "")
    if group == "position":
        return (f"x/y of the {w['unit']} within its section (min-max per section): a "
                "tissue-layout prior, not image evidence")
    if group == "neighbourhood" and spec.get("neighbourhood"):
        return f"mean embedding components of the nearest other {w['units']} of the section"
    return "from /features/" + ", /features/".join(spec.get("features") or [group])
