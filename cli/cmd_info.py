"""`tabst info STORE`: the store's tree with shapes, dtypes, chunking and every attr."""
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
        """Show every group and dataset of a store with its description and attrs."""
        from tabst.info import render_info, store_info

        data = store_info(store)
        if as_json:
            typer.echo(json.dumps(data, indent=2, default=str))
        else:
            render_info(data, console)
