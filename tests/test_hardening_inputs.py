"""Issue 13, part 3: bad values never reach a store silently (exit 0).

One test (or a few) per class of problem: CMYK/palette TIFF colours, NaN/inf/negative counts
and NaN coordinates in every reader (one shared check), config value types, Visium/HEST
metadata values. Part 7 (messages and input limits) is in test_hardening_messages.py, which
reuses the tiny-input writers below.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image
from typer.testing import CliRunner

from tabst.errors import InputError


def _app():
    from tabst_cli.app import app

    return app


def _cli(args):
    r = CliRunner().invoke(_app(), [str(a) for a in args])
    msg = " ".join(r.output.split())
    return r.exit_code, msg


# ------------------------------------------------------------------------------------------
# tiny inputs in each platform's layout
# ------------------------------------------------------------------------------------------
GENES = ["Ga", "Gb", "Gc"]


def _labels(root: Path, n: int = 6, sample: str = "S1", size=(40, 60)):
    """labels.csv + expr.csv + images/<sample>.png for ``ingest table``."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(exist_ok=True)
    h, w = size
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
        root / "images" / "S1.png")
    df = pd.DataFrame({"cell_id": [f"c{i}" for i in range(n)], "sample": sample,
                       "x": np.linspace(1, w - 2, n), "y": np.linspace(1, h - 2, n)})
    e = pd.DataFrame(rng.gamma(2.0, 1.0, (n, len(GENES))), columns=GENES)
    e.insert(0, "cell_id", df["cell_id"])
    df.to_csv(root / "labels.csv", index=False)
    e.to_csv(root / "expr.csv", index=False)
    return root / "labels.csv", root / "expr.csv", root / "images"


def _visium(root: Path, counts=None, *, positions=None, scalefactors=None) -> Path:
    """A Space Ranger outs/ folder: 4 spots x 3 genes, positions, scale factors, lowres image."""
    import scipy.io as sio

    outs = root / "outs"
    (outs / "filtered_feature_bc_matrix").mkdir(parents=True)
    (outs / "spatial").mkdir()
    counts = np.arange(12, dtype=np.float64).reshape(4, 3) + 1 if counts is None else counts
    barcodes = [f"AAAC{i}-1" for i in range(4)]
    sio.mmwrite(str(outs / "filtered_feature_bc_matrix" / "matrix.mtx"), sp.coo_matrix(counts.T))
    (outs / "filtered_feature_bc_matrix" / "features.tsv").write_text(
        "".join(f"ENSG{j}\t{g}\tGene Expression\n" for j, g in enumerate(GENES)))
    (outs / "filtered_feature_bc_matrix" / "barcodes.tsv").write_text("\n".join(barcodes) + "\n")
    if positions is None:
        positions = ("barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\n"
                     + "".join(f"{b},1,{i},{2 * i},{100 + 10 * i},{120 + 10 * i}\n"
                               for i, b in enumerate(barcodes)))
    (outs / "spatial" / "tissue_positions.csv").write_text(positions)
    sf = {"spot_diameter_fullres": 50.0, "tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1}
    sf.update(scalefactors or {})
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
    Image.fromarray(np.full((60, 60, 3), 200, np.uint8)).save(
        outs / "spatial" / "tissue_lowres_image.png")
    return outs


def _st(root: Path, cells=None, *, align_cell=None):
    """A legacy-ST section: counts TSV (spots x genes), alignment table, image."""
    spots = [(x, y) for x in range(1, 7) for y in range(1, 7) if (x + y) % 2 == 0]
    rows = [[f"{x}x{y}"] + [str((x * y + j) % 5) for j in range(len(GENES))] for x, y in spots]
    for (r, c), v in (cells or {}).items():
        rows[r][c + 1] = v
    counts = root / "st.tsv"
    counts.write_text("\t" + "\t".join(GENES) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    al = [[str(x), str(y), str(x), str(y), str(20 * x), str(20 * y), "1"] for x, y in spots]
    if align_cell is not None:
        (r, c), v = align_cell
        al[r][c] = v
    align = root / "align.tsv"
    align.write_text("x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n"
                     + "".join("\t".join(a) + "\n" for a in al))
    Image.fromarray(np.full((200, 200, 3), 200, np.uint8)).save(root / "st.png")
    return counts, align, root / "st.png"


def _hest(root: Path, sid="H1", *, X=None, spatial=None, meta=None, patch_attrs=None):
    """One HEST-1k sample: st/<id>.h5ad, patches/<id>.h5, metadata/<id>.json."""
    import anndata

    for d in ("st", "patches", "metadata"):
        (root / d).mkdir(parents=True, exist_ok=True)
    n = 5
    bcs = [f"B{i}" for i in range(n)]
    X = np.arange(n * 3, dtype=np.float32).reshape(n, 3) if X is None else X
    ad = anndata.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame(index=bcs),
                         var=pd.DataFrame(index=GENES))
    ad.obsm["spatial"] = (np.column_stack([100 + 10 * np.arange(n), 200 + 10 * np.arange(n)])
                          .astype(np.float64) if spatial is None else spatial)
    ad.write_h5ad(root / "st" / f"{sid}.h5ad")
    with h5py.File(root / "patches" / f"{sid}.h5", "w") as f:
        img = f.create_dataset("img", data=np.zeros((n, 8, 8, 3), np.uint8))
        for k, v in (patch_attrs or {}).items():
            img.attrs[k] = v
        f["barcode"] = np.array(bcs, dtype="S").reshape(-1, 1)
    (root / "metadata" / f"{sid}.json").write_text(json.dumps(
        meta if meta is not None else {"pixel_size_um_estimated": 0.25, "spot_diameter": 55.0}))
    return root


# ------------------------------------------------------------------------------------------
# part 3: CMYK / palette TIFF colours
# ------------------------------------------------------------------------------------------
def _file_image(path: Path, h: int, w: int):
    from tabst.images import FileImage

    return FileImage(path.parent / "store.h5", "S", {"path": str(path), "height": h, "width": w})


def test_cmyk_tiff_is_converted_like_pillow_not_truncated(tmp_path):
    import tifffile

    from tabst.images import PerCellImages
    from tabst.ingest.common import check_image_size

    rng = np.random.default_rng(3)
    cmyk = rng.integers(0, 256, (32, 48, 4), dtype=np.uint8)
    cmyk[:, :, 3] = rng.integers(60, 256, (32, 48))  # plenty of K: dropping it changes RGB
    want = np.asarray(Image.fromarray(cmyk, mode="CMYK").convert("RGB"))
    for name, kw in (("strips.tif", {}), ("tiled.tif", {"tile": (16, 16)})):
        p = tmp_path / name
        tifffile.imwrite(p, cmyk, photometric="separated", **kw)
        assert check_image_size(p).height == 32
        r = _file_image(p, 32, 48)
        try:
            np.testing.assert_array_equal(r.read_region(0, 0, 32, 48), want)
            np.testing.assert_array_equal(r.read_region(5, 7, 8, 9), want[5:13, 7:16])
        finally:
            r.close()
        assert np.abs(want.astype(int) - cmyk[:, :, :3]).max() > 50  # K matters here
    # a per-cell CMYK patch (read through Pillow) is converted the same way
    pc = PerCellImages(tmp_path / "store.h5", "S", {"path": str(tmp_path)})
    np.testing.assert_array_equal(pc.read_patch(0, {"image": "strips.tif"}), want)


def test_palette_and_miniswhite_tiff_read_as_pillow_shows_them(tmp_path):
    import tifffile

    rng = np.random.default_rng(4)
    idx = rng.integers(0, 4, (10, 12), dtype=np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :4] = np.array([[0, 65535, 0, 30000], [0, 0, 65535, 30000], [65535, 0, 0, 30000]])
    tifffile.imwrite(tmp_path / "pal.tif", idx, photometric="palette", colormap=cmap)
    r = _file_image(tmp_path / "pal.tif", 10, 12)
    np.testing.assert_array_equal(r.read_region(0, 0, 10, 12),
                                  np.asarray(Image.open(tmp_path / "pal.tif").convert("RGB")))
    grey = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "mw.tif", grey, photometric="miniswhite")
    r = _file_image(tmp_path / "mw.tif", 10, 12)
    np.testing.assert_array_equal(r.read_region(0, 0, 10, 12)[:, :, 0], 255 - grey)


def test_unsupported_tiff_colour_space_is_refused_at_ingest(tmp_path):
    import tifffile

    from tabst.ingest.common import check_image_size

    tifffile.imwrite(tmp_path / "lab.tif", np.zeros((8, 8, 3), np.uint8), photometric="cielab")
    with pytest.raises(InputError, match="CIELAB colour space") as e:
        check_image_size(tmp_path / "lab.tif")
    assert "RGB" in e.value.fix


# ------------------------------------------------------------------------------------------
# part 3: NaN / inf / negative values -- one shared check, every reader
# ------------------------------------------------------------------------------------------
def test_shared_expression_check_dense_sparse_rows_ids():
    from tabst.ingest.checks import check_expression_block

    a = np.ones((4, 3), np.float32)
    check_expression_block(a, file="f.csv", row_offset=10, genes=GENES)  # fine
    a[2, 1] = np.nan
    with pytest.raises(InputError) as e:
        check_expression_block(a, file="f.csv", row_offset=10, genes=GENES, row_ids=list("abcd"))
    assert (e.value.row, e.value.column) == (13, "Gb") and "'c'" in str(e.value)
    m = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 0], [0, 0, -2.0]]))
    with pytest.raises(InputError, match="negative count -2") as e:
        check_expression_block(m, file="f", row_offset=0, genes=GENES, rows=[5, 6, 9])
    assert (e.value.row, e.value.column) == (9, "Gc")
    check_expression_block(m, file="f", row_offset=0, genes=GENES, allow_negative=True)
    m.data[0] = np.inf
    with pytest.raises(InputError, match="infinite") as e:
        check_expression_block(m, file="f", row_offset=None, genes=GENES, allow_negative=True)
    assert e.value.row is None and e.value.column == "Gb"


def test_visium_nan_inf_counts_and_nan_positions_are_refused(tmp_path):
    from tabst.ingest.visium import ingest_visium

    for k, (bad, match) in enumerate(((np.nan, "NaN"), (np.inf, "infinite"), (-3.0, "negative"))):
        c = np.arange(12, dtype=np.float64).reshape(4, 3) + 1
        c[2, 1] = bad
        outs = _visium(tmp_path / f"v{k}", c)
        with pytest.raises(InputError, match=match) as e:
            ingest_visium([outs], tmp_path / f"v{k}.h5", show_progress=False)
        assert "filtered_feature_bc_matrix" in str(e.value) and e.value.column == "Gb"
        assert "AAAC2-1" in str(e.value)
        assert not (tmp_path / f"v{k}.h5").exists()
    pos = ("barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\n"
           "AAAC0-1,1,0,0,100,120\nAAAC1-1,1,1,2,,130\nAAAC2-1,1,2,4,120,inf\n"
           "AAAC3-1,1,3,6,130,150\n")
    with pytest.raises(InputError, match="missing") as e:
        ingest_visium([_visium(tmp_path / "p", positions=pos)], tmp_path / "p.h5",
                      show_progress=False)
    assert (e.value.row, e.value.column) == (2, "pxl_row_in_fullres")


def test_hest_nan_counts_and_nan_spot_coordinates_are_refused(tmp_path):
    from tabst.ingest.hest import ingest_hest

    X = np.ones((5, 3), np.float32)
    X[3, 0] = np.nan
    with pytest.raises(InputError, match="count is missing or NaN") as e:
        ingest_hest(_hest(tmp_path / "a", X=X), tmp_path / "a.h5", show_progress=False)
    assert (e.value.row, e.value.column) == (4, "Ga") and "barcode 'B3'" in str(e.value)
    X[3, 0] = np.inf
    with pytest.raises(InputError, match="infinite"):
        ingest_hest(_hest(tmp_path / "b", X=X), tmp_path / "b.h5", show_progress=False)
    xy = np.column_stack([np.arange(5.0), np.arange(5.0)])
    xy[1, 1] = np.nan
    with pytest.raises(InputError, match="spot centre is missing") as e:
        ingest_hest(_hest(tmp_path / "c", spatial=xy), tmp_path / "c.h5", show_progress=False)
    assert e.value.row == 2 and "obsm['spatial'][:, 1]" in str(e.value)
    assert not list(tmp_path.glob("*.h5"))


def test_st_inf_and_negative_counts_and_nan_pixel_positions_are_refused(tmp_path):
    from tabst.ingest.st import ingest_st

    for k, (tok, match) in enumerate((("inf", "infinite"), ("-2", "negative count -2"))):
        d = tmp_path / f"s{k}"
        d.mkdir()
        with pytest.raises(InputError, match=match) as e:
            ingest_st([(*_st(d, {(3, 2): tok}), "A")], d / "x.h5", show_progress=False)
        assert (e.value.row, e.value.column) == (4, "Gc")
    d = tmp_path / "al"
    d.mkdir()
    with pytest.raises(InputError, match="missing") as e:
        ingest_st([(*_st(d, align_cell=((2, 4), "")), "A")], d / "x.h5", show_progress=False)
    assert (e.value.row, e.value.column) == (3, "pixel_x") and "align.tsv" in str(e.value)


def test_spot_section_guard_catches_any_reader():
    from tabst.ingest.spots import SpotSection

    kw = dict(sample="S", spot_ids=["a", "b"], genes=GENES, image={})
    with pytest.raises(InputError, match="spot 'b'"):
        SpotSection(x=[1, 2], y=[1, 2], counts=sp.csr_matrix([[1, 0, 0], [0, np.nan, 0]]), **kw)
    with pytest.raises(InputError, match="spot centre is missing"):
        SpotSection(x=[1, np.nan], y=[1, 2], counts=sp.csr_matrix(np.ones((2, 3))), **kw)


def test_table_nan_coordinate_and_h5ad_nan_go_through_the_same_check(tmp_path):
    import anndata

    from tabst.ingest.table import ingest_table

    labels, expr, images = _labels(tmp_path)
    df = pd.read_csv(labels)
    df.loc[2, "y"] = np.inf
    df.to_csv(tmp_path / "lab_inf.csv", index=False)
    with pytest.raises(InputError, match="centroid is infinite") as e:
        ingest_table(tmp_path / "lab_inf.csv", out=tmp_path / "s.h5", expression=expr,
                     images=images, show_progress=False)
    assert (e.value.row, e.value.column) == (3, "y")
    e_ = pd.read_csv(expr)
    X = e_[GENES].to_numpy(np.float32)
    X[4, 2] = np.nan
    anndata.AnnData(X=X, obs=pd.DataFrame(index=e_["cell_id"].astype(str).to_numpy()),
                    var=pd.DataFrame(index=GENES)).write_h5ad(tmp_path / "e.h5ad")
    with pytest.raises(InputError, match="expression value is missing or NaN") as e:
        ingest_table(labels, out=tmp_path / "s.h5", expression=tmp_path / "e.h5ad",
                     images=images, show_progress=False)
    assert (e.value.row, e.value.column) == (5, "Gc") and "'c4'" in str(e.value)
    assert not (tmp_path / "s.h5").exists()


# ------------------------------------------------------------------------------------------
# part 3: config value types; Visium / HEST metadata values
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("line, key", [("allow_negative: 'no'", "allow_negative"),
                                       ("allow_negative: 1", "allow_negative"),
                                       ("pixel_size_um: abc", "pixel_size_um"),
                                       ("pixel_size_um: -1", "pixel_size_um"),
                                       ("genes: 12", "genes"),
                                       ("columns: {x: 5}", "columns"),
                                       ("images: [a, b]", "images")])
def test_config_values_must_have_their_type(tmp_path, line, key):
    labels, expr, images = _labels(tmp_path)
    (tmp_path / "c.yaml").write_text(line + "\n")
    code, msg = _cli(["ingest", "table", labels, "--expression", expr, "--images", images,
                      "--out", tmp_path / "s.h5", "--config", tmp_path / "c.yaml"])
    assert code == 1 and "Traceback" not in msg
    assert f"config key '{key}' must be" in msg and "c.yaml" in msg and "fix:" in msg
    assert not (tmp_path / "s.h5").exists()


def test_config_real_booleans_still_work(tmp_path):
    from tabst.ingest.table import ingest_table

    labels, expr, images = _labels(tmp_path)
    e = pd.read_csv(expr)
    e.loc[1, "Ga"] = -1.0
    e.to_csv(expr, index=False)
    (tmp_path / "c.yaml").write_text("allow_negative: true\npixel_size_um: 0.5\n")
    ingest_table(labels, out=tmp_path / "s.h5", expression=expr, images=images,
                 config=tmp_path / "c.yaml", show_progress=False)
    (tmp_path / "c.yaml").write_text("allow_negative: false\n")
    with pytest.raises(InputError, match="negative"):
        ingest_table(labels, out=tmp_path / "t.h5", expression=expr, images=images,
                     config=tmp_path / "c.yaml", show_progress=False)


def test_visium_text_scalefactor_and_empty_positions(tmp_path):
    from tabst.ingest.visium import ingest_visium

    outs = _visium(tmp_path / "a", scalefactors={"tissue_lowres_scalef": "0.1"})
    with pytest.raises(InputError, match="'tissue_lowres_scalef' is '0.1', not a positive number"):
        ingest_visium([outs], tmp_path / "a.h5", show_progress=False)
    outs = _visium(tmp_path / "b", scalefactors={"spot_diameter_fullres": "big"})
    with pytest.raises(InputError, match="spot_diameter_fullres"):
        ingest_visium([outs], tmp_path / "b.h5", show_progress=False)
    outs = _visium(tmp_path / "c", positions="")
    code, msg = _cli(["ingest", "visium", outs, "--out", tmp_path / "c.h5"])
    assert code == 1 and "tissue_positions.csv: the file is empty" in msg
    assert "Traceback" not in msg
    outs = _visium(tmp_path / "d", positions=",".join(
        ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
         "pxl_col_in_fullres"]) + "\n")
    with pytest.raises(InputError, match="no spots"):
        ingest_visium([outs], tmp_path / "d.h5", show_progress=False)


def test_hest_one_column_spatial_and_text_pixel_sizes(tmp_path):
    from tabst.ingest.hest import ingest_hest

    with pytest.raises(InputError, match=r"obsm\['spatial'\] has shape \(5, 1\)"):
        ingest_hest(_hest(tmp_path / "a", spatial=np.zeros((5, 1))), tmp_path / "a.h5",
                    show_progress=False)
    root = _hest(tmp_path / "b", meta={"pixel_size_um_estimated": "0.25 um"})
    code, msg = _cli(["ingest", "hest", root, "--out", tmp_path / "b.h5"])
    assert code == 1 and "pixel_size_um_estimated" in msg and "not a positive number" in msg
    assert "Traceback" not in msg
    root = _hest(tmp_path / "c", patch_attrs={"pixel_size": "half"})
    with pytest.raises(InputError, match="pixel size attr is 'half'"):
        ingest_hest(root, tmp_path / "c.h5", show_progress=False)
    root = _hest(tmp_path / "d", patch_attrs={"pixel_size": 0.5})  # a number is fine
    assert ingest_hest(root, tmp_path / "d.h5", show_progress=False)["n_spots"] == 5
