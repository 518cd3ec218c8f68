"""`tabst info STORE`: a one-screen summary, then the store's tree with shapes, dtypes, chunking
and every attr (nothing cut when piped)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from ._common import console, user_errors


def register(app, ingest_app):
    @app.command("info")
    @user_errors
    def info(store: Path = typer.Argument(..., help="tabst store (.h5)"),
             as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
        """Summarise a store (samples, spots/cells per sample, genes, embeddings, features),
        then show every group and dataset with its description and attrs. Piped, nothing is
        cut: each entry stays whole on one line (grep-able)."""
        from tabst.info import render_info, store_info

        data = store_info(store)
        if as_json:
            typer.echo(json.dumps(data, indent=2, default=str))
        else:
            render_info(data, console)
