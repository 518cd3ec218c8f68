"""Gene selection for ``tabst compare``: which expression columns the models learn and are scored on.

Config key ``genes`` (validated by :func:`validate_genes`)::

    genes: {select: all, file: null, k: 2000, flavor: variance}

``select``
    ``all`` — every gene of ``/expression/genes`` (the default);
    ``list`` — the genes named in ``file``: a text file with one gene per line (blank lines and
    ``#`` comments are ignored), or a JSON file (``.json``, or text starting with ``{`` / ``[``)
    holding ``{"genes": [...]}`` — HEST-Benchmark's ``var_50genes.json`` — or a plain list of
    names. A name that is not in the store is an error naming the file and the genes. The
    columns keep the store's order, whatever the file's order;
    ``hvg`` — the ``k`` most variable genes, computed **inside each fold on that fold's training
    rows only** (and on every row for the ``refit_all`` models). Never at ingest: the held-out
    sample's expression would then choose the genes it is scored on.
``flavor`` (``hvg`` only)
    ``variance`` — sample variance (ddof 1) of the *stored* values (e.g. log1p(count/total*100)),
    per gene over the training rows; the top ``k`` by variance.
    ``seurat`` — the normalised dispersion of Seurat / ``scanpy.pp.highly_variable_genes(
    flavor="seurat", n_top_genes=k)``: on ``expm1`` of the stored values (so it assumes the store
    holds log1p values) per gene mean μ and variance σ² (ddof 1); dispersion log(σ²/μ) (μ = 0 →
    1e-12; σ² = 0 → NaN); genes binned into 20 equal-width bins of log1p(μ); the dispersion is
    z-scored within its bin (a bin with one gene: mean 0, sd = that dispersion); the top ``k``
    by normalised dispersion, NaN last.

Ties keep the store's gene order (stable sort); ``k`` >= the number of genes selects every gene.
The statistics are streamed with :func:`tabst.store.iter_batches` (per-batch float64 mean/M2
merged with Chan's formula), so only ``batch_size`` rows of ``/expression/X`` are in memory.

On the command line ``tabst compare --genes all|FILE|hvg|hvg:K`` is short for the key
(:func:`parse_genes_option`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import TabstError

SELECTS = ("all", "list", "hvg")
FLAVORS = ("variance", "seurat")
DEFAULT_GENES = {"select": "all", "file": None, "k": 2000, "flavor": "variance"}
N_BINS = 20


def validate_genes(value, source: str = "config") -> dict:
    """The ``genes`` config section merged over :data:`DEFAULT_GENES` and checked."""
    if value is None:
        value = {}
    if isinstance(value, str):
        value = parse_genes_option(value)
    if not isinstance(value, dict):
        raise TabstError(f"{source}: key 'genes' must be a mapping {{select: all|list|hvg, file: "
                         f"PATH, k: INT, flavor: {'|'.join(FLAVORS)}}}, got {value!r}.")
    bad = sorted(set(value) - set(DEFAULT_GENES))
    if bad:
        raise TabstError(f"{source}: unknown key 'genes.{bad[0]}'. Valid: "
                         f"{', '.join(f'genes.{k}' for k in DEFAULT_GENES)}.")
    out = {**DEFAULT_GENES, **value}
    if out["select"] not in SELECTS:
        raise TabstError(f"{source}: key 'genes.select' must be one of {', '.join(SELECTS)}, got "
                         f"{out['select']!r}.")
    if isinstance(out["k"], bool) or not isinstance(out["k"], int) or out["k"] < 1:
        raise TabstError(f"{source}: key 'genes.k' must be an integer >= 1, got {out['k']!r}.")
    if out["flavor"] not in FLAVORS:
        raise TabstError(f"{source}: key 'genes.flavor' must be one of {', '.join(FLAVORS)}, got "
                         f"{out['flavor']!r}.")
    if out["file"] is not None and not isinstance(out["file"], str):
        raise TabstError(f"{source}: key 'genes.file' must be a path (string) or null, got "
                         f"{out['file']!r}.")
    if out["select"] == "list":
        if not out["file"]:
            raise TabstError(f"{source}: genes.select is 'list' but 'genes.file' is not set (a "
                             "text file with one gene per line, or a JSON gene list).")
        if not Path(out["file"]).is_file():
            raise TabstError(f"{source}: key 'genes.file': gene list {out['file']} not found.")
    elif out["file"]:
        raise TabstError(f"{source}: 'genes.file' is set but genes.select is "
                         f"{out['select']!r}; use select: list (or --genes FILE).")
    return out


def parse_genes_option(text: str) -> dict:
    """``--genes`` value → the ``genes`` config section: ``all``, ``hvg`` (k from the config or
    2000), ``hvg:K``, ``hvg:K:FLAVOR``, or a path to a gene list file."""
    t = str(text).strip()
    if t == "all":
        return {"select": "all"}
    if t == "hvg" or t.startswith("hvg:"):
        parts = t.split(":")
        out: dict = {"select": "hvg"}
        if len(parts) > 3 or (len(parts) >= 2 and not parts[1].strip().isdigit()):
            raise TabstError(f"--genes {t!r}: expected hvg:K with K an integer >= 1 (e.g. "
                             f"hvg:2000), optionally hvg:K:FLAVOR ({', '.join(FLAVORS)}).")
        if len(parts) >= 2:
            out["k"] = int(parts[1])
        if len(parts) == 3:
            out["flavor"] = parts[2].strip()
        return out
    if not t:
        raise TabstError("--genes: empty value; use all, hvg:K or a gene list file.")
    return {"select": "list", "file": t}


def selection_label(sel: dict) -> str:
    """Short human text of a validated ``genes`` section (leaderboard / report)."""
    if sel["select"] == "list":
        return f"list {Path(sel['file']).name}"
    if sel["select"] == "hvg":
        return f"hvg top {sel['k']} ({sel['flavor']}, training rows of each fold)"
    return "all"


def read_gene_list(path, store_genes) -> np.ndarray:
    """Indices (store order, ascending) of the genes named in ``path``.

    Raises
    ------
    TabstError
        naming the file and the genes that are not in the store, or when the file names none.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise TabstError(f"{path}: cannot read the gene list ({e}).") from None
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("{", "["):
        names = _json_gene_names(path, text)
    else:
        names = [s for s in (line.split("#", 1)[0].strip() for line in text.splitlines()) if s]
    if not names:
        raise TabstError(f"{path}: the gene list names no gene (one gene per line, or JSON "
                         '{"genes": [...]}, expected).')
    pos = {str(g): i for i, g in enumerate(store_genes)}
    unknown = list(dict.fromkeys(g for g in names if g not in pos))
    if unknown:
        shown = ", ".join(unknown[:20]) + (f" ... ({len(unknown)} in all)" if len(unknown) > 20
                                           else "")
        raise TabstError(f"{path}: {len(unknown)} gene(s) of the list are not in the store's "
                         f"/expression/genes: {shown}. Fix the names (case matters) or remove "
                         "them.")
    return np.unique([pos[g] for g in names]).astype(np.int64)


def _json_gene_names(path: Path, text: str) -> list[str]:
    """Gene names of a JSON gene list: ``{"genes": [names]}`` (HEST-Benchmark's
    ``var_50genes.json``) or ``[names]``."""
    import json

    try:
        data = json.loads(text)
    except ValueError as e:
        raise TabstError(f"{path}: not valid JSON ({e}); a JSON gene list is "
                         '{"genes": ["GENE1", ...]} (as HEST\'s var_50genes.json) or a list of '
                         "names.") from None
    if isinstance(data, dict):
        if "genes" not in data:
            raise TabstError(f"{path}: the JSON object has no 'genes' key (keys: "
                             f"{', '.join(map(str, list(data)[:10])) or 'none'}); expected "
                             '{"genes": ["GENE1", ...]}.')
        data = data["genes"]
    if not isinstance(data, list):
        raise TabstError(f"{path}: 'genes' must be a list of gene names, got "
                         f"{type(data).__name__}.")
    bad = [i for i, g in enumerate(data) if not isinstance(g, str) or not g.strip()]
    if bad:
        raise TabstError(f"{path}: entry {bad[0] + 1} of the gene list is {data[bad[0]]!r}, not "
                         "a gene name.")
    return [g.strip() for g in data]


def gene_moments(store, rows, batch_size: int = 8192, expm1: bool = False):
    """Per-gene (n, mean, variance ddof 1) of ``/expression/X`` over ``rows``, streamed.

    ``expm1``: the moments of ``expm1(X)`` instead of X. float64, merged batch by batch with
    Chan et al.'s parallel formula (numerically stable)."""
    from .store import iter_batches

    rows = np.sort(np.asarray(rows, dtype=np.int64))
    n, mean, m2 = 0, None, None
    for b in iter_batches(store, ["expression/X"], batch_size, rows=rows):
        y = np.asarray(b["expression/X"], dtype=np.float64)
        if expm1:
            y = np.expm1(y)
        nb = y.shape[0]
        if nb == 0:
            continue
        mb = y.mean(axis=0)
        m2b = ((y - mb) ** 2).sum(axis=0)
        if mean is None:
            n, mean, m2 = nb, mb, m2b
        else:
            tot = n + nb
            d = mb - mean
            mean = mean + d * (nb / tot)
            m2 = m2 + m2b + d * d * (n * nb / tot)
            n = tot
    if mean is None:
        raise TabstError("gene selection: no training rows to compute gene variability on.")
    var = m2 / (n - 1) if n > 1 else np.zeros_like(m2)
    return n, mean, var


def hvg_scores(store, rows, flavor: str = "variance", batch_size: int = 8192) -> np.ndarray:
    """Variability score per gene over ``rows`` (higher = more variable; NaN = never chosen
    before a finite score). See the module docstring for each flavor."""
    if flavor == "variance":
        _, _, var = gene_moments(store, rows, batch_size)
        return var
    if flavor != "seurat":
        raise TabstError(f"genes.flavor must be one of {', '.join(FLAVORS)}, got {flavor!r}.")
    _, mean, var = gene_moments(store, rows, batch_size, expm1=True)
    mean = mean.copy()
    mean[mean == 0] = 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        disp = var / mean
        disp[disp == 0] = np.nan
        disp = np.log(disp)
    lm = np.log1p(mean)
    lo, hi = float(lm.min()), float(lm.max())
    if hi > lo:  # pandas.cut(bins=20): equal width, right-closed, lowest edge included
        edges = np.linspace(lo, hi, N_BINS + 1)
        b = np.clip(np.searchsorted(edges, lm, side="left") - 1, 0, N_BINS - 1)
    else:
        b = np.zeros(len(lm), dtype=np.int64)
    norm = np.full(len(disp), np.nan)
    for j in np.unique(b):
        m = b == j
        d = disp[m]
        fin = d[np.isfinite(d)]
        if fin.size == 0:
            continue
        mu = fin.mean()
        sd = fin.std(ddof=1) if fin.size > 1 else np.nan
        if not np.isfinite(sd):  # one gene in the bin (scanpy: mean 0, sd = its dispersion)
            sd, mu = mu, 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            norm[m] = (d - mu) / sd
    return norm


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices (ascending = store order) of the ``k`` highest scores; NaN last, ties by order."""
    s = np.where(np.isfinite(scores), scores, -np.inf)
    order = np.argsort(-s, kind="stable")
    return np.sort(order[:min(int(k), len(s))]).astype(np.int64)


def select_genes(store, rows, sel: dict, store_genes, batch_size: int = 8192) -> np.ndarray:
    """Column indices (store order) chosen by the validated ``genes`` section ``sel`` using only
    ``rows`` (the training rows of a fold, or every row for the refit)."""
    G = len(store_genes)
    if sel["select"] == "all":
        return np.arange(G, dtype=np.int64)
    if sel["select"] == "list":
        return read_gene_list(sel["file"], store_genes)
    if sel["k"] >= G:
        return np.arange(G, dtype=np.int64)
    return top_k(hvg_scores(store, rows, sel["flavor"], batch_size), sel["k"])
