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
        per-gene scores, spatial maps, cost, provenance)."""
        from tabst.report.render import render_report

        path = render_report(run, out)
        console.print(f"report: {path} ({path.stat().st_size / 1e6:.2f} MB)", highlight=False,
                      soft_wrap=True)
