"""End to end on real spot data: the STUtility MOB sections -> `tabst ingest st` ->
`tabst embed --patch-size spot` -> `tabst compare` (mean, ridge, a tiny XGBoost; 3 sections, 3
leave-one-section-out folds) -> `tabst explain`.

`explain` used to crash on every spot run (the embedding's patch size is the word "spot"); now
it cuts the gallery at each sample's resolved spot size, says so, speaks of spots, and shows
each fold's share of the attribution mass. Random encoder weights (offline); ResNet18 cut at
layer3 to stay fast on one core.
"""
from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest
import yaml
from chromium_probe import render_probe
from conftest import MOB, mob_section_args
from typer.testing import CliRunner

SECTIONS = ("MOB1", "MOB2", "MOB3")
N_GENES = 12

CONFIG = {
    "name": "spot-explain-test",
    "features": {"embedding": {"name": "r18", "pca": 8}, "metadata": {"position": True}},
    "models": ["mean", "ridge", "xgboost"],
    "params": {"ridge": {"alphas": [1.0, 10.0, 100.0]},
               "xgboost": {"n_estimators": 12, "max_depth": 3, "n_jobs": 1,
                           "early_stopping_rounds": 4, "device": "cpu", "codec": "identity"}},
    "refit_all": False,
    "save_fold_models": True,
}


@pytest.mark.skipif(not MOB.is_dir(), reason="shared MOB data not present")
def test_spot_ingest_embed_compare_explain(tmp_path):
    import torch
    from tabst_cli.app import app

    torch.set_num_threads(1)
    cli = CliRunner()
    store = tmp_path / "mob.h5"
    sections = mob_section_args(SECTIONS)
    r = cli.invoke(app, ["ingest", "st", *sections, "--out", str(store)])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["embed", str(store), "--encoder", "resnet18", "--layer", "layer3",
                         "--patch-size", "spot", "--weights", "random", "--workers", "0",
                         "--batch-size", "256", "--name", "r18"])
    assert r.exit_code == 0, r.output
    with h5py.File(store, "r") as f:
        px = json.loads(f["embeddings/r18"].attrs["patch_size_px"])
        X = f["expression/X"][()]
        genes = [g.decode() for g in f["expression/genes"][()]]
    assert set(px) == set(SECTIONS) and all(15 <= v <= 30 for v in px.values())
    # the most expressed genes keep compare fast and give the models something to learn
    gene_file = tmp_path / "genes.txt"
    gene_file.write_text("\n".join(genes[i] for i in np.argsort(-X.mean(0))[:N_GENES]) + "\n")
    cfg = tmp_path / "spot.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    run = tmp_path / "run"
    r = cli.invoke(app, ["compare", str(store), "--config", str(cfg), "--genes", str(gene_file),
                         "--out", str(run)])
    assert r.exit_code == 0, r.output

    r = cli.invoke(app, ["explain", str(run), "--top-genes", "2", "--cells", "90",
                         "--gallery", "2"])
    assert r.exit_code == 0, r.output
    html = (run / "explain.html").read_text()
    # spot words, not cell words
    assert "held-out spots drawn at random" in html and "Held-out spots with the highest" in html
    text = re.sub(r"<style>.*?</style>|<[^>]+>", " ", html, flags=re.S)  # the words only
    assert not re.search(r"\bcells?\b", text), re.findall(r".{40}\bcells?\b.{20}", text)
    # the user's choice and the resolved px of every sample
    assert "--patch-size spot" in html
    for s, v in px.items():
        assert f"{s} {v} px" in html
    # the gallery shows real patches (cut at the spot size), not placeholders
    assert "no image" not in html and len(re.findall(r'alt="patch ', html)) >= 4
    probe = render_probe(html, tmp_path)                    # it lays out, every image decodes
    assert probe["errors"] == [] and probe["bad"] == [] and probe["decoded"] == probe["n"] > 0, probe
    # per-fold shares: in the report, in attributions.h5, summing to 1 over the 3 folds
    assert "Share of the |attribution| mass per fold" in html
    with h5py.File(run / "attributions.h5", "r") as f:
        assert f.attrs["unit"] == "spot"
        assert json.loads(f.attrs["patch_size_px"]) == px
        for m in ("ridge", "xgboost"):
            share = f[f"{m}/fold_share"][()]
            assert share.shape == (3, 2)
            np.testing.assert_allclose(share.sum(axis=0), 1.0, atol=1e-9)
            assert sorted(f[f"{m}/fold_ids"][()].tolist()) == [0, 1, 2]
            assert f[f"{m}/fold_cells"][()].sum() == f[f"{m}/cell_id"].shape[0]
