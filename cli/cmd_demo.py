"""`tabst demo --out DIR`: synthetic H&E + expression data with a known truth, ingested."""
from __future__ import annotations

from pathlib import Path

import typer

from ._common import console, user_errors


def register(app, ingest_app):
    @app.command("demo")
    @user_errors
    def demo(out: Path = typer.Option(Path("reports/demo"), "--out", "-o",
                                      help="folder for raw inputs, truth.json and store.h5"),
             seed: int = typer.Option(0, "--seed", help="random seed (same seed, same data)"),
             quick: bool = typer.Option(False, "--quick",
                                        help="tiny dataset (3 samples x 150 cells x 40 genes)"),
             force: bool = typer.Option(False, "--force", help="regenerate an existing demo")):
        """Generate demo data in the formats a user brings, then ingest it into a store."""
        from tabst.demo import run_demo

        paths = run_demo(out, seed=seed, quick=quick, force=force)
        console.print(f"raw inputs: {paths['raw']}   ground truth: {paths['truth']}",
                      highlight=False, soft_wrap=True)
        console.print(f"store: {paths['store']}", highlight=False, soft_wrap=True)
