"""Per-cell patch images named by the label table: ingest table -> embed -> compare, end to end.

The patches are cut from the demo generator's slides with tabst's own crop, so embedding the
per-cell store must give exactly the embedding of the whole-slide store."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tabst_cli.app import app
from typer.testing import CliRunner

from tabst.demo import generate_demo_inputs, ingest_demo
from tabst.store import open_store


def _ok(args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("pc")
    return d, generate_demo_inputs(d / "demo", quick=True, show_progress=False)


def _write_patches(paths, folder, size=32) -> pd.DataFrame:
    """One PNG per cell (the 32 px crop tabst itself takes) + a label table naming them."""
    from tabst.images import open_sample_image
    from tabst.patches import crop_patch

    labels = pd.read_csv(paths["labels"])
    (folder / "patches").mkdir(parents=True)
    names = []
    for s, part in labels.groupby("sample", sort=False):
        img = next(p for p in paths["images"].iterdir() if p.stem == s)
        reader = open_sample_image(img.parent / "x.h5", {"kind": "file", "path": img.name}, s)
        for cid, x, y in zip(part["cell_id"], part["x"], part["y"]):
            patch, _ = crop_patch(reader, x, y, size)
            Image.fromarray(patch).save(folder / "patches" / f"{cid}.png")
        reader.close()
    names = [f"{c}.png" for c in labels["cell_id"]]  # relative to --images (the patches folder)
    labels = labels.assign(image=names)
    labels.to_csv(folder / "labels.csv", index=False)
    return labels


def test_per_cell_patches_ingest_embed_compare(demo, tmp_path):
    d, paths = demo
    pc = tmp_path / "pc"
    _write_patches(paths, pc)
    store = tmp_path / "stores" / "pc.h5"  # another folder than the patches: paths must resolve
    store.parent.mkdir()
    _ok(["ingest", "table", pc / "labels.csv", "--expression", paths["expression"],
         "--images", pc / "patches", "--out", store])
    with open_store(store) as f:
        kinds = {str(f["images"][s].attrs["kind"]) for s in f["images"]}
        first = f["cells/image"].asstr()[0]
    assert kinds == {"per-cell"} and (store.parent / first).exists()
    emb = ["--encoder", "resnet18", "--weights", "random", "--patch-size", 32,
           "--batch-size", 64, "--workers", 0, "--device", "cpu", "--no-features"]
    _ok(["embed", store, *emb])
    whole = ingest_demo(paths, tmp_path / "whole.h5", show_progress=False, command=["test"])
    _ok(["embed", whole, *emb])
    with open_store(store) as a, open_store(whole) as b:
        (name,) = list(a["embeddings"])
        ea, eb = a[f"embeddings/{name}"][()], b[f"embeddings/{name}"][()]
    assert ea.shape == eb.shape and np.isfinite(ea).all()
    np.testing.assert_allclose(ea, eb, rtol=1e-5, atol=1e-5)  # the same pixels, the same numbers
    run = tmp_path / "run"
    _ok(["compare", store, "--config", "quick", "--models", "ridge", "--out", run,
         "--set", "features.features=[]", "--set", "report.dpi=40"])
    lb = pd.read_csv(run / "leaderboard.csv")
    assert set(lb["model"]) >= {"mean", "ridge"} and lb["n_folds_ok"].min() >= 2
