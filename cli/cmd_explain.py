"""`tabst explain RUN`: per-gene feature attribution of held-out cells -> explain.html."""
from __future__ import annotations

from pathlib import Path

import typer

from ._common import console, user_errors


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    out = [v.strip() for v in value.split(",") if v.strip()]
    return out or None


def register(app, ingest_app):
    @app.command("explain")
    @user_errors
    def explain(
        run: Path = typer.Argument(..., help="a finished `tabst compare` run folder"),
        genes: str = typer.Option(None, "--genes", help="genes to explain, comma-separated "
                                  "(added to --top-genes)"),
        top_genes: int = typer.Option(5, "--top-genes", min=0,
                                      help="also explain the best model's N best-predicted genes "
                                           "(gene-wise Pearson); 0: only --genes"),
        models: str = typer.Option(None, "--models", help="models to explain, comma-separated "
                                   "(default: every model that finished all folds, except mean)"),
        cells: int = typer.Option(600, "--cells", min=1,
                                  help="held-out cells to explain in total (spread over folds)"),
        fold_models: bool = typer.Option(
            True, "--fold-models/--refit",
            help="explain each held-out cell with the model of the fold that held it out "
                 "(default, honest), or with the models refitted on all rows (--refit: "
                 "in-sample, flagged in the report)"),
        background: int = typer.Option(200, "--background", min=0,
                                       help="background rows for models whose explain takes a "
                                            "background sample (the built-in models need none)"),
        gallery: int = typer.Option(6, "--gallery", min=0,
                                    help="cells with the highest / lowest prediction per gene"),
        store: Path = typer.Option(None, "--store", help="the run's store, if it moved"),
        seed: int = typer.Option(0, "--seed", help="seed of the cell sample"),
        max_mb: float = typer.Option(5.0, "--max-mb", min=0.1, help="report size budget (MB)"),
        out: Path = typer.Option(None, "--out", help="report path (default RUN/explain.html)"),
        embedding: str = typer.Option(None, "--embedding",
                                      help="on a multi-embedding run (compare --features a,b): "
                                           "the embedding to explain (default: the best-ranked); "
                                           "files go to RUN/embeddings/NAME/"),
    ):
        """Explain a compare run: additive per-gene attributions (SHAP / TreeSHAP / pred_contribs /
        integrated gradients + TabNet masks) grouped into embedding, morphology, stain,
        neighbourhood, tissue and position; writes RUN/attributions.h5 and an offline report."""
        from tabst.compare_multi import resolve_run_dir
        from tabst.explain import run_explain
        from tabst.outputs import prepare_output

        # where the files go (a multi-embedding run: the chosen sub-run; announced by run_explain)
        run_dir, _ = resolve_run_dir(run, embedding, purpose="explain", models=_split(models),
                                     announce=False)
        if Path(run_dir).is_dir():  # both outputs are writable before the attributions are made
            for target in (Path(run_dir) / "attributions.h5", out or Path(run_dir) / "explain.html"):
                prepare_output(target, "file", force=True)
        path = run_explain(run, genes=_split(genes), top_genes=top_genes, models=_split(models),
                           cells=cells, refit=not fold_models, background=background, out=out,
                           store=store, seed=seed, gallery=gallery,
                           max_bytes=int(max_mb * 1024 * 1024), embedding=embedding)
        console.print(f"attributions: {Path(run_dir) / 'attributions.h5'}")
        console.print(f"report: {path}")
