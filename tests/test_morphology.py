"""Interpretable features on synthetic geometry with known answers."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
from conftest import write_tiny_store

from tabst.errors import TabstError
from tabst.morphology import (
    MASK_FEATURES,
    compute_features,
    feature_layout,
    neighbourhood_features,
    nucleus_features,
    pick_label,
    stain_features,
)
from tabst.store import get_str_list

torch.set_num_threads(1)
IDX = {n: i for i, n in enumerate(MASK_FEATURES)}


def reader_for(mask):
    """A read_mask(y0, x0, h, w) over an in-memory label image, zero outside."""
    from tabst.images import _Plane

    plane = _Plane(mask, "YX")
    return lambda y0, x0, h, w: plane.read(y0, x0, h, w)[:, :, 0]


def test_disc_geometry():
    m = np.zeros((200, 200), np.int32)
    yy, xx = np.mgrid[0:200, 0:200]
    r = 10
    m[(yy - 100) ** 2 + (xx - 80) ** 2 <= r * r] = 5
    f = nucleus_features(reader_for(m), 80.4, 100.9, 32)
    assert abs(f[IDX["nucleus_area"]] - math.pi * r * r) / (math.pi * r * r) < 0.03
    assert abs(f[IDX["nucleus_perimeter"]] - 2 * math.pi * r) / (2 * math.pi * r) < 0.1
    assert f[IDX["nucleus_eccentricity"]] < 0.1
    assert f[IDX["nucleus_solidity"]] > 0.9  # digital disc vs its convex hull
    for k in ("nucleus_major_axis", "nucleus_minor_axis"):
        assert abs(f[IDX[k]] - 2 * r) < 1.0


def test_rectangle_geometry_exact():
    m = np.zeros((120, 120), np.int32)
    m[40:50, 30:60] = 7  # 10 rows x 30 columns
    f = nucleus_features(reader_for(m), 45.0, 45.0, 32)
    assert f[IDX["nucleus_area"]] == 300
    assert f[IDX["nucleus_solidity"]] == pytest.approx(1.0)
    major, minor = 4 * math.sqrt((30 ** 2 - 1) / 12), 4 * math.sqrt((10 ** 2 - 1) / 12)
    assert f[IDX["nucleus_major_axis"]] == pytest.approx(major, rel=1e-4)
    assert f[IDX["nucleus_minor_axis"]] == pytest.approx(minor, rel=1e-4)
    assert f[IDX["nucleus_eccentricity"]] == pytest.approx(math.sqrt(1 - (minor / major) ** 2),
                                                           rel=1e-4)


def test_large_nucleus_window_grows_and_neighbour_excluded():
    m = np.zeros((400, 400), np.int32)
    yy, xx = np.mgrid[0:400, 0:400]
    m[(yy - 200) ** 2 + (xx - 200) ** 2 <= 50 ** 2] = 1   # bigger than the first 64-px window
    m[(yy - 200) ** 2 + (xx - 262) ** 2 <= 8 ** 2] = 2    # a neighbour nucleus nearby
    f = nucleus_features(reader_for(m), 200, 200, 32)
    assert abs(f[IDX["nucleus_area"]] - math.pi * 2500) / (math.pi * 2500) < 0.02


def test_nearest_label_and_missing_is_nan():
    m = np.zeros((100, 100), np.int32)
    m[50:54, 60:64] = 3   # 10 px right of the centre, inside a 32-px patch
    m[50:54, 36:38] = 4   # 12 px left: farther
    assert pick_label(m, 51, 50, 32) == 3
    f = nucleus_features(reader_for(m), 50.5, 51.5, 32)
    assert f[IDX["nucleus_area"]] == 16
    f = nucleus_features(reader_for(m), 50.5, 51.5, 8)  # nothing within an 8-px patch
    assert np.isnan(f).all()
    f = nucleus_features(lambda *a: None, 5, 5, 32)  # no mask at all
    assert np.isnan(f).all() and len(f) == len(MASK_FEATURES)


def test_stain_features():
    white = np.full((8, 8, 3), 255, np.uint8)
    s = stain_features(white)
    assert np.allclose(s, 0, atol=1e-6)  # no stain in white light
    purple = np.zeros((8, 8, 3), np.uint8)
    purple[:] = (90, 40, 140)  # hematoxylin-like
    pink = np.zeros((8, 8, 3), np.uint8)
    pink[:] = (230, 120, 190)  # eosin-like
    assert stain_features(purple)[0] > stain_features(pink)[0]
    assert stain_features(purple)[1] == pytest.approx(0, abs=1e-7)  # uniform -> std 0
    half = np.zeros((8, 8, 3), np.uint8)
    half[:, 4:] = purple[:, 4:]
    box = (slice(0, 8), slice(4, 8))  # zero padding on the left excluded
    assert np.allclose(stain_features(half, box), stain_features(purple))
    assert np.isnan(stain_features(half, (slice(0, 0), slice(0, 0)))).all()


def test_neighbourhood_on_a_grid():
    gx, gy = np.meshgrid(np.arange(10) * 10.0, np.arange(10) * 10.0)
    x, y = gx.ravel(), gy.ravel()
    x2, y2 = np.concatenate([x, x]), np.concatenate([y, y])
    samples = np.array(["A"] * 100 + ["B"] * 100)
    out = neighbourhood_features(x2, y2, samples, {"A": 0.5, "B": float("nan")},
                                 radius_px=10.5, radius_um=5.25, k=4)
    centre = 55  # (x=50, y=50): 4 neighbours at 10 px; other sample's cells do not count
    assert out[centre, 0] == pytest.approx(4 / (math.pi * 10.5 ** 2) * 1e4)
    assert out[centre, 1] == pytest.approx(4 / (math.pi * 5.25 ** 2) * 1e4)  # 10.5 px = 5.25 µm
    assert out[centre, 2] == pytest.approx(10.0)          # 4th nearest at 10 px
    assert out[centre, 3] == pytest.approx(5.0)           # in µm
    assert out[0, 0] == pytest.approx(2 / (math.pi * 10.5 ** 2) * 1e4)  # corner
    assert np.isnan(out[100:, [1, 3]]).all() and np.isfinite(out[100:, [0, 2]]).all()
    lonely = neighbourhood_features([1.0, 2.0], [1.0, 2.0], ["A", "A"], {}, k=5)
    assert np.isnan(lonely[:, 2]).all()


def test_compute_features_on_store_with_masks(tmp_path):
    p = write_tiny_store(tmp_path / "s.h5", with_masks=True, with_features=False,
                         with_embedding=False, cells_per_sample=20)
    with h5py.File(p, "r+") as f:  # sample S2 has no mask; S0 gets a pixel size
        f["images/S2"].attrs["mask_path"] = ""
        f["images/S0"].attrs["pixel_size_um"] = 0.5
    assert compute_features(p, 32, batch_size=16, workers=0, show_progress=False) == "morphology"
    with h5py.File(p) as f:
        ds = f["features/morphology"]
        names, groups = get_str_list(ds, "names"), get_str_list(ds, "groups")
        X = ds[()]
        assert bool(ds.attrs["complete"]) and int(ds.attrs["rows_done"]) == 60
        sample = f["cells/sample"].asstr()[()]
    assert names == feature_layout(True, True)[0] and groups[0] == "morphology"
    assert set(groups) == {"morphology", "stain", "neighbourhood"}
    area = X[:, names.index("nucleus_area")]
    own = (np.arange(60) % 2 == 0) & (sample != "S2")
    # a radius-3 disc (29 px) unless an overlapping neighbour's disc overwrote part of it
    assert (area[own] <= 29).all() and np.median(area[own]) == 29
    assert np.isnan(X[sample == "S2"][:, :6]).all()           # no mask -> NaN, never 0
    assert np.isfinite(X[:, names.index("hematoxylin_mean")]).all()
    um = X[:, names.index("knn5_distance_um")]
    assert np.isfinite(um[sample == "S0"]).all() and np.isnan(um[sample != "S0"]).all()
    # same settings again: kept as is; other settings: refused without force
    compute_features(p, 32, batch_size=16, workers=0, show_progress=False)
    with pytest.raises(TabstError, match="other settings"):
        compute_features(p, 16, batch_size=16, workers=0, show_progress=False)
    compute_features(p, 16, batch_size=16, workers=0, show_progress=False, force=True)
    with h5py.File(p) as f:
        assert f["features/morphology"].attrs["patch_size_px"] == '{"S0": 16, "S1": 16, "S2": 16}'


def test_features_resume_identical(tmp_path):
    from tabst.embed import SimulatedInterruption

    a = write_tiny_store(tmp_path / "a.h5", with_masks=True, with_features=False,
                         with_embedding=False, cells_per_sample=20)
    b = write_tiny_store(tmp_path / "b.h5", with_masks=True, with_features=False,
                         with_embedding=False, cells_per_sample=20)
    compute_features(a, 32, batch_size=8, workers=0, show_progress=False)
    with pytest.raises(SimulatedInterruption):
        compute_features(b, 32, batch_size=8, workers=0, show_progress=False,
                         _stop_after_batches=3)
    with h5py.File(b) as f:
        ds = f["features/morphology"]
        assert int(ds.attrs["rows_done"]) == 24 and not bool(ds.attrs["complete"])
        assert np.isnan(ds[30:]).all()
    compute_features(b, 32, batch_size=8, workers=0, show_progress=False)
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert np.array_equal(fa["features/morphology"][()], fb["features/morphology"][()],
                              equal_nan=True)


def _random_nuclei(shape=(400, 400), n=60, seed=3):
    """A label image of random ellipses (some overlapping, one huge, some split labels)."""
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)
    m = np.zeros(shape, np.int32)
    for lab in range(1, n + 1):
        rr, cc = ellipse(rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(1, 14),
                         rng.uniform(0.5, 9), rotation=rng.uniform(0, math.pi), shape=shape)
        m[rr, cc] = lab
    rr, cc = ellipse(200, 200, 60, 45, shape=shape)  # larger than the 64-px first window
    m[rr, cc] = n + 1
    m[10:14, 300:303] = 7  # a second, disconnected piece of label 7
    return m


def test_regions_features_equal_regionprops_on_each_region():
    from tabst.morphology import region_features, regions_features

    m = _random_nuclei()
    stack = np.stack([m[y:y + 64, x:x + 64] == lab for lab, (y, x) in
                      enumerate([(0, 0), (50, 60), (150, 150), (300, 280), (5, 290)], start=1)]
                     + [np.zeros((64, 64), bool), np.pad(np.ones((1, 1), bool), ((30, 33),) * 2)])
    got = regions_features(stack)
    want = np.stack([region_features(r) for r in stack])
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert np.isnan(got[5]).all() and not np.isnan(got[6]).any()


def test_batch_nucleus_features_equal_the_per_cell_path():
    from tabst.morphology import batch_nucleus_features

    m = _random_nuclei()
    rng = np.random.default_rng(4)
    xs = np.r_[rng.uniform(-5, 405, 150), 200.5, 301.0, 2.0]  # + the big nucleus, label 7, edge
    ys = np.r_[rng.uniform(-5, 405, 150), 200.5, 11.5, 398.0]
    read = reader_for(m)
    for size in (8, 32):
        got = batch_nucleus_features(read, xs, ys, size)
        want = np.stack([nucleus_features(read, x, y, size) for x, y in zip(xs, ys)])
        assert np.isnan(got).any() and (~np.isnan(got)).any()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert np.isnan(batch_nucleus_features(lambda *a: None, xs[:3], ys[:3], 32)).all()
