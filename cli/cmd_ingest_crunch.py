"""`tabst ingest crunch SAMPLE.zarr [...] --out STORE`: Crunch 1 SpatialData zarr files -> store."""
from __future__ import annotations

import sys
from pathlib import Path

import typer

from ._common import console, user_errors


def register(app, ingest_app):
    @ingest_app.command("crunch")
    @user_errors
    def crunch(
        zarrs: list[Path] = typer.Argument(..., help="Crunch 1 SpatialData zarr folders, one per "
                                                     "sample (sample name = the zarr's stem)"),
        out: Path = typer.Option(..., "--out", "-o", help="store to create (.h5)"),
        tile: int = typer.Option(2048, "--tile", min=16,
                                 help="tile edge (px) for the tile-by-tile centroid pass; memory "
                                      "grows with it, not with the image"),
        force: bool = typer.Option(False, "--force", help="overwrite an existing store"),
        tissue: str = typer.Option("unknown", "--tissue", help="tissue recorded for every cell"),
        pixel_size_um: float = typer.Option(float("nan"), "--pixel-size-um",
                                            help="H&E pixel size in µm, if known"),
        image_element: str = typer.Option("HE_original", "--image-element",
                                          help="H&E image element (c, y, x)"),
        mask_element: str = typer.Option("HE_nuc_original", "--mask-element",
                                         help="nucleus mask element (pixel value = cell_id): an "
                                              "Image (1, y, x) as the challenge ships it, or "
                                              "Labels (y, x); found in either"),
        expression_table: str = typer.Option("anucleus", "--expression-table",
                                             help="table with expression (X, layers['counts'])"),
        group_table: str = typer.Option("cell_id-group", "--group-table",
                                        help="table mapping cell_id -> group"),
    ):
        """Ingest Crunch 1 samples: nucleus centroids from the mask (tile by tile), expression,
        groups; the image stays in the zarr and is read lazily by `tabst embed`."""
        from tabst.ingest.crunch import ingest_crunch

        res = ingest_crunch(zarrs, out, tile=tile, force=force, tissue=tissue,
                            pixel_size_um=pixel_size_um, image_element=image_element,
                            mask_element=mask_element, expression_table=expression_table,
                            group_table=group_table, command=["tabst"] + sys.argv[1:],
                            )
        console.print(f"[green]wrote[/] {res.store}: {res.n_cells:,} cells x {res.n_genes} genes "
                      f"from {len(res.samples)} sample(s)", highlight=False)
