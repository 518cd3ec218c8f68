"""report.html: one offline file, rebuilt from the run folder alone, renders in headless
Chromium."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil

import pytest
from chromium_probe import render_probe
from conftest import write_tiny_store
from tabst_cli.app import app
from typer.testing import CliRunner

from tabst.compare import run_compare
from tabst.errors import TabstError
from tabst.report.render import render_report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("rep")
    store = write_tiny_store(d / "tiny.h5", n_samples=3, cells_per_sample=50, n_genes=14, emb_dim=8)
    cfg = {"models": ["ridge", "tree"], "features": {"embedding": {"name": "auto", "pca": 6}},
           "params": {"tree": {"max_depth": 3, "codec_k": 3}},
           "report": {"n_map_genes": 2, "n_best_worst": 5}}
    return run_compare(store, cfg, d / "run", show_progress=False)


def _images(html: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)


def test_report_is_one_offline_file(run_dir):
    html = (run_dir / "report.html").read_text()
    assert "http://" not in html and "https://" not in html
    assert not re.search(r'(src|href)\s*=\s*"(?!data:)', html)  # no linked resources at all
    assert "<script" not in html and "@import" not in html
    assert len(html.encode()) <= 5 * 1024 * 1024
    imgs = _images(html)
    assert len(imgs) >= 4  # per-sample, per-gene, spatial, cost
    from PIL import Image

    for src in imgs:
        assert src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
        im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        im.load()
        assert im.width > 100 and im.height > 100


def test_report_content(run_dir):
    html = (run_dir / "report.html").read_text()
    for section in ('id="leaderboard"', 'id="per-sample"', 'id="genes"', 'id="spatial"',
                    'id="cost"', 'id="provenance"'):
        assert section in html
    # the tiny store's embedding has random weights -> the banner must be there
    assert 'id="banner-random"' in html and "RANDOM ENCODER WEIGHTS" in html
    assert 'id="banner-unsafe"' not in html
    assert "ridge" in html and "tree+pca3" in html and "mean" in html
    assert "best genes" in html and "worst genes" in html
    assert "@media print" in html
    assert f"tabst report {run_dir.name}" in html
    # a cell store (no spot platform, no spot diameter) says cells; its maps are over its image
    assert "cell-wise Spearman" in html and "test cells" in html
    assert not re.search(r"\bspots?\b", html) and "spot-wise" not in html
    assert 'id="map-choice"' in html and "median cell-wise Spearman of 3 sections" in html
    assert 'id="map-no-hne"' not in html and "over the section's H&amp;E" in html
    # tissueA/tissueB vary: the tissue group is a used feature, not a constant one
    groups = re.search(r'id="feature-groups">(.*?)</table>', html, flags=re.S).group(1)
    assert ">tissue<" in groups and 'id="constant-groups"' not in html


def test_report_rebuilt_from_run_folder_alone(run_dir, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(run_dir, moved)
    (moved / "report.html").unlink()
    store = json.loads((moved / "run.json").read_text())["store"]["path"]
    hidden = store + ".hidden"
    os.rename(store, hidden)  # the store is not needed to render
    try:
        r = CliRunner().invoke(app, ["report", str(moved)])
    finally:
        os.rename(hidden, store)
    assert r.exit_code == 0, r.output
    html = (moved / "report.html").read_text()
    assert 'id="spatial"' in html and len(_images(html)) >= 4


def test_report_errors_and_size_budget(run_dir, tmp_path):
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "no such run folder" in r.output
    part = tmp_path / "partial"
    shutil.copytree(run_dir, part)
    (part / "predictions.h5").unlink()
    with pytest.raises(TabstError, match="missing predictions.h5"):
        render_report(part)
    # a tight budget forces lower-resolution figures, an impossible one is a clear error
    cfgp = part.parent / "tight"
    shutil.copytree(run_dir, cfgp)
    cfg = (cfgp / "config.yaml").read_text().replace("max_mb: 5.0", "max_mb: 0.01")
    (cfgp / "config.yaml").write_text(cfg)
    with pytest.raises(TabstError, match="budget"):
        render_report(cfgp)





def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    out = render_probe((run_dir / "report.html").read_text(), tmp_path)
    assert out["errors"] == []
    assert out["n"] >= 4 and out["decoded"] == out["n"], out
