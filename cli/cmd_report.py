"""`tabst report RUN`: rebuild report.html from a compare run folder alone."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import console, user_errors


def register(app, ingest_app):
    @app.command("report")
    @user_errors
    def report(run: Path = typer.Argument(..., help="run folder written by `tabst compare`"),
               out: Optional[Path] = typer.Option(None, "--out", "-o",
                                                  help="HTML file (default RUN/report.html)")):
        """Render the one-file offline HTML report of a compare run (leaderboard, per-sample and
        per-gene scores, spatial maps, cost, provenance); of a multi-embedding run, its top-level
        page (encoder x model table; each embedding's own report is RUN/embeddings/NAME)."""
        from tabst.report.multi import render_any

        path = render_any(run, out)
        console.print(f"report: {path} ({path.stat().st_size / 1e6:.2f} MB)", highlight=False,
                      soft_wrap=True)
