"""`tabst ingest table`: every accepted input shape, and every bad input the issue lists."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from tabst.errors import InputError, TabstError
from tabst.ingest.table import ingest_table
from tabst.store import open_store, read_strings

GENES = ["GA", "GB", "GC", "GD", "GE"]
SIZES = {"S1": (40, 60), "S2": (50, 30)}  # sample -> (height, width)


def make_inputs(root, *, n_per=12, seed=0):
    """Tiny raw inputs: two sample PNGs, uint16 masks, labels.csv and the true matrix."""
    rng = np.random.default_rng(seed)
    img_dir, mask_dir = root / "images", root / "masks"
    img_dir.mkdir(exist_ok=True)
    mask_dir.mkdir(exist_ok=True)
    rows = []
    for s, (h, w) in SIZES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img_dir / f"{s}.png")
        Image.fromarray(np.zeros((h, w), np.uint16)).save(mask_dir / f"{s}_mask.png")
        for i in range(n_per):
            rows.append({"cell_id": f"{s}_c{i:03d}", "sample": s,
                         "tissue": "tA" if s == "S1" else "tB",
                         "x": float(rng.uniform(0, w - 1)), "y": float(rng.uniform(0, h - 1)),
                         "group": "train" if i % 3 else "test"})
    labels = pd.DataFrame(rows)
    X = rng.gamma(2.0, 1.0, size=(len(labels), len(GENES))).astype(np.float32)
    X[rng.random(X.shape) < 0.3] = 0
    expr = pd.DataFrame(X, columns=GENES)
    expr.insert(0, "cell_id", labels["cell_id"])
    labels.to_csv(root / "labels.csv", index=False)
    return {"labels": root / "labels.csv", "images": img_dir, "masks": mask_dir,
            "df": labels, "X": X, "expr": expr}


@pytest.fixture
def inp(tmp_path):
    return make_inputs(tmp_path)


def shuffled(expr, seed=1):
    return expr.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def read_store(path):
    with open_store(path) as f:
        return {"ids": list(read_strings(f["cells/cell_id"])),
                "sample": list(read_strings(f["cells/sample"])),
                "X": f["expression/X"][()], "genes": list(read_strings(f["expression/genes"])),
                "transform": f["expression/X"].attrs["transform"],
                "images": {k: dict(v.attrs) for k, v in f["images"].items()},
                "cells": sorted(f["cells"].keys()), "x": f["cells/x"][()],
                "prov": json.loads(f.attrs["provenance"])}


def assert_matches(store, inp, genes=GENES):
    got = read_store(store)
    assert got["ids"] == list(inp["df"]["cell_id"])
    cols = [GENES.index(g) for g in genes]
    np.testing.assert_allclose(got["X"], inp["X"][:, cols], rtol=1e-6)
    assert got["genes"] == list(genes)
    return got


def no_store_left(folder, name="store.h5"):
    return not (folder / name).exists() and not any(p.name.startswith(f".{name}.tmp")
                                                    for p in folder.iterdir())


# ------------------------------------------------------------------------------------------------
# accepted shapes
# ------------------------------------------------------------------------------------------------
def test_csv_expression_matched_by_id_not_order(inp, tmp_path):
    shuffled(inp["expr"]).to_csv(tmp_path / "expr.csv", index=False)
    out = tmp_path / "sub" / "store.h5"
    res = ingest_table(inp["labels"], out=out, expression=tmp_path / "expr.csv",
                       images=inp["images"], masks=inp["masks"], show_progress=False,
                       transform="log1p(count/total*100)")
    assert res["n_cells"] == 24 and res["n_genes"] == 5 and res["samples"] == {"S1": 12, "S2": 12}
    got = assert_matches(out, inp)
    assert got["transform"] == "log1p(count/total*100)"
    assert got["cells"] == ["cell_id", "group", "sample", "tissue", "x", "y"]
    a = got["images"]["S1"]
    assert a["kind"] == "file" and a["path"] == "../images/S1.png"
    assert a["mask_path"] == "../masks/S1_mask.png"
    assert (a["height"], a["width"], a["channels"]) == (40, 60, 3)
    assert np.isnan(a["pixel_size_um"]) and np.isnan(a["spot_diameter_px"])
    # paths relative to the store resolve from its folder
    assert (out.parent / a["path"]).resolve() == (inp["images"] / "S1.png").resolve()
    kinds = [r["path"].rsplit("/", 1)[-1] for r in got["prov"]["inputs"]]
    assert "labels.csv" in kinds and "expr.csv" in kinds and "S1.png" in kinds
    assert all("sha256" in r for r in got["prov"]["inputs"])
    with open_store(out) as f:
        assert f["cells/x"].attrs["unit"] == "px" and f["expression/X"].chunks[1] == 5
        missing = []
        f.visititems(lambda n, o: missing.append(n) if isinstance(o, h5py.Dataset)
                     and "description" not in o.attrs else None)
        assert missing == []


def write_h5ad(path, expr, *, sparse=False, layer=None):
    import anndata as ad
    import scipy.sparse as sp

    X = expr[GENES].to_numpy(np.float32)
    a = ad.AnnData(X=sp.csr_matrix(X) if sparse else X,
                   obs=pd.DataFrame(index=expr["cell_id"].astype(str).to_numpy()),
                   var=pd.DataFrame(index=GENES))
    if layer:
        a.layers[layer] = X.copy()
        a.X = np.zeros_like(X)
    a.write_h5ad(path)


def write_h5_matrix(path, expr):
    with h5py.File(path, "w") as f:
        f["X"] = expr[GENES].to_numpy(np.float32)
        f.create_dataset("cell_id", data=expr["cell_id"].to_numpy(object), dtype=h5py.string_dtype())
        f.create_dataset("genes", data=np.array(GENES, dtype=object), dtype=h5py.string_dtype())


@pytest.mark.parametrize("fmt", ["tsv", "csv.gz", "parquet", "h5ad", "h5ad-csr", "h5ad-layer",
                                 "h5"])
def test_expression_file_formats(inp, tmp_path, fmt):
    e = shuffled(inp["expr"], seed=3)
    kw = {}
    if fmt == "tsv":
        p = tmp_path / "expr.tsv"
        e.to_csv(p, sep="\t", index=False)
    elif fmt == "csv.gz":
        p = tmp_path / "expr.csv.gz"
        e.to_csv(p, index=False)
    elif fmt == "parquet":
        p = tmp_path / "expr.parquet"
        e.to_parquet(p, index=False)
    elif fmt.startswith("h5ad"):
        p = tmp_path / "expr.h5ad"
        write_h5ad(p, e, sparse=fmt == "h5ad-csr", layer="counts" if fmt == "h5ad-layer" else None)
        if fmt == "h5ad-layer":
            kw["expression_layer"] = "counts"
    else:
        p = tmp_path / "expr.h5"
        write_h5_matrix(p, e)
    out = tmp_path / "store.h5"
    ingest_table(inp["labels"], out=out, expression=p, images=inp["images"], chunk_rows=5,
                 show_progress=False, **kw)
    assert_matches(out, inp)


@pytest.mark.parametrize("fmt", ["tsv", "parquet"])
def test_label_table_formats_and_inline_genes_by_prefix(inp, tmp_path, fmt):
    df = inp["df"].copy()
    for j, g in enumerate(GENES):
        df[f"gene_{g}"] = inp["X"][:, j]
    p = tmp_path / f"labels.{fmt}"
    df.to_csv(p, sep="\t", index=False) if fmt == "tsv" else df.to_parquet(p, index=False)
    out = tmp_path / "store.h5"
    ingest_table(p, out=out, images=inp["images"], gene_prefix="gene_", chunk_rows=4,
                 show_progress=False)
    got = read_store(out)
    np.testing.assert_allclose(got["X"], inp["X"], rtol=1e-6)
    assert got["genes"] == [f"gene_{g}" for g in GENES]


def test_inline_genes_by_list_and_file(inp, tmp_path):
    df = inp["df"].copy()
    for j, g in enumerate(GENES):
        df[g] = inp["X"][:, j]
    df.to_csv(tmp_path / "lab.csv", index=False)
    (tmp_path / "genes.txt").write_text("GC\nGA\n")
    ingest_table(tmp_path / "lab.csv", out=tmp_path / "a.h5", images=inp["images"], genes="GB,GE",
                 show_progress=False)
    ingest_table(tmp_path / "lab.csv", out=tmp_path / "b.h5", images=inp["images"],
                 genes=f"@{tmp_path / 'genes.txt'}", show_progress=False)
    assert_matches(tmp_path / "a.h5", inp, genes=["GB", "GE"])
    assert_matches(tmp_path / "b.h5", inp, genes=["GC", "GA"])


def test_column_mapping_cli_and_yaml(inp, tmp_path):
    df = inp["df"].rename(columns={"cell_id": "fnm", "sample": "slide_name", "x": "px_x",
                                   "y": "px_y"})
    df.to_csv(tmp_path / "lab.csv", index=False)
    e = inp["expr"].rename(columns={"cell_id": "fnm"})
    e.to_csv(tmp_path / "expr.csv", index=False)
    ingest_table(tmp_path / "lab.csv", out=tmp_path / "a.h5", expression=tmp_path / "expr.csv",
                 images=inp["images"], show_progress=False,
                 columns={"cell_id": "fnm", "sample": "slide_name", "x": "px_x", "y": "px_y"})
    assert_matches(tmp_path / "a.h5", inp)
    (tmp_path / "cfg.yaml").write_text(
        "columns: {cell_id: fnm, sample: slide_name, x: px_x, y: px_y}\n"
        f"images: {inp['images']}\ntransform: counts\n")
    ingest_table(tmp_path / "lab.csv", out=tmp_path / "b.h5", expression=tmp_path / "expr.csv",
                 config=tmp_path / "cfg.yaml", show_progress=False)
    assert read_store(assert_matches(tmp_path / "b.h5", inp) and tmp_path / "b.h5")[
        "transform"] == "counts"


def test_image_column_per_sample_and_per_cell(inp, tmp_path):
    df = inp["df"].copy()
    (inp["images"] / "S1.png").rename(inp["images"] / "slideA.png")
    df["image"] = np.where(df["sample"] == "S1", "slideA.png", "S2.png")
    df.to_csv(tmp_path / "lab.csv", index=False)
    inp["expr"].to_csv(tmp_path / "expr.csv", index=False)
    out = tmp_path / "a.h5"
    ingest_table(tmp_path / "lab.csv", out=out, expression=tmp_path / "expr.csv",
                 images=inp["images"], show_progress=False)
    assert read_store(out)["images"]["S1"]["path"] == "images/slideA.png"

    patches = tmp_path / "patches"
    patches.mkdir()
    for cid in df["cell_id"]:
        Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(patches / f"{cid}.png")
    df["image"] = df["cell_id"] + ".png"
    df["x"] = 1000.0  # centroids are not checked against patch sizes
    df.to_csv(tmp_path / "lab2.csv", index=False)
    out = tmp_path / "b.h5"
    res = ingest_table(tmp_path / "lab2.csv", out=out, expression=tmp_path / "expr.csv",
                       images=patches, show_progress=False)
    assert res["image_kind"] == "per-cell"
    with open_store(out) as f:
        assert read_strings(f["cells/image"])[0] == f"patches/{df['cell_id'][0]}.png"
        a = dict(f["images/S2"].attrs)
    assert a["kind"] == "per-cell" and a["channels"] == 0 and (a["height"], a["width"]) == (8, 8)


def test_one_expression_file_per_sample(inp, tmp_path):
    d = tmp_path / "expr"
    d.mkdir()
    e = inp["expr"]
    e[e["cell_id"].str.startswith("S1")].to_csv(d / "S1.csv", index=False)
    e2 = e[e["cell_id"].str.startswith("S2")]
    e2[["cell_id"] + GENES[::-1]].to_parquet(d / "S2.parquet", index=False)  # other order is fine
    ingest_table(inp["labels"], out=tmp_path / "s.h5", expression=d, images=inp["images"],
                 show_progress=False)
    assert_matches(tmp_path / "s.h5", inp)


@pytest.mark.parametrize("shuffle", [False, True])
def test_streaming_chunks_direct_and_scattered(inp, tmp_path, shuffle, monkeypatch):
    from tabst.ingest import common

    big = make_inputs(tmp_path, n_per=300, seed=5)
    e = shuffled(big["expr"], seed=7) if shuffle else big["expr"]
    e.to_csv(tmp_path / "expr.csv", index=False)
    writes = []
    orig = common._RowScatterWriter.write

    def spy(self, pos, values):
        writes.append(len(pos))
        orig(self, pos, values)
        writes.append("scratch" if self.scratch is not None else "direct")
    monkeypatch.setattr(common._RowScatterWriter, "write", spy)
    ingest_table(big["labels"], out=tmp_path / "s.h5", expression=tmp_path / "expr.csv",
                 images=big["images"], chunk_rows=50, show_progress=False)
    assert_matches(tmp_path / "s.h5", big)
    sizes = [w for w in writes if isinstance(w, int)]
    assert max(sizes) <= 50 + 600 // 1 and sum(sizes) == 600
    assert ("scratch" in writes) == shuffle


# ------------------------------------------------------------------------------------------------
# bad inputs: one test each (exit 1 via the CLI, message names file and row/column, no store)
# ------------------------------------------------------------------------------------------------
def run_cli(args):
    from tabst_cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _bad_case(name, inp, tmp):
    """Mutate the tiny inputs for one bad case; return (extra CLI args, expected message parts)."""
    df, e = inp["df"].copy(), inp["expr"].copy()
    extra, expect = [], []
    if name == "missing_column":
        df = df.drop(columns=["x"])
        expect = ["labels.csv", "column 'x'", "required column missing"]
    elif name == "duplicate_cell_id":
        df.loc[5, "cell_id"] = df.loc[2, "cell_id"]
        e = e.drop(index=5)
        expect = ["labels.csv", "row 6", "column 'cell_id'", "duplicate cell id"]
    elif name == "cell_missing_in_expression":
        e = e.drop(index=7)
        expect = ["labels.csv", "row 8", "column 'cell_id'", "no row in the expression"]
    elif name == "cell_missing_in_labels":
        e.loc[len(e)] = ["ghost"] + [1.0] * len(GENES)
        expect = ["expr.csv", "row 25", "column 'cell_id'", "'ghost' is not in the label table"]
    elif name == "duplicate_in_expression":
        e = pd.concat([e, e.iloc[[3]]], ignore_index=True)
        expect = ["expr.csv", "row 25", "appears a second time", "first at row 4"]
    elif name == "nan_expression":
        e.loc[9, "GC"] = np.nan
        expect = ["expr.csv", "row 10", "column 'GC'", "NaN"]
    elif name == "inf_expression":
        e["GD"] = e["GD"].astype(object)
        e.loc[4, "GD"] = "inf"
        expect = ["expr.csv", "row 5", "column 'GD'", "infinite"]
    elif name == "negative_expression":
        e.loc[11, "GB"] = -0.5
        expect = ["expr.csv", "row 12", "column 'GB'", "negative", "--allow-negative"]
    elif name == "non_numeric_expression":
        e["GA"] = e["GA"].astype(object)
        e.loc[13, "GA"] = "n/a!"
        expect = ["expr.csv", "row 14", "column 'GA'", "not a number"]
    elif name == "non_numeric_coordinate":
        df["y"] = df["y"].astype(object)
        df.loc[14, "y"] = "12,5px"
        expect = ["labels.csv", "row 15", "column 'y'", "'12,5px' is not a number"]
    elif name == "centroid_outside_image":
        df.loc[16, "x"] = 31.0  # S2 is 30 px wide
        expect = ["labels.csv", "row 17", "column 'x'", "outside the image", "S2.png"]
    elif name == "missing_image":
        (inp["images"] / "S2.png").unlink()
        expect = ["images", "no image for sample 'S2'"]
    elif name == "unreadable_image":
        (inp["images"] / "S2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        expect = ["S2.png", "cannot read the image", "first on label row 13"]
    elif name == "image_column_missing_file":
        df["image"] = np.where(df["sample"] == "S1", "S1.png", "nope.png")
        expect = ["nope.png", "image file not found"]
    elif name == "gene_lists_differ":
        d = tmp / "expr_dir"
        d.mkdir()
        e[e.cell_id.str.startswith("S1")].to_csv(d / "S1.csv", index=False)
        e[e.cell_id.str.startswith("S2")].drop(columns=["GE"]).rename(
            columns={"GD": "GDX"}).to_csv(d / "S2.csv", index=False)
        extra = ["--expression", d]
        expect = ["S2.csv", "gene list differs", "missing: GD, GE", "extra: GDX"]
    elif name == "empty_sample":
        df["sample"] = df["sample"].astype(object)
        df.loc[18, "sample"] = ""
        expect = ["labels.csv", "row 19", "column 'sample'", "empty sample"]
    elif name == "empty_expression_file":
        d = tmp / "expr_dir"
        d.mkdir()
        e.to_csv(d / "a.csv", index=False)
        e.iloc[:0].to_csv(d / "b_S3.csv", index=False)
        extra = ["--expression", d]
        expect = ["b_S3.csv", "no data rows"]
    elif name == "mask_wrong_size":
        Image.fromarray(np.zeros((10, 10), np.uint16)).save(inp["masks"] / "S2_mask.png")
        extra = ["--masks", inp["masks"]]
        expect = ["S2_mask.png", "mask is 10x10 px", "30x50"]
    elif name == "no_labels_rows":
        df = df.iloc[:0]
        expect = ["labels.csv", "no data rows"]
    else:
        raise AssertionError(name)
    df.to_csv(inp["labels"], index=False)
    if "--expression" not in extra:
        e.to_csv(tmp / "expr.csv", index=False)
        extra += ["--expression", tmp / "expr.csv"]
    return extra, expect


BAD = ["missing_column", "duplicate_cell_id", "cell_missing_in_expression",
       "cell_missing_in_labels", "duplicate_in_expression", "nan_expression", "inf_expression",
       "negative_expression", "non_numeric_expression", "non_numeric_coordinate",
       "centroid_outside_image", "missing_image", "unreadable_image", "image_column_missing_file",
       "gene_lists_differ", "empty_sample", "empty_expression_file", "mask_wrong_size",
       "no_labels_rows"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exit_1_names_file_row_column_no_store(inp, tmp_path, case):
    extra, expect = _bad_case(case, inp, tmp_path)
    out = tmp_path / "out" / "store.h5"
    r = run_cli(["ingest", "table", inp["labels"], "--images", inp["images"], "--out", out,
                 *extra])
    msg = " ".join(r.output.split())
    assert r.exit_code == 1, r.output
    assert "error:" in msg and "Traceback" not in msg
    msg = msg[msg.index("error:"):]  # after any progress bar
    for part in expect:
        assert part in msg, (part, msg)
    assert "fix:" in msg
    assert not out.parent.exists() or no_store_left(out.parent)


def test_existing_output_needs_force_and_failed_force_keeps_old(inp, tmp_path):
    inp["expr"].to_csv(tmp_path / "expr.csv", index=False)
    out = tmp_path / "store.h5"
    args = ["ingest", "table", inp["labels"], "--images", inp["images"], "--out", out,
            "--expression", tmp_path / "expr.csv"]
    r = run_cli(args)
    assert r.exit_code == 0, r.output
    assert "24 cells x 5 genes" in " ".join(r.output.split())
    before = out.read_bytes()
    r = run_cli(args)
    assert r.exit_code == 1 and "already exists" in r.output and "--force" in r.output
    # a failing --force run leaves the old store untouched and no temp file
    e = inp["expr"].copy()
    e.loc[23, "GA"] = np.nan  # in the last chunk: the store was half-written when it failed
    e.to_csv(tmp_path / "expr.csv", index=False)
    with pytest.raises(InputError, match="row 24"):
        ingest_table(inp["labels"], out=out, expression=tmp_path / "expr.csv",
                     images=inp["images"], force=True, chunk_rows=4, show_progress=False)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    r = run_cli(args[:-2] + ["--expression", tmp_path / "expr.csv", "--force", "--allow-negative"])
    assert r.exit_code == 1 and "row 24" in r.output


def test_no_expression_given_and_unknown_config_key(inp, tmp_path):
    with pytest.raises(InputError, match="no expression given"):
        ingest_table(inp["labels"], out=tmp_path / "s.h5", images=inp["images"],
                     show_progress=False)
    (tmp_path / "c.yaml").write_text("colums: {x: a}\n")
    with pytest.raises(InputError, match="unknown config key 'colums'"):
        ingest_table(inp["labels"], out=tmp_path / "s.h5", config=tmp_path / "c.yaml")
    assert not (tmp_path / "s.h5").exists()
    assert issubclass(InputError, TabstError)
    assert os.listdir(tmp_path).count("s.h5") == 0


def test_optional_columns_absent_tissue_unknown(inp, tmp_path):
    df = inp["df"].drop(columns=["tissue", "group"])
    df.loc[3, "x"] = 0.0  # the image's edge pixel is inside
    df.to_csv(inp["labels"], index=False)
    inp["expr"].to_csv(tmp_path / "expr.csv", index=False)
    out = tmp_path / "s.h5"
    ingest_table(inp["labels"], out=out, expression=tmp_path / "expr.csv", images=inp["images"],
                 pixel_size_um=0.5, show_progress=False)
    with open_store(out) as f:
        assert set(read_strings(f["cells/tissue"])) == {"unknown"}
        assert "group" not in f["cells"] and f["images/S1"].attrs["pixel_size_um"] == 0.5
        assert f["images/S1"].attrs["mask_path"] == ""
