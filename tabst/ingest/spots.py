"""Shared machinery for spot-based platforms (10x Visium, legacy ST, HEST-1k).

Each platform reader turns its own files into one :class:`SpotSection` per section/sample
(raw counts as a sparse matrix, spot centres in image pixels, the image's attrs). Then
:func:`write_spot_store` puts any number of sections into one tabst store:

- genes are resolved across sections (:func:`resolve_genes`): ``"all"`` keeps the genes every
  section measured (the intersection) and reports what each section lost; ``"strict"`` refuses
  to drop anything; a file path keeps exactly the genes listed there;
- counts are normalised with an explicit, recorded choice (:mod:`tabst.ingest.normalize`):
  ``cp10k`` (default) = log1p(count / total x 10,000) as scanpy, ``log1p`` = log1p(count) as
  HEST-Benchmark, ``log1p-cpt`` = log1p(count / total x scale) as Crunch 1 (scale 100),
  ``none`` = raw counts. The total is each spot's library size over *all* genes of its input,
  before gene selection (``/cells/total_counts``);
- the raw counts of the chosen genes are kept in ``/expression/counts`` (gzip-compressed), so
  a store can be re-normalised without re-ingesting;
- a per-section patient (:mod:`tabst.ingest.patients`) becomes ``/cells/patient`` (never
  ``/cells/group``, which is the train/validation/test split of Crunch and table stores);
- ``/expression/X`` is written in row chunks, so only one chunk is ever dense in memory.

Top-k highly-variable-gene selection is deliberately *not* offered here: computed on all
sections it would leak test-fold information. ``tabst compare`` selects HVGs on the training
folds only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import InputError, TabstError
from ..store import build_provenance, create_store, put, set_attr
from ..util import progress, relpath_from
from .checks import check_coordinates, check_expression_block, check_sample_name
from .normalize import (
    SPOT_DEFAULT,
    describe_normalization,
    normalize_counts,
    resolve_scale,
    transform_name,
)
from .patients import PATIENT_DESCRIPTION, describe_patients

HVG_NOTE = ("Top-k highly variable genes are not selected at ingest (that would leak test "
            "samples into the choice); tabst compare selects them on each training fold only.")
CHUNK_ROWS = 1024


@dataclass
class SpotSection:
    """One section/sample of a spot-based platform, ready to be written.

    Attributes
    ----------
    sample : str
        Sample (section) name; becomes ``/images/<sample>`` and ``/cells/sample``.
    spot_ids : array of str [n]
        The platform's own spot identifiers (Visium barcode, ST ``XxY``, HEST barcode).
    x, y : float64 [n]
        Spot centres in pixels of the image described by ``image``.
    counts : scipy.sparse.csr_matrix [n, G]
        Raw counts, rows aligned with ``spot_ids``, columns with ``genes``.
    genes : list of str [G]
        Column names of ``counts`` (unique).
    image : dict
        Attrs for ``/images/<sample>``; ``path`` is an absolute path (made relative to the store
        on writing).
    totals : float64 [n] or None
        Library size per spot over all genes of the input; computed from ``counts`` when None.
    gene_ids : list of str or None
        Stable gene identifiers (e.g. Ensembl ids) aligned with ``genes``, when the input has them.
    tissue : str
        Tissue label for every spot of this section.
    patient : str or None
        Patient / tumour of the section (``/cells/patient``); all sections of a store have
        one, or none has.
    extra : dict
        Extra ``/cells`` fields: name -> (array [n], description, unit or None).
    inputs : list of Path
        Input files, recorded with size and sha256 in the store's provenance.
    report : dict
        Facts about reading this section (matching rates, dropped spots, choices), recorded in
        the provenance and printed by the CLI.
    """

    sample: str
    spot_ids: np.ndarray
    x: np.ndarray
    y: np.ndarray
    counts: sp.csr_matrix
    genes: list
    image: dict
    totals: np.ndarray | None = None
    gene_ids: list | None = None
    tissue: str = "unknown"
    patient: str | None = None
    extra: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)
    report: dict = field(default_factory=dict)

    def __post_init__(self):
        self.sample = check_sample_name(self.sample)
        self.spot_ids = np.asarray([str(s) for s in self.spot_ids], dtype=object)
        self.x = np.asarray(self.x, dtype=np.float64)
        self.y = np.asarray(self.y, dtype=np.float64)
        self.counts = sp.csr_matrix(self.counts)
        self.genes = [str(g) for g in self.genes]
        n = len(self.spot_ids)
        if not (len(self.x) == len(self.y) == self.counts.shape[0] == n):
            raise ValueError(f"section {self.sample}: spot_ids, x, y and counts disagree in length")
        if self.counts.shape[1] != len(self.genes):
            raise ValueError(f"section {self.sample}: counts has {self.counts.shape[1]} columns "
                             f"but {len(self.genes)} gene names")
        # the readers check their files with row numbers; this guard catches any reader that
        # did not, so no NaN/inf/negative count or NaN centre reaches a store (all-zero rows)
        src = self.inputs[0] if self.inputs else None
        check_expression_block(self.counts, file=src, row_offset=None, genes=self.genes,
                               row_ids=self.spot_ids, what="count", id_label="spot")
        check_coordinates(self.x, self.y, file=src, row_offset=None, row_ids=self.spot_ids,
                          what="spot centre", id_label="spot")
        if self.totals is None:
            self.totals = np.asarray(self.counts.sum(axis=1), dtype=np.float64).ravel()
        self.totals = np.asarray(self.totals, dtype=np.float64)
        if not np.isfinite(self.totals).all():
            i = int(np.flatnonzero(~np.isfinite(self.totals))[0])
            raise InputError(f"section {self.sample}: the library size of spot "
                             f"'{self.spot_ids[i]}' is not finite", file=src,
                             fix="counts must be finite numbers")


# ---------------------------------------------------------------------------------------------
# genes


def make_unique(names: Sequence[str], ids: Sequence[str] | None = None) -> tuple[list[str], dict]:
    """Make gene names unique; returns (names, {new_name: old_name} for renamed ones).

    With ``ids``, every member of a duplicated name becomes ``name_id`` (deterministic for the
    same reference, so sections still intersect); without, the 2nd, 3rd... copies get ``-1``,
    ``-2``... appended (scanpy's ``var_names_make_unique``).
    """
    names = [str(n) for n in names]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    out, renamed, seen = [], {}, {}
    for i, n in enumerate(names):
        if counts[n] == 1:
            out.append(n)
            continue
        if ids is not None:
            new = f"{n}_{ids[i]}"
        else:
            k = seen.get(n, 0)
            seen[n] = k + 1
            new = n if k == 0 else f"{n}-{k}"
        if new != n:
            renamed[new] = n
        out.append(new)
    if len(set(out)) != len(out):  # pathological: fall back to positional suffixes
        return make_unique(out, None)
    return out, renamed


def read_gene_list(path) -> list[str]:
    """Genes from a text file: one per line (first comma/tab/space-separated field); blank lines
    and ``#`` comments are skipped; a first line ``gene`` is taken as a header."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such gene list file", file=path,
                         fix="give --genes all, --genes strict, or the path of a text file with "
                             "one gene per line")
    genes, seen = [], {}
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        g = re.split(r"[,\t ]", s)[0].strip().strip('"')
        if not genes and g.lower() in ("gene", "genes", "gene_name", "symbol"):
            continue
        if g in seen:
            raise InputError(f"gene '{g}' is listed twice (first on line {seen[g]})", file=path,
                             row=i, fix="list each gene once")
        seen[g] = i
        genes.append(g)
    if not genes:
        raise InputError("the gene list is empty", file=path, fix="put one gene name per line")
    return genes


def resolve_genes(sections: Sequence[SpotSection], genes: str = "all") -> tuple[list[str], dict]:
    """Choose the store's genes (columns of X) across sections.

    Parameters
    ----------
    sections : the sections to be written.
    genes : ``"all"`` (genes measured in every section, in the first section's order; what each
        section loses is reported), ``"strict"`` (every section must have exactly the same gene
        set, else :class:`InputError`), or the path of a gene list file (exactly those genes, in
        that order; a gene missing from any section is an :class:`InputError`).

    Returns
    -------
    (genes, report) : the chosen genes and ``{"mode", "n_genes", "per_sample": {sample:
        {"n_input", "n_dropped", "dropped_examples"}}}``.
    """
    if not sections:
        raise TabstError("no sections to ingest")
    sets = [set(s.genes) for s in sections]
    mode = genes
    if genes in ("all", "strict"):
        common = set.intersection(*sets)
        chosen = [g for g in sections[0].genes if g in common]
        if genes == "strict" and any(s != sets[0] for s in sets[1:]):
            diffs = []
            for s, gs in zip(sections, sets):
                extra = sorted(gs - common)
                if extra:
                    diffs.append(f"{s.sample}: {len(extra)} genes not in every section "
                                 f"(e.g. {', '.join(extra[:5])})")
            raise InputError("the sections measure different genes (--genes strict):\n  "
                             + "\n  ".join(diffs),
                             fix="use --genes all to keep the genes all sections share (what is "
                                 "dropped is reported), or --genes FILE with a list of genes")
    else:
        path = Path(genes)
        wanted = read_gene_list(path)
        missing = []
        for s, gs in zip(sections, sets):
            m = [g for g in wanted if g not in gs]
            if m:
                missing.append(f"{s.sample} lacks {len(m)}: {', '.join(m[:8])}"
                               + (" ..." if len(m) > 8 else ""))
        if missing:
            raise InputError("genes of the list are not measured in every section:\n  "
                             + "\n  ".join(missing), file=path,
                             fix="remove those genes from the list, or use --genes all")
        chosen = wanted
        mode = f"file:{path.resolve()}"
    if not chosen:
        raise InputError("the sections have no gene in common",
                         fix="check that all sections use the same gene naming (symbols vs "
                             "Ensembl ids; see --gene-names for Visium)")
    keep = set(chosen)
    per = {}
    for s in sections:
        dropped = [g for g in s.genes if g not in keep]
        per[s.sample] = {"n_input": len(s.genes), "n_dropped": len(dropped),
                         "dropped_examples": dropped[:20]}
    return chosen, {"mode": mode, "n_genes": len(chosen), "per_sample": per}


# ---------------------------------------------------------------------------------------------
# images


def image_shape(path) -> tuple[int, int, int]:
    """(height, width, channels) of an image file without decoding its pixels (see
    :func:`tabst.ingest.common.check_image_size`: pixel limit, TIFF colour space)."""
    from .common import check_image_size

    h = check_image_size(path, what="image")
    return h.height, h.width, h.channels


def check_inside(sec_name: str, x, y, height: int, width: int, file, what: str, fix: str) -> None:
    """Raise if spot centres fall outside the image (a wrong scale factor or wrong image)."""
    x, y = np.asarray(x), np.asarray(y)
    bad = (x < 0) | (y < 0) | (x >= width) | (y >= height) | ~np.isfinite(x) | ~np.isfinite(y)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"section {sec_name}: {int(bad.sum())} of {len(x)} {what} fall outside "
                         f"the {width} x {height} px image (first: x={x[i]:.1f}, y={y[i]:.1f})",
                         file=file, fix=fix)


# ---------------------------------------------------------------------------------------------
# writing


def chunk_rows_for(n_genes: int, budget_bytes: int = 64 << 20) -> int:
    """Rows per dense float32 chunk so that one chunk stays within ``budget_bytes``."""
    return int(max(1, min(CHUNK_ROWS * 16, budget_bytes // max(1, 4 * n_genes))))


def _cell_ids(sections: Sequence[SpotSection]) -> list[np.ndarray]:
    names = [s.sample for s in sections]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TabstError(f"sample name(s) used more than once: {', '.join(dup)}. Give each "
                         "section its own name (--sample / the NAME field).")
    out = []
    for s in sections:
        u, c = np.unique(s.spot_ids.astype(str), return_counts=True)
        if (c > 1).any():
            raise InputError(f"section {s.sample}: spot id '{u[c > 1][0]}' occurs "
                             f"{int(c[c > 1][0])} times", fix="spot ids must be unique per section")
        ids = s.spot_ids if len(sections) == 1 else np.asarray(
            [f"{s.sample}_{b}" for b in s.spot_ids], dtype=object)
        out.append(ids)
    all_ids = np.concatenate(out) if out else np.array([], dtype=object)
    if len(set(all_ids.tolist())) != len(all_ids):
        raise TabstError("cell ids are not unique after prefixing with the sample name; "
                         "rename the samples")
    return out


def _section_patients(sections: Sequence[SpotSection]) -> list[str] | None:
    """The sections' patients, or None when no section has one (a partial labelling is
    refused)."""
    given = [s.patient for s in sections]
    if all(p is None for p in given):
        return None
    missing = [s.sample for s, p in zip(sections, given) if p is None]
    if missing:
        raise TabstError(f"sections without a patient: {', '.join(missing)}; give every "
                         "section a patient or none")
    return [str(p) for p in given]


def _write_cells(f, sections: Sequence[SpotSection], ids: list, patients,
                 platform: str) -> None:
    """``/cells``: ids, sample, tissue, patient (when given), x, y, total_counts, readers'
    extras."""
    def per_section(value_of):
        return np.concatenate([np.full(len(s.spot_ids), value_of(s), dtype=object)
                               for s in sections])

    c = f.create_group("cells")
    put(c, "cell_id", np.concatenate(ids), description=(
        f"unique spot identifier ({platform} spot id" +
        (", prefixed with '<sample>_')" if len(sections) > 1 else ")")))
    put(c, "spot_id", np.concatenate([s.spot_ids for s in sections]),
        description=f"the platform's own spot id ({platform}), unique within a sample")
    put(c, "sample", per_section(lambda s: s.sample),
        description="sample (section) the spot belongs to")
    put(c, "tissue", per_section(lambda s: s.tissue),
        description="tissue type ('unknown' when not given)")
    if patients is not None:
        put(c, "patient", per_section(lambda s: s.patient), description=PATIENT_DESCRIPTION)
    put(c, "x", np.concatenate([s.x for s in sections]), unit="px",
        description="spot centre x (column) in the sample's image (see /images/<sample>)")
    put(c, "y", np.concatenate([s.y for s in sections]), unit="px",
        description="spot centre y (row) in the sample's image (see /images/<sample>)")
    put(c, "total_counts", np.concatenate([s.totals for s in sections]), unit="counts",
        description="library size: raw counts of the spot summed over all genes of the "
                    "input (before gene selection); the 'total' of cp10k and log1p-cpt")
    extra_keys = sorted(set.intersection(*[set(s.extra) for s in sections]))
    for k in extra_keys:
        arr = np.concatenate([np.asarray(s.extra[k][0]) for s in sections])
        _, desc, unit = sections[0].extra[k]
        put(c, k, arr, description=desc, unit=unit)


def _write_images(f, sections: Sequence[SpotSection], base: Path) -> None:
    g = f.create_group("images")
    for s in sections:
        gs = g.create_group(s.sample)
        attrs = dict(s.image)
        for key in ("path", "mask_path"):
            p = attrs.get(key) or ""
            attrs[key] = relpath_from(p, base) if p else ""
        attrs.setdefault("mask_path", "")
        attrs.setdefault("description", f"image of sample {s.sample}")
        for k, v in attrs.items():
            set_attr(gs, k, v)


def _write_expression(f, sections, chosen, gene_report, *, normalize, scale, transform,
                      platform, chunk_rows, show_progress) -> None:
    """``/expression``: X (normalised), counts (raw, compressed), genes [, gene_ids], written
    chunk by chunk so only one chunk of rows is dense at a time."""
    n_total, G = sum(len(s.spot_ids) for s in sections), len(chosen)
    e = f.create_group("expression")
    scale_attr = {} if scale is None else {"scale": float(scale)}
    X = put(e, "X", shape=(n_total, G), dtype=np.float32, unit=transform,
            description=f"expression, spots x genes: {transform} of the raw counts "
                        f"(normalize={normalize}; raw counts in /expression/counts)",
            transform=transform, normalize=normalize, gene_selection=gene_report["mode"],
            hvg_note=HVG_NOTE, **scale_attr)
    C = put(e, "counts", shape=(n_total, G), dtype=np.float32, unit="count", compression="fast",
            description="raw counts, spots x genes (the columns of X), kept so the expression "
                        "can be re-normalised; the total of cp10k / log1p-cpt is "
                        "/cells/total_counts (over all genes of the input)")
    put(e, "genes", np.asarray(chosen, dtype=object), description="gene names, columns of X")
    if all(s.gene_ids is not None for s in sections):
        maps = [dict(zip(s.genes, s.gene_ids)) for s in sections]
        put(e, "gene_ids", np.asarray([maps[0][g] for g in chosen], dtype=object),
            description="stable gene identifiers (e.g. Ensembl ids), aligned with genes")
    set_attr(e, "genes_report", gene_report)
    row = 0
    bar = progress(unit="spots") if show_progress else None
    try:
        task = bar.add_task(f"writing {platform} expression", total=n_total) if bar else None
        if bar:
            bar.start()
        for s in sections:
            pos = {g: i for i, g in enumerate(s.genes)}
            M = s.counts[:, np.asarray([pos[g] for g in chosen], dtype=np.int64)]
            for a in range(0, M.shape[0], chunk_rows):
                b = min(a + chunk_rows, M.shape[0])
                X[row + a:row + b] = normalize_counts(M[a:b], s.totals[a:b], normalize, scale)
                C[row + a:row + b] = M[a:b].toarray().astype(np.float32, copy=False)
                if bar:
                    bar.update(task, advance=b - a)
            row += M.shape[0]
    finally:
        if bar:
            bar.stop()


def write_spot_store(sections: Sequence[SpotSection], out, *, normalize: str = SPOT_DEFAULT,
                     scale: float | None = None, genes: str = "all", force: bool = False,
                     command: Sequence[str] | None = None, platform: str = "spots",
                     hash_inputs: bool = True, chunk_rows: int | None = None,
                     show_progress: bool = True) -> dict:
    """Write spot sections into one new store at ``out`` (atomically).

    Parameters
    ----------
    sections : list of :class:`SpotSection`
    out : path of the store to create.
    normalize : ``cp10k`` | ``log1p`` | ``log1p-cpt`` | ``none`` (see
        :mod:`tabst.ingest.normalize`).
    scale : the ``scale`` of ``log1p-cpt`` (default 100 like Crunch 1); refused for the others.
    genes : ``all`` | ``strict`` | path of a gene list (see :func:`resolve_genes`).
    force : overwrite an existing store.
    command : the command line recorded in the provenance (default ``sys.argv``).
    platform : recorded in the provenance and in ``/cells`` descriptions.
    chunk_rows : rows of X normalised and written at a time (default: ~64 MB of float32).

    Returns
    -------
    dict : summary (``store``, ``n_spots``, ``n_genes``, ``samples`` {name: n_spots},
        ``patients`` {name: patient} or None, ``genes`` report, ``sections`` reports,
        ``normalize``, ``transform``, ``normalization`` (one line saying what X is)).
    """
    scale = resolve_scale(normalize, scale)
    transform = transform_name(normalize, scale)
    sections = list(sections)
    chosen, gene_report = resolve_genes(sections, genes)
    ids = _cell_ids(sections)
    patients = _section_patients(sections)
    out = Path(out)
    n_total = sum(len(s.spot_ids) for s in sections)
    if n_total == 0:
        raise TabstError("no spots to write: every section is empty after selection "
                         "(try --all-spots to keep spots outside the tissue)")
    patient_of = (None if patients is None else
                  {s.sample: p for s, p in zip(sections, patients)})
    reports = {s.sample: s.report for s in sections}
    prov = build_provenance([p for s in sections for p in s.inputs], command=command,
                            hash_inputs=hash_inputs, platform=platform, normalize=normalize,
                            scale=scale, transform=transform, genes=gene_report,
                            sections=reports, patients=patient_of, hvg_note=HVG_NOTE)
    with create_store(out, force=force, provenance=prov) as f:
        _write_cells(f, sections, ids, patients, platform)
        _write_images(f, sections, out.resolve().parent)
        _write_expression(f, sections, chosen, gene_report, normalize=normalize, scale=scale,
                          transform=transform, platform=platform,
                          chunk_rows=chunk_rows or chunk_rows_for(len(chosen)),
                          show_progress=show_progress)
    return {"store": str(out), "platform": platform, "n_spots": int(n_total),
            "n_genes": len(chosen), "samples": {s.sample: int(len(s.spot_ids)) for s in sections},
            "patients": patient_of, "normalize": normalize, "transform": transform,
            "normalization": describe_normalization(normalize, scale), "genes": gene_report,
            "sections": reports}


def describe_summary(summary: dict) -> list[str]:
    """Human-readable lines for a :func:`write_spot_store` summary (the CLI prints them)."""
    lines = [(f"wrote {summary['store']}: {summary['n_spots']:,} spots x {summary['n_genes']:,} "
              f"genes ({summary['platform']}, X = {summary['transform']})")]
    patients = summary.get("patients")
    for name, n in summary["samples"].items():
        rep = summary["sections"].get(name, {})
        gr = summary["genes"]["per_sample"].get(name, {})
        bits = [f"{n:,} spots"] + ([f"patient={patients[name]}"] if patients else [])
        for k in ("match_rate", "spots_in_counts", "spots_selected", "spots_dropped_unmatched",
                  "image_choice", "spot_diameter_px", "patches_without_expression",
                  "spots_without_patch"):
            if k in rep:
                v = rep[k]
                bits.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
        if gr.get("n_dropped"):
            bits.append(f"genes dropped={gr['n_dropped']} (e.g. "
                        f"{', '.join(gr['dropped_examples'][:3])})")
        lines.append(f"  {name}: " + ", ".join(bits))
    lines.append(f"  normalisation {summary['normalization']}; raw counts kept in "
                 "/expression/counts")
    lines.append("  patients: " + describe_patients(patients))
    lines.append("  note: " + HVG_NOTE)
    return lines

