"""`tabst embed STORE`: one patch per cell -> /embeddings/<name> (+ /features/morphology);
`tabst encoders`: the encoder registry."""
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
        encoder: str = typer.Option("resnet50", help="a name from `tabst encoders` (resnet50, "
                                    "resnet50.tv_in1k, uni, uni2h, hoptimus0, hoptimus1, "
                                    "h0mini, virchow, virchow2, gigapath, phikon, phikon2, ...) "
                                    "or timm:<architecture>"),
        layer: Optional[str] = typer.Option(None, help="ResNet cut point: layer3 (default; "
                                            "1024-d for resnet50) or layer4 (2048-d); "
                                            "transformers: final"),
        patch_size: str = typer.Option("auto", "--patch-size",
                                       help="patch side in px, 'spot' (each sample's spot "
                                            "diameter, resized to the median when they "
                                            "differ) or auto (spot on spot stores, else 32)"),
        patch_um: Optional[float] = typer.Option(None, "--patch-um",
                                                 help="patch side in micrometres, converted "
                                                      "with each sample's pixel size (HEST: "
                                                      "112 at 0.5 um/px = 224 px); replaces "
                                                      "--patch-size"),
        resize: Optional[int] = typer.Option(None, help="resize patches to N px before the "
                                             "encoder (default: the encoder's input size, e.g. "
                                             "224 for the vision transformers; none for "
                                             "ResNets)"),
        weights: str = typer.Option("auto", help="auto (ImageNet for torchvision ResNets, the "
                                    "registered Hugging Face repo otherwise) | imagenet | hub | "
                                    "hf-hub:REPO | random | PATH to a weights file "
                                    "(.safetensors/.bin/.pth) or a model folder"),
        weights_sha256: Optional[str] = typer.Option(None, "--weights-sha256",
                                                     help="expected sha256 of a --weights file"),
        encoder_kwargs: Optional[str] = typer.Option(None, "--encoder-kwargs",
                                                     help="JSON object of builder arguments "
                                                          "(timm models), e.g. "
                                                          "'{\"img_size\": 224}'"),
        batch_size: Optional[int] = typer.Option(None, help="patches per batch (default: "
                                                 "chosen to fit: 256 for small patches on "
                                                 "the CPU, from free memory on CUDA)"),
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
        cluster: Optional[str] = typer.Option(None, "--cluster",
                                              help="embed on Dask workers: local (one per "
                                                   "core), local:N, or a scheduler address "
                                                   "tcp://host:8786 (same result bit for bit)"),
    ):
        """Embed a patch per cell with an image encoder and compute interpretable features.

        Resumable: rerun the same command after an interruption and it continues where it
        stopped; the result equals an uninterrupted run.
        """
        from tabst.embed import embed_store
        from tabst.encoders.registry import parse_kwargs

        out = embed_store(store, encoder=encoder, layer=layer,
                          patch_size=f"{patch_um}um" if patch_um is not None else patch_size,
                          resize=resize, weights=weights, weights_sha256=weights_sha256,
                          encoder_kwargs=parse_kwargs(encoder_kwargs),
                          batch_size=batch_size, workers=workers, device=device, name=name,
                          features=not no_features, force=force, per_cell_fit=per_cell_fit,
                          cluster=cluster)
        note = " [bold red](RANDOM WEIGHTS)[/]" if weights == "random" else ""
        console.print(f"embeddings: /embeddings/{out}{note}"
                      + ("" if no_features else "; features: /features/morphology"))

    @app.command("encoders")
    @user_errors
    def encoders():
        """List the image encoders `tabst embed --encoder` knows: dimension, pooling, input
        size, where the weights come from and their licence."""
        from tabst.encoders.registry import registry_table

        console.print(registry_table())
