"""`tabst embed STORE`: one patch per cell -> /embeddings/<name> (+ /features/morphology)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import console, user_errors


def register(app, ingest_app):
    @app.command("embed")
    @user_errors
    def embed(
        store: Path = typer.Argument(..., help="tabst store (.h5), modified in place"),
        encoder: str = typer.Option("resnet50", help="resnet18|resnet34|resnet50|resnet101|"
                                    "resnext50_32x4d|wide_resnet50_2"),
        layer: str = typer.Option("layer3", help="cut point: layer3 (1024-d for resnet50) or "
                                  "layer4 (2048-d)"),
        patch_size: str = typer.Option("auto", "--patch-size",
                                       help="patch side in px, 'spot' (each sample's spot "
                                            "diameter, resized to the median when they "
                                            "differ) or auto (spot on spot stores, else 32)"),
        resize: Optional[int] = typer.Option(None, help="resize patches to N px before the "
                                             "encoder (e.g. 224)"),
        weights: str = typer.Option("imagenet", help="imagenet | random | PATH to a state dict"),
        weights_sha256: Optional[str] = typer.Option(None, "--weights-sha256",
                                                     help="expected sha256 of a --weights file"),
        batch_size: int = typer.Option(256, help="patches per batch"),
        workers: Optional[int] = typer.Option(None, help="DataLoader workers decoding patches "
                                              "(default: none on the CPU, 1 per 4 cores with "
                                              "CUDA)"),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        name: Optional[str] = typer.Option(None, help="name under /embeddings (default: from "
                                           "encoder, layer, patch size, weights)"),
        no_features: bool = typer.Option(False, "--no-features",
                                         help="skip /features/morphology"),
        per_cell_fit: str = typer.Option("crop", help="per-cell patch images: crop (keep pixel "
                                         "scale) or resize to the patch size"),
        force: bool = typer.Option(False, "--force", help="recompute a dataset made with other "
                                   "settings"),
    ):
        """Embed a patch per cell with a torchvision ResNet and compute interpretable features.

        Resumable: rerun the same command after an interruption and it continues where it
        stopped; the result equals an uninterrupted run.
        """
        from tabst.embed import embed_store

        out = embed_store(store, encoder=encoder, layer=layer, patch_size=patch_size,
                          resize=resize, weights=weights, weights_sha256=weights_sha256,
                          batch_size=batch_size, workers=workers, device=device, name=name,
                          features=not no_features, force=force, per_cell_fit=per_cell_fit)
        note = " [bold red](RANDOM WEIGHTS)[/]" if weights == "random" else ""
        console.print(f"embeddings: /embeddings/{out}{note}"
                      + ("" if no_features else "; features: /features/morphology"))
