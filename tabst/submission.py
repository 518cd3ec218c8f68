"""The Crunch 1 submission checks, as the challenge's scorer applies them.

The official scorer (``competitions/broad-1/scoring/scoring.py`` in crunchdao/competitions,
function ``check``) accepts a long table ``cell_id, gene, prediction, sample`` when, in order:

1. the columns are exactly ``{cell_id, gene, prediction, sample}``;
2. the samples are exactly the requested ones;
3. per sample: no NaN; no +-inf; the genes are exactly ``anucleus.var`` of the sample's zarr;
   the cell ids are exactly the ``cell_id-group`` cells whose group is ``test`` or
   ``validation``; ``prediction`` is numeric; no value is negative; and the row count is
   cells x genes.

:func:`check_submission` streams a written CSV (any size: chunks of rows, one byte per expected
cell x gene pair) and applies the same checks -- plus one the scorer implies but does not test
directly: each cell x gene pair appears exactly once (its pivot would fail otherwise). It
returns one line per check for the user, or raises :class:`SubmissionError` naming the first
failure. :func:`expected_from_zarr` reads what the scorer compares with from a sample's zarr.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import TabstError

COLUMNS = ("cell_id", "gene", "prediction", "sample")
SCORED_GROUPS = ("validation", "test")


class SubmissionError(TabstError):
    """A submission the Crunch scorer would refuse."""


@dataclass
class Expected:
    """What a valid submission holds: ``genes`` and, per sample, the cell ids (as str)."""

    genes: list
    cells: dict  # sample -> array of str ids

    def n_rows(self) -> int:
        return sum(len(v) for v in self.cells.values()) * len(self.genes)


@dataclass
class _Tally:
    """Per-sample running counts while streaming the file."""

    seen: np.ndarray            # uint8 [cells, genes]: times each pair was seen (saturating)
    rows: int = 0
    nan: int = 0
    inf: int = 0
    negative: int = 0
    unknown_cells: set = field(default_factory=set)
    unknown_genes: set = field(default_factory=set)


def _fmt_set(values, k: int = 5) -> str:
    v = sorted(map(str, values))
    return ", ".join(v[:k]) + (f" ... ({len(v):,} in all)" if len(v) > k else "")


def _read_chunks(path: Path, chunk_rows: int):
    import pandas as pd

    try:
        yield from pd.read_csv(path, dtype={"cell_id": str, "gene": str, "sample": str},
                               chunksize=chunk_rows, keep_default_na=False,
                               na_values=["nan", "NaN", "NA", ""])
    except ValueError as e:  # a non-numeric prediction, a ragged line
        raise SubmissionError(f"submission check: {path} could not be read as numbers ({e}); the "
                              "scorer needs a numeric 'prediction' column.") from None


def _tally_chunk(ch, tallies: dict, expected: Expected, cell_pos: dict, gene_pos: dict,
                 path: Path) -> None:
    if set(ch.columns) != set(COLUMNS):
        raise SubmissionError(f"submission check: columns do not match: the file has "
                              f"{sorted(ch.columns)}, the scorer requires {sorted(COLUMNS)}.")
    if not len(ch):
        return
    if ch["sample"].isna().any():
        raise SubmissionError("submission check: samples do not match: a row has an empty or NA "
                              "sample.")
    if ch["prediction"].dtype.kind not in "fiu":
        raise SubmissionError(f"submission check: {path}: non-numeric values in 'prediction'.")
    for s, part in ch.groupby("sample", sort=False):
        t = tallies.get(s)
        if t is None:
            raise SubmissionError(f"submission check: samples do not match: sample {s!r} is not "
                                  f"requested (expected: {_fmt_set(expected.cells)}).")
        v = part["prediction"].to_numpy(dtype=np.float64)
        t.rows += len(v)
        t.nan += int(np.isnan(v).sum())
        t.inf += int(np.isinf(v).sum())
        t.negative += int((v < 0).sum())
        ci = part["cell_id"].map(cell_pos[s])
        gi = part["gene"].map(gene_pos)
        t.unknown_cells.update(part["cell_id"][ci.isna()].head(1000).tolist())
        t.unknown_genes.update(part["gene"][gi.isna()].head(1000).tolist())
        ok = (ci.notna() & gi.notna()).to_numpy()
        if ok.any():
            idx = (ci.to_numpy()[ok].astype(np.int64), gi.to_numpy()[ok].astype(np.int64))
            np.add.at(t.seen, idx, 1)
            np.minimum(t.seen, 2, out=t.seen)


def _verdict(s: str, t: _Tally, expected: Expected) -> str:
    """Apply the scorer's per-sample checks in its order; the line of what was found."""
    n_c, n_g = len(expected.cells[s]), len(expected.genes)
    if t.nan:
        raise SubmissionError(f"submission check: found {t.nan:,} NaN values for sample {s!r}.")
    if t.inf:
        raise SubmissionError(f"submission check: found {t.inf:,} infinite values for sample "
                              f"{s!r}.")
    missing_g = [g for j, g in enumerate(expected.genes) if not t.seen[:, j].any()]
    if t.unknown_genes or missing_g:
        raise SubmissionError(f"submission check: gene names do not match for sample {s!r}: "
                              f"missing {_fmt_set(missing_g) or 'none'}; unexpected "
                              f"{_fmt_set(t.unknown_genes) or 'none'}.")
    missing_c = expected.cells[s][~t.seen.any(axis=1)]
    if t.unknown_cells or len(missing_c):
        raise SubmissionError(f"submission check: cell ids do not match for sample {s!r}: "
                              f"missing {_fmt_set(missing_c) or 'none'}; unexpected "
                              f"{_fmt_set(t.unknown_cells) or 'none'}.")
    if t.negative:
        raise SubmissionError(f"submission check: found {t.negative:,} negative values for "
                              f"sample {s!r}.")
    if t.rows != n_c * n_g or not (t.seen == 1).all():
        raise SubmissionError(f"submission check: row count for sample {s!r} should be "
                              f"{n_c * n_g:,} ({n_c:,} cell ids x {n_g} gene names), but got "
                              f"{t.rows:,} ({int((t.seen > 1).sum()):,} cell x gene pairs "
                              "repeated).")
    return (f"{s}: no NaN, no inf, {n_g}/{n_g} genes, {n_c:,}/{n_c:,} cells, numeric, "
            f"non-negative, {t.rows:,} rows = {n_c:,} x {n_g}, each pair once")


def check_submission(path, expected: Expected, chunk_rows: int = 2_000_000,
                     on_rows=None) -> list[str]:
    """Check a submission CSV as the Crunch scorer's ``check()`` does (see the module doc).

    Returns one human-readable line per check passed; raises :class:`SubmissionError` on the
    first failure. Memory: one byte per expected cell x gene pair plus one chunk of rows.
    ``on_rows(k)`` is called after each chunk of ``k`` rows (progress).
    """
    path = Path(path)
    gene_pos = {g: j for j, g in enumerate(expected.genes)}
    cell_pos = {s: {str(c): i for i, c in enumerate(ids)} for s, ids in expected.cells.items()}
    tallies = {s: _Tally(np.zeros((len(ids), len(expected.genes)), np.uint8))
               for s, ids in expected.cells.items()}
    for ch in _read_chunks(path, chunk_rows):
        _tally_chunk(ch, tallies, expected, cell_pos, gene_pos, path)
        if on_rows is not None:
            on_rows(len(ch))
    if not any(t.rows for t in tallies.values()):
        raise SubmissionError(f"submission check: {path} holds no rows.")
    lines = [f"columns: {', '.join(COLUMNS)}"]
    absent = [s for s, t in tallies.items() if t.rows == 0]
    if absent:
        raise SubmissionError(f"submission check: samples do not match: no rows for "
                              f"{_fmt_set(absent)}.")
    lines.append(f"samples: {', '.join(sorted(tallies))}")
    lines += [_verdict(s, tallies[s], expected) for s in sorted(tallies)]
    return lines


def expected_from_zarr(zarr_path, groups=SCORED_GROUPS, group_table: str = "cell_id-group",
                       expression_table: str = "anucleus") -> tuple[np.ndarray, list]:
    """What the scorer compares a sample with: the ``cell_id`` (as str) of ``group_table`` rows
    whose group is in ``groups`` and the gene names (``var`` index) of ``expression_table``,
    read from the sample's zarr (tables only, as the scorer reads them)."""
    from .ingest.crunch_read import import_spatialdata
    from .ingest.zarr_raster import _quiet

    sd = import_spatialdata()
    with _quiet():
        sdata = sd.read_zarr(Path(zarr_path), selection=("tables",))
    from .ingest.crunch_read import _ids

    obs = sdata.tables[group_table].obs
    ids = obs.loc[obs["group"].astype(str).isin(list(groups)), "cell_id"]
    ids = _ids(ids.to_numpy(), file=zarr_path, table=group_table, column="cell_id")  # by value
    return (np.asarray([str(v) for v in ids.tolist()], dtype=object),
            [str(g) for g in sdata.tables[expression_table].var.index])
