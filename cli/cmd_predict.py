"""`tabst predict RUN --store STORE --out predictions.csv`: the Crunch 1 submission file."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import console, user_errors


def register(app, ingest_app):
    @app.command("predict")
    @user_errors
    def predict(
        run: Path = typer.Argument(..., help="tabst compare run folder (with models/<model>/all)"),
        store: Path = typer.Option(..., "--store", "-s", help="store with the cells to predict"),
        out: Path = typer.Option(..., "--out", "-o", help="submission CSV to write"),
        group: str = typer.Option("validation,test", "--group",
                                  help="comma-separated /cells/group values to predict (default: "
                                       "what the Crunch scorer scores) or 'all'"),
        model: Optional[str] = typer.Option(None, "--model",
                                            help="model name (default: best-ranked with a refit)"),
        sample: Optional[list[str]] = typer.Option(None, "--sample",
                                                   help="only these samples (repeatable)"),
        id_column: Optional[str] = typer.Option(None, "--id-column",
                                                help="/cells field written as cell_id (default: "
                                                     "source_cell_id if unique within each "
                                                     "sample, else cell_id)"),
        decimals: Optional[int] = typer.Option(None, "--decimals", min=0, max=12,
                                               help="round predictions (the quickstarter uses 2)"),
        per_sample: bool = typer.Option(False, "--per-sample",
                                        help="one <sample>.csv per sample in the folder --out"),
        allow_gene_subset: bool = typer.Option(False, "--allow-gene-subset",
                                               help="write a Crunch file with only the model's "
                                                    "genes (the scorer refuses it)"),
        embedding: Optional[str] = typer.Option(
            None, "--embedding", help="on a multi-embedding run (compare --features a,b): the "
            "embedding whose models predict (default: that of the best-ranked row with a refit)"),
        force: bool = typer.Option(False, "--force", help="overwrite an existing --out"),
    ):
        """Write the Crunch submission (cell_id, gene, prediction, sample): every scored cell x
        gene once, finite, clipped at 0 -- checked as the official scorer checks, before the
        file appears."""
        from tabst.predict import predict_submission

        r = predict_submission(run, store, out, group=group, model=model, samples=sample or None,
                               id_column=id_column, force=force, decimals=decimals,
                               per_sample=per_sample, allow_gene_subset=allow_gene_subset,
                               embedding=embedding)
        for line in r.notes:
            console.print(f"note: {line}", highlight=False, soft_wrap=True)
        for line in r.checks:
            console.print(f"[green]scorer check ok[/] {line}", highlight=False, soft_wrap=True)
        console.print(f"[green]wrote[/] {r.out}: {r.n_cells:,} cells x {r.n_genes} genes = "
                      f"{r.n_rows:,} rows (model {r.model}, group {r.group}, ids from "
                      f"/cells/{r.id_column}; {r.n_clipped:,} negative predictions clipped to 0)",
                      highlight=False, soft_wrap=True)
