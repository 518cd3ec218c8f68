"""``tabst predict``: a compare run's refitted model -> a Crunch 1 submission file.

The submission is the challenge's long format, one line per cell x gene::

    cell_id,gene,prediction
    12345,GENE_A,0.4123
    ...

Before anything appears at ``--out`` the file is checked as the challenge's scorer checks it:
every selected cell x every gene of the model present exactly once, predictions finite
(no NaN / inf), clipped at 0 (expression is non-negative; the number clipped is reported).
It is written to a hidden temp file beside ``--out`` and renamed only when complete.

The model is ``<run>/models/<model>/all`` (refit on every training row, ``refit_all: true``)
with its feature builder ``<run>/features/all``; by default the best-ranked model of the run's
leaderboard that has such a refit.

When the run selected genes (config ``genes``: a list or the top-k highly variable genes, chosen
on every row for the refit), the submission holds the refit model's genes only.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import StoreError, TabstError
from .store import opened, read_strings

ALL_GROUPS = "all"


@dataclass
class PredictResult:
    """Summary of :func:`predict_submission`."""

    out: Path
    model: str
    n_cells: int
    n_genes: int
    n_rows: int
    n_clipped: int
    id_column: str
    group: str
    samples: dict = field(default_factory=dict)


def _load_run(run: Path) -> tuple[dict, "object"]:
    import pandas as pd

    if not run.is_dir():
        raise TabstError(f"{run}: no such run folder. Create one with `tabst compare STORE --out "
                         f"{run}`.")
    rj = run / "run.json"
    if not rj.exists():
        raise TabstError(f"{run}: not a complete tabst compare run (no run.json). Re-run "
                         "`tabst compare`.")
    info = json.loads(rj.read_text())
    lb_path = run / "leaderboard.csv"
    lb = pd.read_csv(lb_path) if lb_path.exists() else None
    return info, lb


def choose_model(run, model: str | None = None) -> str:
    """The model to predict with: ``model`` if given, else the best-ranked with a refit."""
    run = Path(run)
    info, lb = _load_run(run)
    refit = info.get("refit") or {}
    have = sorted(p.parent.parent.name for p in (run / "models").glob("*/all/model.json"))
    if model is not None:
        if not (run / "models" / model / "all" / "model.json").exists():
            why = (refit.get(model) or {}).get("error") or (refit.get(model) or {}).get("status")
            raise TabstError(
                f"{run}: no refitted model '{model}' (models/{model}/all)"
                + (f": refit {why}" if why else "")
                + f". Refitted models in this run: {', '.join(have) or 'none'}."
                + ("" if have else " Re-run `tabst compare` with `refit_all: true` "
                                   "(--set refit_all=true)."))
        return model
    if not have:
        raise TabstError(f"{run}: no refitted model (models/<model>/all): the run was made with "
                         "refit_all: false or every refit failed. Re-run `tabst compare` with "
                         "--set refit_all=true.")
    if lb is not None:
        for name in lb.sort_values("rank")["model"].astype(str):
            if name in have:
                return name
    return have[0]


def _select_rows(f, group: str, samples) -> np.ndarray:
    fname = getattr(f, "filename", "store")
    n = int(f["cells/cell_id"].shape[0])
    keep = np.ones(n, dtype=bool)
    if group != ALL_GROUPS:
        if "cells/group" not in f:
            raise StoreError(f"{fname}: the store has no /cells/group, so --group {group!r} "
                             "selects nothing. Use --group all, or ingest a group column.")
        g = read_strings(f["cells/group"]).astype(str)
        keep &= g == group
        if not keep.any():
            have = ", ".join(f"{k} ({v:,})" for k, v in zip(*np.unique(g, return_counts=True)))
            raise StoreError(f"{fname}: no cell in group {group!r} (groups: {have}).")
    if samples:
        s = read_strings(f["cells/sample"]).astype(str)
        unknown = sorted(set(samples) - set(s.tolist()))
        if unknown:
            raise StoreError(f"{fname}: no sample {', '.join(unknown)} (samples: "
                             f"{', '.join(sorted(set(s.tolist())))}).")
        keep &= np.isin(s, list(samples))
        if not keep.any():
            raise StoreError(f"{fname}: no cell of group {group!r} in sample(s) "
                             f"{', '.join(samples)}.")
    return np.flatnonzero(keep)


def _ids(f, rows: np.ndarray, id_column: str | None) -> tuple[np.ndarray, str]:
    """Submission ids: ``source_cell_id`` (the Crunch ids) when present and unique among
    ``rows``, else ``cell_id``; or the column asked for."""
    fname = getattr(f, "filename", "store")
    cands = [id_column] if id_column else ["source_cell_id", "cell_id"]
    for col in cands:
        key = f"cells/{col}"
        if key not in f:
            if id_column:
                have = ", ".join(f["cells"].keys())
                raise StoreError(f"{fname}: no /cells/{col} (have: {have}).")
            continue
        ds = f[key]
        ids = read_strings(ds)[rows] if ds.dtype.kind == "O" else ds[()][rows]
        ids = np.asarray([str(v) for v in ids], dtype=object)
        if len(np.unique(ids)) == len(ids):
            return ids, col
        if id_column:
            raise StoreError(f"{fname}: /cells/{col} is not unique among the selected cells "
                             "(several samples?); choose --sample or --id-column cell_id.")
    raise StoreError(f"{fname}: no unique cell id column among the selected cells.")


def predict_submission(run, store, out, *, group: str = "test", model: str | None = None,
                       samples=None, id_column: str | None = None, batch_size: int = 4096,
                       force: bool = False, float_format: str = "%.6g",
                       show_progress: bool = True) -> PredictResult:
    """Predict the selected cells of ``store`` with a compare run's refitted model and write the
    Crunch submission CSV (``cell_id, gene, prediction``).

    Parameters
    ----------
    run
        ``tabst compare`` run folder (with ``models/<model>/all`` and ``features/all``).
    store
        Store holding the cells to predict (and the features the run used, e.g. the embedding).
    out
        CSV path; written atomically, nothing appears when a check fails.
    group
        ``/cells/group`` value to predict (``test``, ``validation``, ...) or ``all``.
    model
        Model name (default: best-ranked in the leaderboard with a refit).
    samples
        Restrict to these samples.
    id_column
        ``/cells`` field used as ``cell_id`` (default ``source_cell_id`` if present and unique,
        else ``cell_id``).
    """
    from .dataset import FeatureBuilder
    from .models.base import TabstModel
    from .util import progress

    run, out = Path(run), Path(out)
    if out.exists() and not force:
        raise TabstError(f"{out} already exists. Pass --force to overwrite it, or choose another "
                         "--out.")
    name = choose_model(run, model)
    fdir = run / "features" / "all"
    if not (fdir / "features.json").exists():
        raise TabstError(f"{run}: no features/all (the feature builder of the refit). Re-run "
                         "`tabst compare` with refit_all: true.")
    fb = FeatureBuilder.load(fdir)
    m = TabstModel.load(run / "models" / name / "all")
    genes = [str(g) for g in m.target_names_]
    G = len(genes)
    import pandas as pd

    with opened(store) as f:
        fname = getattr(f, "filename", str(store))
        if "expression/genes" in f:
            sg = [str(g) for g in read_strings(f["expression/genes"])]
            sel = {}
            if (run / "run.json").exists():
                sel = json.loads((run / "run.json").read_text()).get("gene_selection") or {}
            subset_ok = sel.get("select", "all") != "all"  # the run learned a gene selection
            if sg and (set(genes) - set(sg) or (not subset_ok and set(sg) != set(genes))):
                raise StoreError(f"{fname}: the store's genes differ from the model's ({G} genes; "
                                 f"store-only: {sorted(set(sg) - set(genes))[:5]}, model-only: "
                                 f"{sorted(set(genes) - set(sg))[:5]}). Predict with the store the "
                                 "run was made on.")
        rows = _select_rows(f, group, samples)
        ids, id_col = _ids(f, rows, id_column)
        samp = read_strings(f["cells/sample"])[rows].astype(str)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        n_clipped = 0
        n_written = 0
        pbar = progress(unit="cells") if show_progress else None
        try:
            with open(tmp, "w", newline="") as fh, (pbar or _Null()) as p:
                task = p.add_task(f"predict · {name}", total=len(rows)) if pbar else None
                fh.write("cell_id,gene,prediction\n")
                gene_col = np.asarray(genes, dtype=object)
                for a in range(0, len(rows), batch_size):
                    r = rows[a:a + batch_size]
                    X = np.asarray(fb.transform(f, r), dtype=np.float32)
                    P = np.asarray(m.predict(X), dtype=np.float64)
                    if P.shape != (len(r), G):
                        raise TabstError(f"model {name} returned shape {P.shape}, expected "
                                         f"{(len(r), G)}.")
                    bad = ~np.isfinite(P)
                    if bad.any():
                        i, j = (int(v[0]) for v in np.nonzero(bad))
                        raise TabstError(
                            f"model {name} predicted {P[i, j]} for cell {ids[a + i]} (sample "
                            f"{samp[a + i]}), gene {genes[j]}: {int(bad.sum())} values are NaN/inf "
                            "in this batch; a submission must be finite. Check the cells' "
                            "features (e.g. the embedding) for NaN, or choose another --model.")
                    neg = P < 0
                    n_clipped += int(neg.sum())
                    P[neg] = 0.0
                    k = len(r)
                    frame = pd.DataFrame({"cell_id": np.repeat(ids[a:a + k], G),
                                          "gene": np.tile(gene_col, k),
                                          "prediction": P.ravel()})
                    frame.to_csv(fh, header=False, index=False, float_format=float_format)
                    n_written += k * G
                    if pbar:
                        p.advance(task, k)
            _check_submission(tmp, ids, genes, n_written)
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return PredictResult(out=out, model=name, n_cells=len(rows), n_genes=G, n_rows=n_written,
                         n_clipped=n_clipped, id_column=id_col, group=group,
                         samples={s: int(c) for s, c in zip(*np.unique(samp, return_counts=True))})


def _check_submission(path: Path, ids: np.ndarray, genes: list, n_expected: int,
                      chunk_rows: int = 2_000_000) -> None:
    """Re-read the written file and apply the scorer's checks: header, every cell x gene
    exactly once, finite non-negative predictions."""
    import pandas as pd

    cell_pos = {str(c): i for i, c in enumerate(ids)}
    gene_pos = {g: j for j, g in enumerate(genes)}
    seen = np.zeros((len(cell_pos), len(genes)), dtype=np.uint8)
    n_rows = 0
    for ch in pd.read_csv(path, dtype={"cell_id": str, "gene": str}, chunksize=chunk_rows,
                          keep_default_na=False, na_values=["nan", "NaN", ""]):
        if list(ch.columns) != ["cell_id", "gene", "prediction"]:
            raise TabstError(f"submission check: columns {list(ch.columns)} != "
                             "['cell_id', 'gene', 'prediction'].")
        v = ch["prediction"].to_numpy(dtype=np.float64)
        if not np.isfinite(v).all() or (v < 0).any():
            raise TabstError("submission check: a prediction is NaN/inf or negative.")
        ci = ch["cell_id"].map(cell_pos)
        gi = ch["gene"].map(gene_pos)
        if ci.isna().any() or gi.isna().any():
            raise TabstError("submission check: a cell id or gene that was not predicted.")
        np.add.at(seen, (ci.to_numpy(np.int64), gi.to_numpy(np.int64)), 1)
        n_rows += len(ch)
    if n_rows != n_expected or not (seen == 1).all():
        raise TabstError(f"submission check: expected each of {len(cell_pos):,} cells x "
                         f"{len(genes)} genes once ({n_expected:,} rows); found {n_rows:,} rows, "
                         f"{int((seen == 0).sum()):,} pairs missing, {int((seen > 1).sum()):,} "
                         "repeated.")


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
