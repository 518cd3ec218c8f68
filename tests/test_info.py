"""`tabst info`: a one-screen summary before the tree, and nothing cut when piped."""
from __future__ import annotations

import io
import json

import h5py
from conftest import write_tiny_store
from rich.console import Console
from spot_store import write_spot_store
from tabst_cli.app import app
from typer.testing import CliRunner

from tabst.info import render_info, store_info

LONG = ("spot centre x in the sample image, measured in pixels of the full-resolution H&E; "
        "this description is deliberately long so that an 80-column pipe would have cut it "
        "somewhere in the middle, which tabst info must not do; END-OF-DESCRIPTION")


def _spot_store(tmp_path):
    store = write_spot_store(tmp_path / "spots.h5", sizes=(30, 40, 48))
    with h5py.File(store, "r+") as f:
        f["cells/x"].attrs["description"] = LONG
        f["embeddings/test"].attrs["note"] = "v" * 400 + "END-OF-ATTR"
        f["embeddings"].create_dataset("half", data=f["embeddings/test"][()][:, :5])
        f["embeddings/half"].attrs.update({"description": "an interrupted embedding",
                                           "complete": False, "encoder": "resnet18",
                                           "layer": "layer3", "weights": "imagenet",
                                           "patch_size": 32})
    return store


def test_info_summary_comes_first_and_says_spots(tmp_path):
    store = _spot_store(tmp_path)
    r = CliRunner().invoke(app, ["info", str(store)])  # not a terminal: piped
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    head = "\n".join(lines[:lines.index("")])  # the summary ends at the first blank line
    assert len(lines[:lines.index("")]) <= 12  # one screen
    assert "118 spots in 3 sample(s) (ST), spot diameter 9.0 px" in head
    assert "spots per sample  S0 30 · S1 40 · S2 48" in head
    assert "genes" in head and "8, X = log1p(count/total*100)" in head
    assert "test (8 dims, complete, synthetic none, random weights, patch spot)" in head
    assert "half (5 dims, INCOMPLETE, resnet18 layer3, imagenet weights, patch 32)" in head
    assert "morphology (2 columns, stain 2)" in head
    assert "tissue (text: constant 'unknown')" in head
    assert lines.index("") < next(i for i, ln in enumerate(lines) if ln.startswith("├── "))
    data = json.loads(CliRunner().invoke(app, ["info", str(store), "--json"]).output)
    assert data["summary"]["samples"] == {"S0": 30, "S1": 40, "S2": 48}
    assert data["summary"]["unit"] == "spots"
    assert {e["name"]: e["complete"] for e in data["summary"]["embeddings"]} == \
        {"half": False, "test": True}


def test_info_cuts_nothing_when_piped(tmp_path):
    store = _spot_store(tmp_path)
    out = CliRunner().invoke(app, ["info", str(store)]).output
    assert "…" not in out and "chars; pipe" not in out
    line = next(ln for ln in out.splitlines() if "END-OF-DESCRIPTION" in ln)
    assert LONG in line and line.rstrip().endswith(LONG)  # whole, on one line
    assert "v" * 400 + "END-OF-ATTR" in out
    assert not any(ln != ln.rstrip() for ln in out.splitlines())  # no padding to a huge width


def test_info_on_a_terminal_wraps_and_abbreviates_long_values(tmp_path):
    store = _spot_store(tmp_path)
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=70, color_system=None, soft_wrap=True)
    render_info(store_info(store), con)
    out = buf.getvalue()
    assert max(len(ln) for ln in out.splitlines()) <= 70
    flat = " ".join(out.replace("│", " ").split())
    assert " ".join(LONG.split()) in flat  # wrapped onto more lines, not cut
    assert "END-OF-ATTR" not in out and "(411 chars; pipe or --json for all)" in flat
    assert con.width == 70  # the console is left as it was


def test_info_on_a_cell_store_says_cells(tmp_path):
    store = write_tiny_store(tmp_path / "tiny.h5")
    out = CliRunner().invoke(app, ["info", str(store)]).output
    assert "180 cells in 3 sample(s)" in out and "cells per sample  S0 60 · S1 60 · S2 60" in out
    assert "tissue (text: 2 values)" in out
