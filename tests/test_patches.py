"""Patch extraction: the centre convention, edge padding, TIFF region reads, per-cell patches."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from tabst.errors import InputError, StoreError, TabstError
from tabst.images import FileImage, open_sample_image, register_reader, to_uint8_rgb
from tabst.patches import (
    crop_patch,
    fit_patch,
    parse_patch_size,
    patch_origin,
    resize_patch,
    sample_patch_sizes,
)

H, W = 50, 70


def coord_image():
    """R = row, G = column, B = 7: every pixel says where it is."""
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[..., 0] = np.arange(H)[:, None]
    img[..., 1] = np.arange(W)[None, :]
    img[..., 2] = 7
    return img


def attrs_for(path, **kw):
    a = dict(kind="file", path=path.name, mask_path="", height=H, width=W, channels=3,
             pixel_size_um=float("nan"), spot_diameter_px=float("nan"))
    a.update(kw)
    return a


@pytest.fixture
def png_reader(tmp_path):
    p = tmp_path / "img.png"
    Image.fromarray(coord_image()).save(p)
    return open_sample_image(tmp_path / "store.h5", attrs_for(p), "S")


def test_centre_convention_even_and_odd():
    # the pixel containing (x, y) is (floor(y), floor(x)); it sits at index P//2 of the patch
    assert tuple(map(int, patch_origin(20.9, 10.2, 4))) == (8, 18)
    assert tuple(map(int, patch_origin(20.0, 10.0, 5))) == (8, 18)
    assert tuple(map(int, patch_origin(20.0, 10.0, 32))) == (-6, 4)
    y0, x0 = patch_origin(np.array([0.5, 3.99]), np.array([1.0, 2.0]), 2)
    assert y0.tolist() == [0, 1] and x0.tolist() == [-1, 2]


@pytest.mark.parametrize("size", [4, 5, 32])
def test_crop_known_pixels(png_reader, size):
    x, y = 30.7, 20.2
    patch, box = crop_patch(png_reader, x, y, size)
    assert patch.shape == (size, size, 3) and patch.dtype == np.uint8
    c = size // 2
    assert patch[c, c].tolist() == [20, 30, 7]           # centre pixel = the pixel holding (x, y)
    assert patch[0, 0].tolist() == [20 - c, 30 - c, 7]   # top-left
    last = size - 1 - c
    assert patch[-1, -1].tolist() == [20 + last, 30 + last, 7]
    assert box == (slice(0, size), slice(0, size))


def test_crop_zero_padding_at_edges(png_reader):
    patch, box = crop_patch(png_reader, 0.5, 1.2, 8)  # centre pixel (1, 0); rows -3..4, cols -4..3
    assert box == (slice(3, 8), slice(4, 8))
    assert (patch[:3] == 0).all() and (patch[:, :4] == 0).all()
    assert np.array_equal(patch[3:, 4:], coord_image()[0:5, 0:4])
    patch, box = crop_patch(png_reader, W - 0.5, H - 0.5, 6)  # bottom-right corner pixel
    assert patch[3, 3].tolist() == [H - 1, W - 1, 7]
    assert (patch[4:] == 0).all() and (patch[:, 4:] == 0).all()
    assert box == (slice(0, 4), slice(0, 4))
    far, box = crop_patch(png_reader, -100, -100, 8)
    assert (far == 0).all() and box[0].stop - box[0].start == 0


@pytest.mark.parametrize("layout", ["tiled", "planar", "ome-pyramid"])
def test_tiff_region_reads_match_png(tmp_path, png_reader, layout):
    img = coord_image()
    p = tmp_path / ("img.ome.tif" if layout == "ome-pyramid" else "img.tif")
    if layout == "tiled":
        tifffile.imwrite(p, img, tile=(16, 16), photometric="rgb")
    elif layout == "planar":
        tifffile.imwrite(p, np.moveaxis(img, -1, 0), photometric="rgb", planarconfig="separate")
    else:
        with tifffile.TiffWriter(p, ome=True) as tw:
            tw.write(img, tile=(16, 16), photometric="rgb", subifds=1)
            tw.write(img[::2, ::2], tile=(16, 16), photometric="rgb", subfiletype=1)
    r = open_sample_image(tmp_path / "store.h5", attrs_for(p), "S")
    assert not isinstance(r._img.arr, np.ndarray)  # read lazily by region, not decoded whole
    assert (r.height, r.width) == (H, W)
    for x, y, s in [(30.7, 20.2, 8), (0.5, 1.2, 8), (W - 0.5, H - 0.5, 6), (10, 10, 32)]:
        a, _ = crop_patch(r, x, y, s)
        b, _ = crop_patch(png_reader, x, y, s)
        assert np.array_equal(a, b)
    r.close()


def test_grey_and_16bit_images_become_uint8_rgb(tmp_path):
    g = (np.arange(H * W) % 256).astype(np.uint8).reshape(H, W)
    Image.fromarray(g).save(tmp_path / "g.png")
    r = open_sample_image(tmp_path / "s.h5", attrs_for(tmp_path / "g.png"), "S")
    reg = r.read_region(0, 0, 2, 2)
    assert reg.shape == (2, 2, 3) and (reg[..., 0] == reg[..., 2]).all()
    assert to_uint8_rgb(np.array([[0, 65535]], dtype=np.uint16)).tolist() == [[[0] * 3, [255] * 3]]
    assert to_uint8_rgb(np.array([[0.0, 1.0]])).tolist() == [[[0] * 3, [255] * 3]]


def test_mask_region_and_missing_files(tmp_path, png_reader):
    lab = np.zeros((H, W), dtype=np.uint16)
    lab[10:20, 30:40] = 300
    tifffile.imwrite(tmp_path / "m.tif", lab)
    Image.fromarray(coord_image()).save(tmp_path / "img2.png")
    r = open_sample_image(tmp_path / "s.h5", attrs_for(tmp_path / "img2.png", mask_path="m.tif"))
    assert r.has_mask
    m = r.read_mask_region(8, 28, 4, 4)
    assert m[2:, 2:].tolist() == [[300, 300], [300, 300]] and m[:2].sum() == 0
    assert png_reader.read_mask_region(0, 0, 4, 4) is None
    with pytest.raises(InputError, match="does not exist"):
        open_sample_image(tmp_path / "s.h5", attrs_for(tmp_path / "nope.png"))
    with pytest.raises(InputError, match="recorded"):
        open_sample_image(tmp_path / "s.h5", attrs_for(tmp_path / "img2.png", height=10))
    with pytest.raises(StoreError, match="not known"):
        open_sample_image(tmp_path / "s.h5", {"kind": "hologram"})


def test_fit_patch_per_cell(tmp_path):
    big = np.zeros((9, 7, 3), dtype=np.uint8)
    big[4, 3] = 255  # centre pixel (h//2, w//2)
    out, box = fit_patch(big, 4, "crop")
    assert out.shape == (4, 4, 3) and out[2, 2].tolist() == [255] * 3
    small, box = fit_patch(big, 12, "crop")  # padded: centre still at 12//2
    assert small.shape == (12, 12, 3) and small[6, 6].tolist() == [255] * 3
    assert box == (slice(2, 11), slice(3, 10))
    rs, _ = fit_patch(np.full((40, 60, 3), 9, np.uint8), 20, "resize")
    assert rs.shape == (20, 20, 3) and (rs == 9).all()
    assert resize_patch(np.zeros((8, 8, 3), np.uint8), 16).shape == (16, 16, 3)


def test_per_cell_reader_and_plugin_registry(tmp_path):
    p = tmp_path / "cells" / "c0.png"
    p.parent.mkdir()
    Image.fromarray(np.full((6, 6, 3), 42, np.uint8)).save(p)
    r = open_sample_image(tmp_path / "s.h5", {"kind": "per-cell", "path": ""}, "S")
    assert r.patch_based and r.row_fields == ("image",)
    assert (r.read_patch(0, {"image": "cells/c0.png"}) == 42).all()
    with pytest.raises(InputError, match="row 4"):
        r.read_patch(3, {"image": "cells/missing.png"})
    register_reader("test-kind", "tabst.images:FileImage")
    Image.fromarray(coord_image()).save(tmp_path / "img.png")
    assert isinstance(open_sample_image(tmp_path / "s.h5", attrs_for(tmp_path / "img.png",
                                                                   kind="test-kind")), FileImage)


def test_patch_size_parsing():
    assert parse_patch_size("32") == 32 and parse_patch_size("SPOT") == "spot"
    with pytest.raises(TabstError):
        parse_patch_size("big")
    with pytest.raises(TabstError):
        parse_patch_size(0)
    sizes = sample_patch_sizes("spot", {"A": {"spot_diameter_px": 187.6},
                                        "B": {"spot_diameter_px": 55}})
    assert sizes == {"A": 188, "B": 55}
    with pytest.raises(TabstError, match="spot diameter"):
        sample_patch_sizes("spot", {"A": {"spot_diameter_px": float("nan")}})
    assert sample_patch_sizes(16, {"A": {}}) == {"A": 16}


def test_tiff_tiles_are_decoded_once_for_neighbouring_windows(tmp_path, png_reader):
    """The chunk cache: 40 overlapping windows inside one 16 px tile row read 3 tiles once
    each, and give the same pixels as the decoded PNG."""
    p = tmp_path / "img.tif"
    tifffile.imwrite(p, coord_image(), tile=(16, 16), photometric="rgb")
    r = open_sample_image(tmp_path / "store.h5", attrs_for(p), "S")
    cache = r._img._cache if r._img is not None else None
    if cache is None:
        r.read_region(0, 0, 1, 1)
        cache = r._img._cache
    reads = []
    arr = cache.arr

    class Counting:
        shape, chunks, dtype = arr.shape, arr.chunks, arr.dtype

        def __getitem__(self, key):
            reads.append(key)
            return arr[key]
    cache.arr = Counting()
    cache._cache.clear()
    for i in range(40):
        a, _ = crop_patch(r, 4.5 + i * 0.7, 8.0, 6)
        b, _ = crop_patch(png_reader, 4.5 + i * 0.7, 8.0, 6)
        assert np.array_equal(a, b)
    assert len(reads) == len(set(map(repr, reads))) == 3
    r.close()
