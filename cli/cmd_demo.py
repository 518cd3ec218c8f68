"""`tabst demo --out DIR`: synthetic H&E + expression with a known truth, run end to end."""
from __future__ import annotations

from pathlib import Path

import typer

from ._common import console, user_errors


def register(app, ingest_app):
    @app.command("demo")
    @user_errors
    def demo(out: Path = typer.Option(Path("reports/demo"), "--out", "-o",
                                      help="folder for raw inputs, truth.json, store.h5 and run/"),
             seed: int = typer.Option(0, "--seed", help="random seed (same seed, same data)"),
             quick: bool = typer.Option(False, "--quick",
                                        help="tiny dataset (3 samples x 150 cells x 40 genes)"),
             data_only: bool = typer.Option(False, "--data-only",
                                            help="only generate the raw inputs and ingest them"),
             force: bool = typer.Option(False, "--force", help="regenerate an existing demo")):
        """Generate demo data in the formats a user brings, then ingest -> embed -> compare ->
        explain. Prints the report paths; opens nothing."""
        import json

        from tabst.demo import STAGES, run_demo

        stages = ("data",) if data_only else STAGES
        paths = run_demo(out, seed=seed, quick=quick, force=force, stages=stages)
        console.print(f"raw inputs: {paths['raw']}   ground truth: {paths['truth']}",
                      highlight=False, soft_wrap=True)
        console.print(f"store: {paths['store']}", highlight=False, soft_wrap=True)
        if "run" in paths:
            from tabst.compare import leaderboard_table

            console.print(leaderboard_table(paths["run"]))
        if "driver_check" in paths:
            chk = json.loads(Path(paths["driver_check"]).read_text())
            best = chk["best_model"]
            console.print(f"[bold]Ground-truth drivers recovered: {chk['recovered']} of "
                          f"{chk['of']}[/] (top named feature of each gene's best model, as in "
                          f"the explain report; best overall: {best})")
            for g in chk["genes"]:
                others = "  ".join(f"{m}: {r['top_feature']}" for m, r in g["models"].items()
                                   if m != g["best_model"])
                console.print(f"  {'✓' if g['match'] else '✗'} {g['gene']:<13} driver "
                              f"{g['driver']:<21} {g['best_model']}: {g['top_feature']:<21}"
                              f" [dim](others: {others})[/]", highlight=False, soft_wrap=True)
        if "report" in paths:
            console.print(f"compare report: [bold]{paths['report']}[/]", soft_wrap=True)
        if "explain" in paths:
            console.print(f"explain report: [bold]{paths['explain']}[/]", soft_wrap=True)
        console.print(f"demo wall time: {paths['seconds']:.1f} s", highlight=False)
