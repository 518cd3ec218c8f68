"""`tabst compare STORE`: leakage-free benchmark of the model zoo -> run folder + report.html."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._common import console, user_errors


def register(app, ingest_app):
    @app.command("compare")
    @user_errors
    def compare(
        store: Path = typer.Argument(..., help="tabst store (.h5) with expression and embeddings"),
        config: str = typer.Option("default", "--config", "-c",
                                   help="preset name (default, quick, crunch1, hest, "
                                        "hest-benchmark) or a YAML file"),
        models: Optional[str] = typer.Option(None, "--models",
                                             help="comma-separated models, e.g. ridge,tree,xgboost,"
                                                  "tabnet (the mean baseline is always added)"),
        features: Optional[str] = typer.Option(
            None, "--features", help="embedding to use (/embeddings/NAME); several, comma-"
            "separated (a,b), run every model on each with the same folds: one sub-run per "
            "embedding in RUN/embeddings/NAME and an encoder x model table at the top"),
        folds: Optional[str] = typer.Option(None, "--folds",
                                            help="leave-one-sample-out | group-kfold:K"),
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="run folder (default reports/<config>-<time>)"),
        sets: List[str] = typer.Option([], "--set",
                                       help="override a config key, e.g. --set ridge.alphas=[0.1,1]"
                                            " (repeatable; values are YAML)"),
        unsafe_random_split: bool = typer.Option(
            False, "--unsafe-random-split",
            help="random cell-level folds: leaks spatial neighbours, flagged red in the report"),
        genes: Optional[str] = typer.Option(
            None, "--genes",
            help="genes to learn and score: all | FILE (one gene per line, or JSON such as "
                 "HEST's var_50genes.json) | hvg:K (top-K highly "
                 "variable, computed per fold on its training rows only)"),
        force: bool = typer.Option(False, "--force", help="replace an existing run folder"),
        tune: bool = typer.Option(False, "--tune", help="tune the models' hyperparameters with "
                                  "Optuna inside each fold (config block tune; = --set "
                                  "tune.enabled=true)"),
        tune_trials: Optional[int] = typer.Option(None, "--tune-trials",
                                                  help="trials per study (model x fold)"),
        tune_minutes: Optional[float] = typer.Option(None, "--tune-minutes",
                                                     help="tuning budget of the whole run"),
        max_hours: Optional[float] = typer.Option(
            None, "--max-hours", help="refuse a run estimated over H hours (the estimate is "
            "printed first) and stop one that passes it; = --set max_hours=H"),
        cluster: Optional[str] = typer.Option(
            None, "--cluster", help="fit the (fold x model) tasks on Dask workers: local, "
            "local:N or a scheduler address tcp://host:8786 (same results; = --set cluster=...)"),
    ):
        """Fit every model per sample-wise fold, score the challenge metrics, write a run folder
        (leaderboard.csv, per_gene.csv, predictions.h5, models/, report.html)."""
        import sys

        from tabst.compare import run_compare
        from tabst.compare_multi import run_table

        if tune or tune_trials is not None or tune_minutes is not None:
            sets = [*sets, "tune.enabled=true"]
        if tune_trials is not None:
            sets = [*sets, f"tune.trials={tune_trials}"]
        if tune_minutes is not None:
            sets = [*sets, f"tune.minutes={tune_minutes:.12f}"]
        if max_hours is not None:
            sets = [*sets, f"max_hours={max_hours:.12f}"]  # a YAML float (1e-07 is text)
        run_dir = run_compare(store, config, out, overrides=sets, models=models, features=features,
                              folds=folds, unsafe_random_split=unsafe_random_split, genes=genes,
                              force=force, cluster=cluster,
                              command=["tabst"] + sys.argv[1:])
        console.print(run_table(run_dir))
        report = run_dir / "report.html"
        if report.exists():
            console.print(f"report: {report}", highlight=False, soft_wrap=True)
        else:
            console.print(f"[yellow]report not rendered[/] (see {run_dir / 'logs' / 'report.log'});"
                          f" run folder: {run_dir}", highlight=False, soft_wrap=True)
