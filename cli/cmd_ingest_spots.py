"""`tabst ingest visium | st | hest`: spot-based platforms -> one store (spots are the rows).

Shared options: ``--normalize cp10k|log1p|log1p-cpt|none`` (+ ``--scale`` for log1p-cpt),
``--patient SAMPLE=PATIENT`` (-> ``/cells/patient``; ``--group`` is its deprecated old name),
``--genes all|strict|FILE``, ``--force``, ``--json``. Top-k HVG selection happens in
``tabst compare`` (per training fold), never at ingest.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from tabst.ingest.patients import alias_note, parse_patient_options
from tabst.outputs import prepare_output

from ._common import console, err_console, user_errors

NORMALIZE_HELP = ("expression in /expression/X (raw counts are kept in /expression/counts; "
                  "total = the spot's counts over all genes): cp10k = log1p(count/total*10000) "
                  "(scanpy's CP10k + log1p; the default for spots), log1p = log1p(count) "
                  "(HEST-Benchmark), log1p-cpt = log1p(count/total*SCALE) (Crunch 1's "
                  "single-cell scale, SCALE 100: on ~10k-count spots it squeezes almost every "
                  "value below 0.35), none = raw counts")
PATIENT_HELP = ("patient / tumour of a section as SAMPLE=PATIENT (repeatable; all sections or "
                "none): written to /cells/patient, which compare folds by, so it never trains "
                "and tests on serial sections of one patient")
GROUP_ALIAS_HELP = "deprecated old name of --patient (writes /cells/patient, not /cells/group)"
GENES_HELP = ("all = genes every section measured (what each loses is reported); strict = error "
              "if the sections' gene sets differ; or a FILE with one gene per line. Top-k HVGs "
              "are chosen at compare time on training folds only, not here")


def _normalize_opt():
    return typer.Option("cp10k", "--normalize", help=NORMALIZE_HELP)


def _scale_opt():
    return typer.Option(None, "--scale", help="SCALE of --normalize log1p-cpt (default 100 "
                                              "like Crunch 1); refused with the other choices")


def _patient_opt():
    return typer.Option(None, "--patient", help=PATIENT_HELP)


def _group_alias_opt():
    return typer.Option(None, "--group", help=GROUP_ALIAS_HELP)


def _genes_opt():
    return typer.Option("all", "--genes", help=GENES_HELP)


def _note(lines) -> None:
    """Print notes (e.g. that the old --group / manifest 'group' now writes /cells/patient)."""
    from rich.markup import escape

    for line in lines:
        err_console.print(f"[yellow]{escape(line)}[/]", highlight=False)


def _check_options(normalize: str, scale: Optional[float], patient, group,
                   patients=None) -> dict:
    """Refuse a bad --normalize/--scale/--patient (or its old name --group) before any input is
    read; returns the patients (``patients``, e.g. a manifest's, plus the options')."""
    from tabst.ingest.normalize import resolve_scale

    resolve_scale(normalize, scale)
    out = parse_patient_options(patient, patients)
    return parse_patient_options(group, out, option="--group")



def _finish(summary: dict, as_json: bool) -> None:
    from tabst.ingest.spots import describe_summary

    if as_json:
        typer.echo(json.dumps(summary, default=str))
        return
    lines = describe_summary(summary)
    console.print(f"[green]{lines[0]}[/]", highlight=False)
    for line in lines[1:]:
        err_console.print(line, highlight=False)


def register(app, ingest_app):
    @ingest_app.command("visium")
    @user_errors
    def visium(
        outs: List[Path] = typer.Argument(..., help="Space Ranger outs/ folder(s), one per sample"),
        out: Path = typer.Option(..., "--out", "-o", help="store to create (.h5)"),
        sample: Optional[List[str]] = typer.Option(
            None, "--sample", help="sample name, once per OUTS_DIR in order (default: folder "
                                   "name, or its parent's when it is called outs)"),
        fullres_image: Optional[List[Path]] = typer.Option(
            None, "--fullres-image", help="full-resolution image, once per OUTS_DIR in order "
                                          "(default: hires, else lowres image of spatial/)"),
        all_spots: bool = typer.Option(False, "--all-spots",
                                       help="keep spots outside the tissue too"),
        gene_names: str = typer.Option("symbol", "--gene-names",
                                       help="symbol (duplicates -> SYMBOL_ENSEMBLID) or id"),
        tissue: str = typer.Option("unknown", "--tissue", help="tissue recorded for every spot"),
        patient: Optional[List[str]] = _patient_opt(),
        group: Optional[List[str]] = _group_alias_opt(),
        normalize: str = _normalize_opt(),
        scale: Optional[float] = _scale_opt(),
        genes: str = _genes_opt(),
        force: bool = typer.Option(False, "--force", help="overwrite an existing store"),
        as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    ):
        """Ingest 10x Visium (Space Ranger) outputs: in-tissue spots, counts, positions scaled
        to the best image present, spot diameter in that image's pixels."""
        from tabst.ingest.visium import ingest_visium

        _note([alias_note("--group")] if group else [])
        patients = _check_options(normalize, scale, patient, group)
        prepare_output(out, "file", force=force)  # before reading any input
        res = ingest_visium(outs, out, samples=sample, fullres_images=fullres_image,
                            all_spots=all_spots, gene_names=gene_names, tissue=tissue,
                            patients=patients, normalize=normalize, scale=scale, genes=genes,
                            force=force, command=["tabst"] + sys.argv[1:],
                            show_progress=not as_json)
        _finish(res, as_json)

    @ingest_app.command("st")
    @user_errors
    def st(
        counts: Optional[Path] = typer.Argument(None, help="count table (spots x genes, spot ids "
                                                           "XxY in the first column)"),
        alignment: Optional[Path] = typer.Argument(
            None, help="alignment table (x y new_x new_y pixel_x pixel_y selected)"),
        image: Optional[Path] = typer.Argument(None, help="H&E image of the section"),
        out: Path = typer.Option(..., "--out", "-o", help="store to create (.h5)"),
        sample: Optional[str] = typer.Option(None, "--sample",
                                             help="name of the positional section (default: "
                                                  "the count file's name)"),
        section: Optional[List[str]] = typer.Option(
            None, "--section", help="another section as COUNTS,ALIGNMENT,IMAGE[,NAME] "
                                    "(repeatable)"),
        manifest: Optional[Path] = typer.Option(
            None, "--manifest", help="CSV/TSV with columns counts, alignment, image[, sample]"
                                     "[, patient] (paths relative to the manifest)"),
        all_spots: bool = typer.Option(False, "--all-spots",
                                       help="keep spots outside the tissue (selected == 0) too"),
        tissue: str = typer.Option("unknown", "--tissue", help="tissue recorded for every spot"),
        spot_diameter_um: float = typer.Option(100.0, "--spot-diameter-um",
                                               help="spot diameter (ST: 100 um)"),
        array_unit_um: Optional[float] = typer.Option(
            None, "--array-unit-um", help="um per array coordinate unit (default: 100 for the "
                                          "staggered 2k array, 200 for the 1k array)"),
        patient: Optional[List[str]] = _patient_opt(),
        group: Optional[List[str]] = _group_alias_opt(),
        normalize: str = _normalize_opt(),
        scale: Optional[float] = _scale_opt(),
        genes: str = _genes_opt(),
        force: bool = typer.Option(False, "--force", help="overwrite an existing store"),
        as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    ):
        """Ingest legacy Spatial Transcriptomics sections (one store, one sample per section):
        under-tissue spots matched to the alignment table by their XxY ids."""
        from tabst.errors import InputError
        from tabst.ingest.st import ingest_st, parse_section_spec, read_manifest

        _note([alias_note("--group")] if group else [])
        patients = _check_options(normalize, scale, patient, group)
        prepare_output(out, "file", force=force)  # before reading any input
        specs = []
        given = [p for p in (counts, alignment, image) if p is not None]
        if given and len(given) != 3:
            raise InputError("give all three of COUNTS ALIGNMENT IMAGE (or use --section)")
        if given:
            specs.append((counts, alignment, image, sample))
        elif sample:
            raise InputError("--sample names the positional section; with --section use "
                             "COUNTS,ALIGNMENT,IMAGE,NAME")
        specs += [parse_section_spec(s) for s in section or []]
        if manifest is not None:
            more, man_patients, notes = read_manifest(manifest)
            _note(notes)
            specs += more
            patients = _check_options(normalize, scale, patient, group, man_patients)
        res = ingest_st(specs, out, patients=patients, all_spots=all_spots, tissue=tissue,
                        normalize=normalize, scale=scale, genes=genes, force=force,
                        spot_diameter_um=spot_diameter_um, array_unit_um=array_unit_um,
                        command=["tabst"] + sys.argv[1:], show_progress=not as_json)
        _finish(res, as_json)

    @ingest_app.command("hest")
    @user_errors
    def hest(
        hest_dir: Path = typer.Argument(..., help="HEST-1k folder (with st/ and patches/, "
                                                  "optionally metadata/ and wsis/)"),
        out: Path = typer.Option(..., "--out", "-o", help="store to create (.h5)"),
        ids: Optional[List[str]] = typer.Option(
            None, "--id", help="HEST sample id (repeatable; default: every id with both "
                               "st/<id>.h5ad and patches/<id>.h5)"),
        patient: Optional[List[str]] = _patient_opt(),
        group: Optional[List[str]] = _group_alias_opt(),
        normalize: str = _normalize_opt(),
        scale: Optional[float] = _scale_opt(),
        genes: str = _genes_opt(),
        force: bool = typer.Option(False, "--force", help="overwrite an existing store"),
        as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    ):
        """Ingest HEST-1k samples: spots with both an expression profile and a stored patch
        (matched by barcode); `tabst embed` then uses the stored 224 px patches as they are."""
        from tabst.ingest.hest import ingest_hest

        _note([alias_note("--group")] if group else [])
        patients = _check_options(normalize, scale, patient, group)
        prepare_output(out, "file", force=force)  # before reading any input
        res = ingest_hest(hest_dir, out, ids=ids, patients=patients, normalize=normalize,
                          scale=scale, genes=genes, force=force,
                          command=["tabst"] + sys.argv[1:], show_progress=not as_json)
        _finish(res, as_json)
