"""report.html on a spot run: maps over the section's H&E thumbnail, on a deliberately chosen
section (the median one, or the user's), gene tables with fold counts and a ranking rule,
"spots" wording, and no constant feature group shown as used."""
from __future__ import annotations

import base64
import html as htmlmod
import io
import json
import os
import re
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from spot_store import DARK, DARK_BLOCK, PINK, he_image, write_spot_store

from tabst.compare import run_compare
from tabst.errors import TabstError
from tabst.report.maps import choose_map_sample
from tabst.report.render import render_report
from tabst.report.tables import gene_tables
from tabst.report.thumbnail import CACHE_META, read_thumbnail

CFG = {"models": ["ridge"], "features": {"embedding": {"name": "auto", "pca": 4}},
       "params": {"ridge": {"alphas": [1.0, 10.0]}},
       "report": {"n_map_genes": 2, "n_best_worst": 3, "dpi": 50}}


@pytest.fixture(scope="module")
def spot_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("spots")
    store = write_spot_store(d / "spots.h5")
    return store, run_compare(store, CFG, d / "run", show_progress=False)


def _html(run_dir) -> str:
    return (run_dir / "report.html").read_text()


def _text(html: str) -> str:
    """Visible text: no style, no images, no <code> (paths, JSON), no tags."""
    t = re.sub(r"<style.*?</style>", " ", html, flags=re.S)
    t = re.sub(r"<code>.*?</code>", " ", t, flags=re.S)
    t = re.sub(r"<[^>]+>", " ", t)
    return re.sub(r"\s+", " ", htmlmod.unescape(t))


def _map_png(html: str) -> np.ndarray:
    src = re.search(r'<img id="map-image"[^>]*src="([^"]*)"', html).group(1)
    assert src.startswith("data:image/jpeg;base64,")  # photograph behind: JPEG
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
                      .convert("RGB"))


def _median_sample(run_dir) -> tuple[str, int]:
    """Independently: the section whose ridge cell-wise Spearman is the (lower) median."""
    ps = pd.read_csv(run_dir / "per_sample.csv")
    s = ps[ps["model"] == "ridge"].groupby("sample")["cellwise_spearman"].mean()
    order = s.sort_values(kind="stable").index.tolist()
    return order[(len(order) - 1) // 2], len(order)


def test_spot_report_maps_median_section_over_its_thumbnail(spot_run):
    store, run_dir = spot_run
    html = _html(run_dir)
    want, n = _median_sample(run_dir)
    choice = re.search(r'<p id="map-choice">(.*?)</p>', html, flags=re.S).group(1)
    assert f"<b>{want}</b>" in choice
    assert f"median spot-wise Spearman of {n} sections" in choice
    assert 'id="map-no-hne"' not in html and "over the section's H&amp;E" in html
    # the thumbnail kept in the run folder is of that section and covers all its spots
    meta = json.loads((run_dir / CACHE_META).read_text())
    assert meta["sample"] == want and meta["spot_diameter_px"] == 9.0
    with h5py.File(store, "r") as f:
        rows = f["cells/sample"].asstr()[()] == want
        x, y = f["cells/x"][()][rows], f["cells/y"][()][rows]
    f_, x0, y0 = meta["factor"], meta["x0"], meta["y0"]
    u, v = (x - x0) / f_, (y - y0) / f_
    assert u.min() > 0 and v.min() > 0
    assert u.max() < meta["thumb_width"] and v.max() < meta["thumb_height"]
    # the H&E is really behind the spots: the pink of the image (never a viridis colour) and
    # its dark block show in the embedded map
    img = _map_png(html).astype(int)
    near = lambda c: (np.abs(img - np.array(c)).sum(axis=2) < 40).mean()  # noqa: E731
    assert near(PINK) > 0.05 and near(DARK) > 0.002
    assert len(html.encode()) <= CFG["report"].get("max_mb", 5.0) * 1e6


def test_choose_map_sample_is_the_median_not_the_largest():
    ps = pd.DataFrame({"model": ["ridge"] * 5, "fold": range(5),
                       "sample": ["A", "B", "C", "D", "E"], "n_cells": [900, 10, 20, 30, 40],
                       "cellwise_spearman": [0.9, 0.1, 0.5, 0.3, 0.7]})
    s, why = choose_map_sample(ps, "ridge", "cellwise_spearman", "spot-wise Spearman")
    assert s == "C" and why.startswith("median spot-wise Spearman of 5 sections (0.500")
    s, _ = choose_map_sample(ps[ps["sample"] != "E"], "ridge", "cellwise_spearman", "x")
    assert s == "D"  # even count: the lower of the two middle sections (0.3 of 0.1 0.3 0.5 0.9)
    s, why = choose_map_sample(ps, "ridge", "cellwise_spearman", "x", user_choice="A")
    assert (s, why) == ("A", "chosen by report.map_sample")
    with pytest.raises(TabstError, match="report.map_sample = 'Z' is not a held-out sample.*A, B"):
        choose_map_sample(ps, "ridge", "cellwise_spearman", "x", user_choice="Z")


def test_user_map_sample_and_rebuild_without_the_store(spot_run, tmp_path):
    store, run_dir = spot_run
    want, _ = _median_sample(run_dir)
    other = next(s for s in ("S0", "S1", "S2", "S3") if s != want)
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    hidden = store + ".hidden"
    os.rename(store, hidden)  # the store is not reachable: the kept thumbnail is used
    try:
        render_report(moved)
        html = _html(moved)
        assert f"<b>{want}</b>" in html and 'id="map-no-hne"' not in html
        cfg = (moved / "config.yaml").read_text().replace("map_sample: null",
                                                          f"map_sample: {other}")
        (moved / "config.yaml").write_text(cfg)
        render_report(moved)  # another section, no store: maps without H&E, and why
        html = _html(moved)
        assert f"<b>{other}</b>: chosen by report.map_sample" in html
        assert 'id="map-no-hne"' in html and "is not readable here" in html
    finally:
        os.rename(hidden, store)
    render_report(moved)  # the store is back: H&E of the user's section, kept for next time
    assert 'id="map-no-hne"' not in _html(moved)
    assert json.loads((moved / CACHE_META).read_text())["sample"] == other


def test_thumbnail_is_the_block_mean_in_its_pixel_frame(spot_run):
    store, _ = spot_run
    thumb, meta = read_thumbnail(store, "S1", (10, 20, 170, 150), max_side=40)
    assert meta["factor"] == 4 and (meta["x0"], meta["y0"]) == (10, 20)
    img = he_image().astype(np.float64)[20:20 + 4 * thumb.shape[0], 10:10 + 4 * thumb.shape[1]]
    want = img.reshape(thumb.shape[0], 4, thumb.shape[1], 4, 3).mean(axis=(1, 3))
    assert np.abs(thumb.astype(float) - want).max() <= 0.5
    # image pixel (x, y) lands at ((x - x0) / f, (y - y0) / f): the dark block's centre
    ys, xs = DARK_BLOCK
    cu = ((xs.start + xs.stop) / 2 - 10) / 4
    cv = ((ys.start + ys.stop) / 2 - 20) / 4
    assert tuple(thumb[int(cv), int(cu)]) == DARK


def test_gene_tables_show_fold_counts_and_rank_genes_of_most_folds(spot_run, tmp_path):
    _, run_dir = spot_run
    html = _html(run_dir)
    assert "folds scored" in html and "Every gene was scored in all 4 folds." in html
    assert re.findall(r'<td class="folds">(\d+/\d+)</td>', html) and \
        set(re.findall(r'<td class="folds">(\d+/\d+)</td>', html)) == {"4/4"}
    # genes scored in 1 of 4 folds (a per-fold gene selection) are not ranked
    edit = tmp_path / "edit"
    shutil.copytree(run_dir, edit)
    pg = pd.read_csv(edit / "per_gene.csv")
    ridge = pg["model"] == "ridge"
    pg.loc[ridge & (pg["gene"] == "GENE0"), ["pearson_mean", "n_folds"]] = [0.99, 1]
    pg.loc[ridge & (pg["gene"] == "GENE1"), ["pearson_mean", "n_folds"]] = [-0.99, 1]
    pg.to_csv(edit / "per_gene.csv", index=False)
    render_report(edit)
    html = _html(edit)
    tables = re.findall(r'<table class="num gene-table">(.*?)</table>', html, flags=re.S)
    assert len(tables) == 2 and all("GENE0" not in t and "GENE1" not in t for t in tables)
    rule = re.search(r'<p class="note" id="gene-rank-rule">(.*?)</p>', html, flags=re.S).group(1)
    assert "at least 2 of the 4 folds" in rule and "2 gene(s) scored in fewer folds" in rule


def test_gene_tables_rule():
    pg = pd.DataFrame({"model": "m", "gene": [f"G{i}" for i in range(6)],
                       "pearson_mean": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], "pearson_sd": 0.0,
                       "mse_mean": 1.0, "n_folds": [1, 6, 3, 2, 6, 6],
                       "n_folds_constant_truth": 0})
    t = gene_tables(pg, "m", 6, 10)
    assert t["min_folds"] == 3 and t["n_left_out"] == 2  # G0 (1 of 6) and G3 (2 of 6)
    assert [r["gene"] for r in t["best"]] == ["G1", "G2"]
    assert [r["gene"] for r in t["worst"]] == ["G5", "G4"]
    assert [r["folds"] for r in t["best"]] == ["6/6", "3/6"]
    assert t["map_candidates"][:4] == ["G1", "G2", "G4", "G5"]  # ranked genes map first


def test_spot_words_and_feature_groups(spot_run):
    _, run_dir = spot_run
    html = _html(run_dir)
    text = _text(html)
    stray = [text[max(0, m.start() - 60): m.end() + 40]
             for m in re.finditer(r"\bcells?\b", text, flags=re.I)]
    # "cell" only where the metric's Crunch name is explained
    assert len(stray) == 1 and "cell-wise Spearman, computed per spot" in stray[0], stray
    assert "spot-wise Spearman" in text and "test spots" in text and "spots evaluated" in text
    groups = re.search(r'<table class="num" id="feature-groups">(.*?)</table>', html,
                       flags=re.S).group(1)
    names = re.findall(r'<tr><td class="l">([^<]+)</td>', groups)
    assert names == ["embedding", "stain"]  # no constant tissue group; position is off on spots
    const = re.search(r'<p class="note" id="constant-groups">(.*?)</p>', html, flags=re.S).group(1)
    assert "tissue=unknown" in const and "4 of 4 folds" in const
    off = re.search(r'<p class="note" id="off-groups">(.*?)</p>', html, flags=re.S).group(1)
    assert "position" in off and "tissue-layout prior" in off
