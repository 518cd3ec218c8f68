"""Issue 13, part 7: clearer messages and input limits.

Semicolon CSVs, non-UTF-8 bytes (incl. the RecursionError past the first CSV block), legacy-ST
``n/a``, the image pixel limit (decompression bombs), TIFFs read by region, and sample names
with ``/`` or ``..``. The tiny-input writers come from test_hardening_inputs.py.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_hardening_inputs import _cli, _file_image, _hest, _labels, _st, _visium

from tabst.errors import InputError, TabstError


# ------------------------------------------------------------------------------------------
# part 7: separators, encodings, legacy-ST n/a
# ------------------------------------------------------------------------------------------
def test_semicolon_separated_csv_is_named(tmp_path):
    labels, expr, images = _labels(tmp_path)
    df = pd.read_csv(labels)
    df.to_csv(labels, sep=";", index=False, decimal=",")
    code, msg = _cli(["ingest", "table", labels, "--expression", expr, "--images", images,
                      "--out", tmp_path / "s.h5"])
    assert code == 1 and "the file looks semicolon-separated" in msg
    assert "required column missing" not in msg and "decimal" in msg
    pd.read_csv(expr).to_csv(tmp_path / "e.tsv", index=False)  # commas in a .tsv
    from tabst.ingest.common import table_columns

    with pytest.raises(InputError, match="looks comma-separated") as e:
        table_columns(tmp_path / "e.tsv")
    assert ".csv" in e.value.fix


def test_non_utf8_byte_names_the_data_row(tmp_path):
    from tabst.ingest.common import read_table, table_columns

    p = tmp_path / "t.csv"
    p.write_bytes(b"cell_id,sample,x\nc1,S1,1\nc2,S\xe92,2\nc3,S1,3\n")
    assert table_columns(p) == ["cell_id", "sample", "x"]  # the header alone is fine
    with pytest.raises(InputError, match="not valid UTF-8") as e:
        read_table(p, {"cell_id": "str", "sample": "str", "x": "float"})
    assert (e.value.row, e.value.column) == (2, "sample") and "UTF-8" in e.value.fix
    p.write_bytes(b"cell_id,s\xe9mple\nc1,S1\n")
    with pytest.raises(InputError, match="header line is not valid UTF-8"):
        table_columns(p)


def test_non_utf8_byte_after_the_first_csv_block_no_recursion(tmp_path):
    from tabst.ingest.common import CSV_STREAM_BLOCK_BYTES, iter_table_batches, read_table

    p = tmp_path / "big.csv"
    n, bad = 60_000, 55_000
    with open(p, "wb") as f:
        f.write(b"cell_id,sample,x,y\n")
        for i in range(n):
            s = b"S\xe91" if i == bad else b"S1"
            f.write(b"cell_%06d,%s,%d.25,%d.75\n" % (i, s, i % 50, i % 40))
    assert p.stat().st_size > CSV_STREAM_BLOCK_BYTES
    cols = {"cell_id": "str", "sample": "str", "x": "float"}
    for read in (lambda: read_table(p, cols), lambda: list(iter_table_batches(p, cols))):
        with pytest.raises(InputError, match="not valid UTF-8") as e:
            read()
        assert (e.value.row, e.value.column) == (bad + 1, "sample")
    # a bad number late in a big file still names its row (no recursion either)
    q = tmp_path / "num.csv"
    q.write_bytes(p.read_bytes().replace(b"S\xe91", b"S1").replace(b"cell_058000,S1,0.25",
                                                                  b"cell_058000,S1,zz"))
    with pytest.raises(InputError, match="'zz' is not a number") as e:
        read_table(q, cols)
    assert e.value.row == 58_001


def test_non_utf8_in_st_counts_and_st_na_values_name_the_fix(tmp_path):
    from tabst.ingest.st import ingest_st

    c, a, i = _st(tmp_path, {(5, 1): "n/a"})
    with pytest.raises(InputError, match="missing count 'n/a'") as e:
        ingest_st([(c, a, i, "A")], tmp_path / "x.h5", show_progress=False)
    assert (e.value.row, e.value.column) == (6, "Gb")
    assert "replace every 'n/a' by 0" in e.value.fix
    c.write_bytes(c.read_bytes().replace(b"n/a", b"\xe9"))
    code, msg = _cli(["ingest", "st", c, a, i, "--out", tmp_path / "x.h5"])
    assert code == 1 and "row 6" in msg and "not valid UTF-8" in msg and "Traceback" not in msg


# ------------------------------------------------------------------------------------------
# part 7: pixel limit (decompression bombs)
# ------------------------------------------------------------------------------------------
def _png_header(path: Path, w: int, h: int) -> Path:
    """A PNG whose header claims w x h pixels (no real pixel data)."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [50_000, 100_000])  # over the limit; over twice the limit
def test_image_header_beyond_the_pixel_limit_is_refused(tmp_path, side):
    from tabst.image_files import DEFAULT_MAX_IMAGE_PIXELS
    from tabst.ingest.common import check_image_size

    assert DEFAULT_MAX_IMAGE_PIXELS >= 40_000 * 40_000
    old = Image.MAX_IMAGE_PIXELS
    p = _png_header(tmp_path / "bomb.png", side, side)
    with pytest.raises(InputError, match="limit") as e:
        check_image_size(p)
    assert "TABST_MAX_IMAGE_PIXELS" in e.value.fix
    with pytest.raises(InputError, match="limit"):
        _file_image(p, side, side)
    assert Image.MAX_IMAGE_PIXELS == old  # Pillow's own guard is left as it was


def test_pixel_limit_env_var_and_ingest_message(tmp_path, monkeypatch):
    import tifffile

    from tabst.image_files import max_image_pixels
    from tabst.ingest.common import check_image_size

    labels, expr, images = _labels(tmp_path)  # 40 x 60 = 2400 px
    monkeypatch.setenv("TABST_MAX_IMAGE_PIXELS", "2000")
    code, msg = _cli(["ingest", "table", labels, "--expression", expr, "--images", images,
                      "--out", tmp_path / "s.h5"])
    assert code == 1 and "60 x 40 = 2,400 pixels, more than the limit of 2,000" in msg
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((40, 60, 3), np.uint8), tile=(16, 16))
    with pytest.raises(InputError, match="limit"):
        check_image_size(tmp_path / "t.tif")
    monkeypatch.setenv("TABST_MAX_IMAGE_PIXELS", "none")
    assert max_image_pixels() is None and check_image_size(tmp_path / "t.tif").width == 60
    monkeypatch.setenv("TABST_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(TabstError, match="TABST_MAX_IMAGE_PIXELS"):
        max_image_pixels()


def test_tiff_read_by_region_is_never_decoded_whole(tmp_path, monkeypatch):
    import tifffile

    img = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "t.tif", img, tile=(16, 16), photometric="rgb")

    def whole(*a, **k):
        raise AssertionError("decoded the whole image")
    monkeypatch.setattr(tifffile.TiffFile, "asarray", whole)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", whole)
    monkeypatch.setattr(Image.Image, "load", whole)
    r = _file_image(tmp_path / "t.tif", 64, 64)
    try:
        np.testing.assert_array_equal(r.read_region(10, 20, 16, 16), img[10:26, 20:36])
    finally:
        r.close()


# ------------------------------------------------------------------------------------------
# part 7: sample names
# ------------------------------------------------------------------------------------------
def test_sample_name_check_and_image_group_guard(tmp_path):
    from tabst.ingest.checks import check_sample_name
    from tabst.ingest.common import write_image_group

    for ok in ("S1", "slide.A-2_x", "a.b"):
        assert check_sample_name(ok) == ok
    for bad in ("a/b", "..", "../x", "a\\b", "", "x\x00"):
        with pytest.raises(InputError, match="sample name"):
            check_sample_name(bad)
    with h5py.File(tmp_path / "f.h5", "w") as f, pytest.raises(InputError, match="'/'"):
        write_image_group(f, "a/b", store_dir=tmp_path, kind="file", path=tmp_path / "x.png")


def test_sample_names_with_slash_or_dotdot_refused_by_every_reader(tmp_path):
    from tabst.ingest.hest import ingest_hest
    from tabst.ingest.table import ingest_table

    labels, expr, images = _labels(tmp_path, sample="../S1")
    with pytest.raises(InputError, match="contains '..'") as e:
        ingest_table(labels, out=tmp_path / "s.h5", expression=expr, images=images,
                     show_progress=False)
    assert (e.value.row, e.value.column) == (1, "sample")
    code, msg = _cli(["ingest", "visium", _visium(tmp_path / "v"), "--sample", "a/b",
                      "--out", tmp_path / "v.h5"])
    assert code == 1 and "sample name 'a/b' contains '/'" in msg
    c, a, i = _st(tmp_path)
    code, msg = _cli(["ingest", "st", "--section", f"{c},{a},{i},x/../y", "--out",
                      tmp_path / "st.h5"])
    assert code == 1 and "sample name 'x/../y'" in msg
    root = _hest(tmp_path / "h")
    with pytest.raises(InputError, match="HEST id '../h/H1' contains"):
        ingest_hest(root, tmp_path / "h.h5", ids=["../h/H1"], show_progress=False)
    assert not list(tmp_path.glob("*.h5"))
