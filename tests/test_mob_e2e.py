"""End to end on real data: the four STUtility MOB sections -> `tabst ingest st` ->
`tabst embed --patch-size spot` -> `tabst compare` (leave-one-sample-out: 4 sections, 4 folds).

Random encoder weights (tests run offline); ResNet18 to stay fast.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import MOB, mob_section_args
from typer.testing import CliRunner

from tabst.store import open_store


@pytest.mark.skipif(not MOB.is_dir(), reason="shared MOB data not present")
def test_mob_ingest_embed_compare_four_folds(tmp_path):
    import torch
    from tabst_cli.app import app

    torch.set_num_threads(1)
    run = CliRunner()
    store = tmp_path / "mob.h5"
    sections = mob_section_args([f"MOB{i}" for i in range(1, 5)])
    r = run.invoke(app, ["ingest", "st", *sections, "--out", str(store), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert list(summary["samples"]) == ["MOB1", "MOB2", "MOB3", "MOB4"]

    r = run.invoke(app, ["embed", str(store), "--encoder", "resnet18", "--layer", "layer3",
                         "--patch-size", "spot", "--weights", "random", "--workers", "0",
                         "--batch-size", "256", "--name", "r18"])
    assert r.exit_code == 0, r.output
    with open_store(store) as f:
        emb = f["embeddings/r18"]
        assert emb.shape == (summary["n_spots"], 256)
        assert bool(emb.attrs["complete"])
        # --patch-size spot used the spot diameter derived from the alignment (~23 px)
        px = json.loads(emb.attrs["patch_size_px"])
        for s in ("MOB1", "MOB2", "MOB3", "MOB4"):
            assert px[s] == round(float(f[f"images/{s}"].attrs["spot_diameter_px"]))
            assert 18 <= px[s] <= 28
        assert np.isfinite(emb[:50]).all()

    out = tmp_path / "run"
    r = run.invoke(app, ["compare", str(store), "--models", "ridge", "--features", "r18",
                         "--out", str(out), "--set", "refit_all=false",
                         "--set", "save_fold_models=false"])
    assert r.exit_code == 0, r.output
    folds = pd.read_csv(out / "per_fold.csv")
    ridge = folds[folds["model"] == "ridge"]
    assert len(ridge) == 4 and (ridge["status"] == "ok").all()
    assert sorted(ridge["test_samples"]) == ["MOB1", "MOB2", "MOB3", "MOB4"]
    expected_n = [summary["samples"][s] for s in ridge["test_samples"]]
    assert (ridge["n_test"].to_numpy() == expected_n).all()
    lb = pd.read_csv(out / "leaderboard.csv")
    assert {"mean", "ridge"} <= set(lb["model"])
    # gene-wise Pearson of the mean baseline is 0 by definition; ridge must find some signal
    col = next(c for c in lb.columns if c.startswith("genewise_pearson"))
    assert lb.loc[lb["model"] == "ridge", col].iloc[0] > 0.05
