"""`tabst ingest table LABELS --expression FILE --images DIR --out STORE`."""
from __future__ import annotations

from pathlib import Path

import typer

from ._common import console, user_errors


def register(app, ingest_app):
    @ingest_app.command("table")
    @user_errors
    def ingest_table_cmd(
        labels: Path = typer.Argument(..., help="label table: CSV, TSV or Parquet, one row per "
                                                "cell (cell id, sample, x, y [, tissue, image, "
                                                "group])"),
        out: Path = typer.Option(..., "--out", "-o", help="store to write (.h5)"),
        expression: list[Path] | None = typer.Option(
            None, "--expression", "-e",
            help="cells x genes file keyed by cell id: CSV/TSV/Parquet, .h5ad, or HDF5 "
                 "(datasets X, cell_id, genes). Repeat it, or give a folder, for one file per "
                 "sample. Leave out to take gene columns from LABELS (--gene-prefix/--genes)."),
        images: Path | None = typer.Option(
            None, "--images", help="folder of the H&E images (<sample>.png/.tif or the names in "
                                   "the image column) or of per-cell patches"),
        masks: Path | None = typer.Option(
            None, "--masks", help="folder of per-sample nucleus label masks "
                                  "(<sample>.tif or <sample>_mask.png ...)"),
        col: list[str] | None = typer.Option(
            None, "--col", help="FIELD=COLUMN mapping, e.g. --col cell_id=fnm --col x=cx "
                                "(fields: cell_id sample x y tissue image group)"),
        config: Path | None = typer.Option(None, "--config", help="YAML with the same options"),
        gene_prefix: str | None = typer.Option(None, "--gene-prefix",
                                               help="gene columns are those starting with P"),
        genes: str | None = typer.Option(None, "--genes",
                                         help="genes to keep: G1,G2,... or @file (one per line)"),
        transform: str | None = typer.Option(
            None, "--transform", help="what the values are, recorded in the store "
                                      "(default 'as given'; e.g. 'log1p(count/total*100)')"),
        pixel_size_um: float | None = typer.Option(None, "--pixel-size-um",
                                                   help="microns per image pixel"),
        expression_id_col: str | None = typer.Option(
            None, "--expression-id-col", help="cell id column of the expression file (.h5ad: "
                                              "an obs column; default: the obs index)"),
        layer: str | None = typer.Option(None, "--layer", help=".h5ad layer to read instead of X"),
        allow_negative: bool = typer.Option(False, "--allow-negative",
                                            help="accept negative values (scaled data)"),
        force: bool = typer.Option(False, "--force", help="overwrite an existing store"),
    ):
        """Ingest a label table + expression + images into a tabst store."""
        from tabst.ingest.table import describe_summary, ingest_table, parse_column_map

        res = ingest_table(labels, out=out, images=images, expression=expression or None,
                           masks=masks, columns=parse_column_map(col), config=config,
                           gene_prefix=gene_prefix, genes=genes, transform=transform,
                           pixel_size_um=pixel_size_um, expression_id_column=expression_id_col,
                           expression_layer=layer, allow_negative=allow_negative or None,
                           force=force)
        console.print(describe_summary(res), highlight=False, soft_wrap=True)
