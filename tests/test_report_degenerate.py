"""The report renders for every run that produced a leaderboard, degenerate data included:
constant genes, all-zero genes, a one-cell test sample."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from chromium_probe import render_probe
from conftest import write_tiny_store

from tabst.compare import run_compare

FAST = {"features": {"embedding": {"name": "auto", "pca": 4}},
        "params": {"ridge": {"alphas": [1.0, 10.0]}}, "report": {"n_map_genes": 2, "dpi": 40},
        "models": ["ridge"]}


def _degenerate(path, case: str):
    s = write_tiny_store(path)
    with h5py.File(s, "r+") as f:
        X = f["expression/X"][()]
        if case == "constant":
            X[:, :] = 1.5
        elif case == "zero":
            X[:, :] = 0.0
        elif case == "some_constant":
            X[:, :3] = 0.0
            X[:, 3] = 2.0
        f["expression/X"][...] = X
        if case == "one_cell":
            samp = f["cells/sample"].asstr()[()]
            samp = np.where(np.arange(len(samp)) == 0, "LONE", samp).astype(object)
            del f["cells/sample"]
            f["cells"].create_dataset("sample", data=samp, dtype=h5py.string_dtype())
            g = f["images"].create_group("LONE")
            for k, v in f["images/S0"].attrs.items():
                g.attrs[k] = v
    return s


@pytest.mark.parametrize("case", ["constant", "zero", "some_constant", "one_cell"])
def test_report_renders_on_degenerate_runs(tmp_path, case):
    store = _degenerate(tmp_path / f"{case}.h5", case)
    out = run_compare(store, FAST, tmp_path / "run", show_progress=False)
    run = json.loads((out / "run.json").read_text())
    assert "report_error" not in run, run.get("report_error")
    html = (out / "report.html").read_text()
    assert "Leaderboard" in html or "leaderboard" in html
    if case in ("some_constant", "one_cell"):
        assert 'id="spatial"' in html  # genes that vary somewhere are still mapped
    res = render_probe(html, tmp_path)
    assert not res["errors"] and not res["bad"] and res["decoded"] == res["n"]
