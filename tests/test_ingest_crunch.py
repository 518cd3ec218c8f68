"""`tabst ingest crunch`: Crunch 1 SpatialData zarr fixtures written with the real libraries."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

pytest.importorskip("spatialdata")

from tabst.errors import InputError, TabstError
from tabst.ingest.crunch import (
    EXPRESSION_TRANSFORM,
    ZarrSampleImage,
    ingest_crunch,
    label_centroids,
)
from tabst.store import cells_frame, open_store, read_strings

SIZE = 2000
TILE = 256
GENES = [f"G{i:02d}" for i in range(20)]


def _draw_mask(rng, size=SIZE, n=300):
    """Random discs with random (non-sequential, large) ids, plus nuclei placed on purpose on
    tile corners / borders, on the image borders, and one label in two separate pieces."""
    from skimage.draw import disk

    mask = np.zeros((size, size), dtype=np.uint32)
    ids = rng.choice(np.arange(1, 1_000_000), size=n + 20, replace=False)
    centres = [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(n)]
    corners = ((1, 1), (2, 3), (4, 4), (5, 2), (7, 6))
    centres += [(TILE * k, TILE * m) for k, m in corners]            # on tile corners
    centres += [(TILE * 3 + 0.5, 100), (900, TILE * 2 - 0.5)]        # on tile edges
    centres += [(0, 0), (0, 1000), (size - 1, 1500), (700, 0), (1300, size - 1),
                (size - 1, size - 1)]                                                      # borders
    for i, (r, c) in enumerate(centres):
        rr, cc = disk((r, c), rng.uniform(5, 15), shape=mask.shape)
        mask[rr, cc] = ids[i]
    split_id = ids[len(centres)]  # one label in two pieces, in different tiles
    for r, c in ((300, 1700), (1750, 200)):
        rr, cc = disk((r, c), 6, shape=mask.shape)
        mask[rr, cc] = split_id
    return mask


def _regions_image(size: int) -> np.ndarray:
    """Region mask in the H&E grid: four quadrants with values 1..4 (like ``group_HEspace``)."""
    half = size // 2
    yy, xx = np.mgrid[0:size, 0:size]
    return (1 + (yy >= half) * 2 + (xx >= half)).astype(np.uint8)


def write_crunch_zarr(path, *, seed=0, size=SIZE, n=300, drop_tables=(), image=None,
                      zarr_v2=False, mask_as="image", region_column=True, ghosts=True):
    """A sample zarr in the Crunch 1 challenge's layout. Returns the numpy sources and the truth.

    As the challenge ships it (DESIGN.md "Real input layouts"): every raster is an **Image**
    element -- ``HE_original`` (3, y, x) uint8, the nucleus mask ``HE_nuc_original`` (1, y, x)
    uint32 (pixel = cell_id), the registered twins ``HE_registered`` / ``HE_nuc_registered`` (in
    Xenium space: another size), ``DAPI`` / ``DAPI_nuc`` and the region masks ``group`` /
    ``group_HEspace``; Points ``transcripts``; Tables ``anucleus`` (X log1p(count/total*100),
    layers['counts'], obsm['spatial'] = nucleus centroid (x, y) truncated to int as the
    quickstarter does, var['gene_symbols']) and ``cell_id-group`` (obs cell_id, region, group).

    ``mask_as="labels"``: the nucleus mask as a Labels (y, x) element instead (other tools'
    variant). ``region_column=False``: no obs['region'] (regions only in ``group_HEspace``).
    ``ghosts=False``: every table cell has a nucleus in the mask (as in the challenge's files;
    by default a few table ids have none, to test that ingest drops and counts them).
    ``zarr_v2``: the on-disk format the challenge files were distributed in (zarr v2,
    OME-Zarr 0.4: ``.zgroup`` / ``.zattrs``), written with spatialdata's V01 formats."""
    import anndata as ad
    import pandas as pd
    import spatialdata as sd
    from skimage.measure import regionprops
    from spatialdata.models import Image2DModel, Labels2DModel, PointsModel, TableModel

    rng = np.random.default_rng(seed)
    mask = _draw_mask(rng, size, n)
    img = rng.integers(0, 256, size=(3, size, size), dtype=np.uint8) if image is None else image
    present = np.unique(mask)
    present = present[present != 0].astype(np.int64)
    perm = rng.permutation(present)
    mask_only = perm[:10]                   # in the mask, in no table -> dropped
    expr_no_group = perm[10:14]             # expression but no group row -> kept as train
    in_group = perm[14:]
    ghosts = rng.choice(np.arange(2_000_000, 3_000_000), size=7 if ghosts else 0, replace=False)
    group_ghosts, expr_ghosts = ghosts[:5], ghosts[5:]  # table ids with no nucleus -> dropped
    g_ids = np.concatenate([in_group, group_ghosts])
    groups = rng.choice(["train", "validation", "test"], size=len(g_ids), p=[0.6, 0.2, 0.2])
    groups[: len(in_group)][:5] = "train"
    train = g_ids[: len(in_group)][groups[: len(in_group)] == "train"]
    train_no_expr = train[:3]
    e_ids = np.concatenate([train[3:], expr_no_group, expr_ghosts])
    e_ids = rng.permutation(e_ids)           # table order unrelated to the mask
    counts = rng.poisson(3.0, size=(len(e_ids), len(GENES))).astype(np.float32)
    X = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 100).astype(np.float32)
    cent = {int(p.label): p.centroid for p in regionprops(mask)}
    spatial = np.array([[int(cent[i][1]), int(cent[i][0])] if i in cent else [-1, -1]
                        for i in e_ids], dtype=np.float64)
    reg_img = _regions_image(size)
    region_of = {i: f"region_{int(reg_img[int(c[0]), int(c[1])])}" for i, c in cent.items()}
    g_region = np.array([region_of.get(int(i), "region_1") for i in g_ids], dtype=object)
    gperm = rng.permutation(len(g_ids))
    tables = {}
    if "anucleus" not in drop_tables:
        a = ad.AnnData(X=X, obs=pd.DataFrame({"cell_id": e_ids}, index=[str(i) for i in
                                                                          range(len(e_ids))]),
                       var=pd.DataFrame({"gene_symbols": GENES}, index=GENES))
        a.layers["counts"] = counts
        a.obsm["spatial"] = spatial
        tables["anucleus"] = TableModel.parse(a)
    if "cell_id-group" not in drop_tables:
        obs = {"cell_id": g_ids[gperm], "group": groups[gperm]}
        if region_column:
            obs["region"] = g_region[gperm]
        gt = ad.AnnData(obs=pd.DataFrame(obs, index=[str(i) for i in g_ids[gperm]]))
        tables["cell_id-group"] = TableModel.parse(gt)
    xen = max(8, size // 2)  # Xenium-space rasters: another grid than the H&E
    images = {
        "HE_original": Image2DModel.parse(img, dims=("c", "y", "x"), chunks=(3, 512, 512)),
        "HE_registered": Image2DModel.parse(img[:, :xen, :xen], dims=("c", "y", "x")),
        "HE_nuc_registered": Image2DModel.parse(mask[None, :xen, :xen], dims=("c", "y", "x")),
        "DAPI": Image2DModel.parse(img[:1, :xen, :xen], dims=("c", "y", "x")),
        "DAPI_nuc": Image2DModel.parse(mask[None, :xen, :xen], dims=("c", "y", "x")),
        "group": Image2DModel.parse(reg_img[None, :xen, :xen], dims=("c", "y", "x")),
        "group_HEspace": Image2DModel.parse(reg_img[None], dims=("c", "y", "x")),
    }
    labels = {}
    if mask_as == "image":
        images["HE_nuc_original"] = Image2DModel.parse(mask[None], dims=("c", "y", "x"),
                                                       chunks=(1, 500, 500))
    else:
        labels["HE_nuc_original"] = Labels2DModel.parse(mask, dims=("y", "x"), chunks=(500, 500))
    tx = pd.DataFrame({"x": rng.uniform(0, xen, 50), "y": rng.uniform(0, xen, 50),
                       "feature_name": pd.Categorical(rng.choice(GENES, 50)),
                       "cell_id": rng.choice(e_ids, 50)})
    points = {"transcripts": PointsModel.parse(tx, coordinates={"x": "x", "y": "y"},
                                               feature_key="feature_name")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sd.SpatialData(images=images, labels=labels, points=points, tables=tables)
        if zarr_v2:
            from spatialdata._io.format import (
                PointsFormatV01,
                RasterFormatV01,
                SpatialDataContainerFormatV01,
                TablesFormatV01,
            )

            sdata.write(os.fspath(path), sdata_formats=[SpatialDataContainerFormatV01(),
                                                        RasterFormatV01(), TablesFormatV01(),
                                                        PointsFormatV01()])
        else:
            sdata.write(os.fspath(path))
    return dict(path=path, mask=mask, image=img, e_ids=e_ids, X=X, counts=counts,
                g_ids=g_ids, groups=groups, g_region=g_region, region_of=region_of,
                mask_only=mask_only, expr_no_group=expr_no_group, group_ghosts=group_ghosts,
                expr_ghosts=expr_ghosts, train_no_expr=train_no_expr)


@pytest.fixture(scope="session")
def crunch(tmp_path_factory):
    d = tmp_path_factory.mktemp("crunch")
    truth = write_crunch_zarr(d / "UC1_NI.zarr")
    store = d / "store.h5"
    lines = []
    res = ingest_crunch([truth["path"]], store, tile=TILE, show_progress=False, log=lines.append)
    truth.update(store=store, result=res, lines=lines)
    return truth


def _regionprops(mask):
    from skimage.measure import regionprops

    props = regionprops(mask)
    return {int(p.label): (p.centroid, int(p.area)) for p in props}


def test_label_centroids_equal_whole_image_regionprops_any_tile():
    rng = np.random.default_rng(3)
    mask = _draw_mask(rng, size=300, n=40)
    truth = _regionprops(mask)
    for tile in (16, 37, 100, 300, 1000):
        c = label_centroids(mask, tile)
        assert c.label.tolist() == sorted(truth)
        for lab, y, x, a in zip(c.label, c.y, c.x, c.area):
            (ty, tx), ta = truth[int(lab)]
            assert (y, x, a) == (ty, tx, ta)  # exact, not approximately
    # sparse huge ids take the np.unique path: same answer
    big = mask.astype(np.int64) * (1 << 30)
    c = label_centroids(big, 64)
    assert sorted(c.label // (1 << 30)) == sorted(truth)
    assert np.array_equal(c.y, label_centroids(mask, 64).y)


def test_centroids_match_regionprops_and_tile_borders(crunch):
    f = cells_frame(crunch["store"])
    truth = _regionprops(crunch["mask"])
    labels = f["mask_label"].to_numpy()
    exp_y = np.array([truth[int(k)][0][0] for k in labels])
    exp_x = np.array([truth[int(k)][0][1] for k in labels])
    np.testing.assert_array_equal(f["y"].to_numpy(), exp_y)
    np.testing.assert_array_equal(f["x"].to_numpy(), exp_x)
    np.testing.assert_array_equal(f["nucleus_area"].to_numpy(),
                                  [truth[int(k)][1] for k in labels])
    # the fixture really has nuclei cut by tile borders and touching the image border, each once
    m = crunch["mask"]
    cut = set(np.unique(m[TILE - 1][m[TILE - 1] == m[TILE]])) - {0}
    cut |= set(np.unique(m[:, 2 * TILE - 1][m[:, 2 * TILE - 1] == m[:, 2 * TILE]])) - {0}
    border = set(np.unique(np.concatenate([m[0], m[-1], m[:, 0], m[:, -1]]))) - {0}
    kept = set(labels.tolist())
    assert len(cut & kept) >= 3 and len(border & kept) >= 4
    assert len(labels) == len(set(labels.tolist()))


def test_membership_and_counts(crunch):
    f = cells_frame(crunch["store"])
    labels = set(f["mask_label"].tolist())
    in_mask = set(_regionprops(crunch["mask"]))
    assert not labels & set(crunch["mask_only"].tolist())
    assert not labels & (set(crunch["group_ghosts"].tolist()) | set(crunch["expr_ghosts"].tolist()))
    expected = (set(crunch["g_ids"].tolist()) | set(crunch["e_ids"].tolist())) & in_mask
    assert labels == expected
    c = crunch["result"].samples["UC1_NI"]
    assert c["n_dropped_mask_only"] == 10
    assert c["n_dropped_group_not_in_mask"] == 5
    assert c["n_dropped_expression_not_in_mask"] == 2
    assert c["n_expression_without_group"] == 4
    assert c["n_cells"] == len(f) == len(expected)
    with open_store(crunch["store"]) as h:
        a = h["images/UC1_NI"].attrs
        assert a["n_dropped_mask_only"] == 10 and a["n_dropped_group_not_in_mask"] == 5
    line = crunch["lines"][0]
    assert "10 mask nuclei in neither table" in line and "5 'cell_id-group' cells" in line


def test_groups_and_expression_by_cell_id(crunch):
    f = cells_frame(crunch["store"])
    gmap = dict(zip(crunch["g_ids"].tolist(), crunch["groups"].tolist()))
    for lab, grp in zip(f["mask_label"], f["group"]):
        assert grp == gmap.get(int(lab), "train")  # expression-only cells count as training data
    assert (f.loc[f["mask_label"].isin(crunch["expr_no_group"]), "group"] == "train").all()
    erow = {int(c): i for i, c in enumerate(crunch["e_ids"])}
    with open_store(crunch["store"]) as h:
        X = h["expression/X"][()]
        C = h["expression/counts"][()]
        assert read_strings(h["expression/genes"]).tolist() == GENES
        assert h["expression/X"].attrs["transform"] == EXPRESSION_TRANSFORM
        has = h["cells/has_expression"][()]
    for k, lab in enumerate(f["mask_label"]):
        i = erow.get(int(lab))
        if i is None:
            assert not has[k] and np.isnan(X[k]).all() and np.isnan(C[k]).all()
        else:
            assert has[k]
            np.testing.assert_array_equal(X[k], crunch["X"][i])
            np.testing.assert_array_equal(C[k], crunch["counts"][i])
    # validation / test cells stay (to be predicted), without expression
    vt = f["group"].isin(["validation", "test"]).to_numpy()
    assert vt.sum() > 20 and not has[vt].any()
    tne = f["mask_label"].isin(crunch["train_no_expr"]).to_numpy()
    assert tne.sum() == 3 and not has[tne].any()
    assert f["cell_id"].tolist() == [str(v) for v in f["mask_label"]]
    assert (f["sample"] == "UC1_NI").all()


def test_image_attrs_and_lazy_reader(crunch):
    with open_store(crunch["store"]) as h:
        attrs = dict(h["images/UC1_NI"].attrs)
    assert attrs["kind"] == "spatialdata" and attrs["element"] == "HE_original"
    assert attrs["mask_element"] == "HE_nuc_original" and attrs["path"] == "UC1_NI.zarr"
    assert (attrs["height"], attrs["width"], attrs["channels"]) == (SIZE, SIZE, 3)
    img = np.transpose(crunch["image"], (1, 2, 0))
    mask = crunch["mask"]
    from tabst.images import open_sample_image

    generic = open_sample_image(crunch["store"], attrs, "UC1_NI")  # dispatch by kind
    assert isinstance(generic, ZarrSampleImage) and generic.has_mask and not generic.patch_based
    generic.close()
    r = ZarrSampleImage(crunch["store"], "UC1_NI", attrs, cache_mb=1)
    assert (r.height, r.width, r.channels) == (SIZE, SIZE, 3)
    for y0, x0, h, w in ((0, 0, 64, 64), (500, 1010, 130, 40),   # across chunk borders
                         (-20, -30, 64, 64), (1980, 1990, 50, 40),  # outside -> zero padded
                         (5, 1000, 1, 1), (3000, 3000, 8, 8)):
        got = r.read_region(y0, x0, h, w)
        exp = np.zeros((h, w, 3), np.uint8)
        m_exp = np.zeros((h, w), np.int64)
        ya, yb, xa, xb = max(0, y0), min(SIZE, y0 + h), max(0, x0), min(SIZE, x0 + w)
        if ya < yb and xa < xb:
            exp[ya - y0:yb - y0, xa - x0:xb - x0] = img[ya:yb, xa:xb]
            m_exp[ya - y0:yb - y0, xa - x0:xb - x0] = mask[ya:yb, xa:xb]
        assert got.dtype == np.uint8 and got.shape == (h, w, 3)
        np.testing.assert_array_equal(got, exp)
        np.testing.assert_array_equal(r.read_mask_region(y0, x0, h, w), m_exp)
    # the tiny cache never holds the whole image
    assert r._img._bytes <= 2 * 3 * 512 * 512
    # direct use without a store; no mask element -> read_mask_region gives None
    d = ZarrSampleImage.from_zarr(crunch["path"], mask_element=None)
    np.testing.assert_array_equal(d.read_region(10, 20, 5, 7), img[10:15, 20:27])
    assert d.read_mask_region(0, 0, 4, 4) is None and not d.has_mask
    with pytest.raises(InputError, match="changed since ingest"):
        ZarrSampleImage(crunch["store"], "UC1_NI", {**attrs, "height": 10})


def test_zarr_v2_layout_ingests_like_v3(tmp_path):
    """The challenge's files are zarr v2 / OME-Zarr 0.4; they ingest exactly like the v3 layout."""
    kw = dict(seed=3, size=600, n=40)
    v2 = write_crunch_zarr(tmp_path / "v2" / "UC1.zarr", zarr_v2=True, **kw)
    v3 = write_crunch_zarr(tmp_path / "v3" / "UC1.zarr", **kw)
    assert (v2["path"] / ".zgroup").exists() and not (v2["path"] / "zarr.json").exists()
    assert (v3["path"] / "zarr.json").exists()
    stores = {}
    for name, t in (("v2", v2), ("v3", v3)):
        stores[name] = tmp_path / f"{name}.h5"
        ingest_crunch([t["path"]], stores[name], tile=TILE, show_progress=False)
    with open_store(stores["v2"]) as a, open_store(stores["v3"]) as b:
        fa, fb = cells_frame(a), cells_frame(b)
        assert len(fa) > 0
        for col in ("cell_id", "group", "has_expression", "x", "y"):
            np.testing.assert_array_equal(fa[col].to_numpy(), fb[col].to_numpy())
        np.testing.assert_array_equal(a["expression/X"][()], b["expression/X"][()])
        attrs = dict(a["images/UC1"].attrs)
    r = ZarrSampleImage(stores["v2"], "UC1", attrs)
    np.testing.assert_array_equal(r.read_region(100, 200, 30, 40),
                                  np.transpose(v2["image"], (1, 2, 0))[100:130, 200:240])
    np.testing.assert_array_equal(r.read_mask_region(100, 200, 30, 40),
                                  v2["mask"][100:130, 200:240])
    r.close()


def test_missing_element_names_it_and_lists_holdings(tmp_path):
    t = write_crunch_zarr(tmp_path / "S2.zarr", size=120, n=5, drop_tables=("cell_id-group",))
    out = tmp_path / "s.h5"
    with pytest.raises(InputError) as e:
        ingest_crunch([t["path"]], out, tile=64, show_progress=False)
    msg = str(e.value)
    assert "table 'cell_id-group'" in msg and "'anucleus'" in msg and "'HE_original'" in msg
    assert "'HE_nuc_original'" in msg and "S2.zarr" in msg
    assert not out.exists() and not list(tmp_path.glob(".s.h5*"))
    with pytest.raises(InputError, match="image 'HE_missing'"):
        ingest_crunch([t["path"]], out, image_element="HE_missing", show_progress=False)
    with pytest.raises(InputError, match="no such file"):
        ingest_crunch([tmp_path / "nope.zarr"], out, show_progress=False)


def test_two_samples_prefix_ids(crunch, tmp_path):
    b = tmp_path / "B.zarr"
    os.symlink(crunch["path"], b)
    out = tmp_path / "two.h5"
    res = ingest_crunch([crunch["path"], b], out, tile=1024, show_progress=False)
    f = cells_frame(out)
    n = res.samples["UC1_NI"]["n_cells"]
    assert len(f) == 2 * n and f["cell_id"].is_unique
    assert f["cell_id"].iloc[0] == f"UC1_NI:{f['source_cell_id'].iloc[0]}"
    assert f["cell_id"].iloc[n] == f"B:{f['source_cell_id'].iloc[n]}"
    one = cells_frame(crunch["store"])
    np.testing.assert_array_equal(f["x"].to_numpy()[n:], one["x"].to_numpy())  # tile-independent


def test_cli(crunch, tmp_path):
    from tabst_cli.app import app
    from typer.testing import CliRunner

    out = tmp_path / "cli.h5"
    r = CliRunner().invoke(app, ["ingest", "crunch", str(crunch["path"]), "--out", str(out),
                                 "--tile", "512"])
    assert r.exit_code == 0, r.output
    assert out.exists() and "cells x 20 genes" in r.output
    r = CliRunner().invoke(app, ["ingest", "crunch", str(crunch["path"]), "--out", str(out)])
    assert r.exit_code == 1 and "already exists" in r.output
    r = CliRunner().invoke(app, ["ingest", "crunch", str(tmp_path / "x.zarr"), "--out",
                                 str(tmp_path / "y.h5")])
    assert r.exit_code == 1 and "no such file" in r.output


def test_tile_too_small():
    with pytest.raises(TabstError, match="at least 16"):
        label_centroids(np.zeros((10, 10), np.uint8), 4)


def test_real_layout_mask_is_an_image_and_labels_variant_ingests_the_same(crunch, tmp_path):
    """The challenge stores the nucleus mask as an Image (1, y, x); other tools as Labels (y, x).
    Both are found without options and give identical stores and identical lazy mask reads."""
    import spatialdata as sd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = sd.read_zarr(crunch["path"])
    assert "HE_nuc_original" in real.images and "HE_nuc_original" not in real.labels
    assert tuple(real.images["HE_nuc_original"].shape) == (1, SIZE, SIZE)
    assert {"HE_registered", "DAPI", "group", "group_HEspace"} <= set(real.images)
    assert "transcripts" in real.points and "spatial" in real.tables["anucleus"].obsm
    lab = write_crunch_zarr(tmp_path / "UC1_NI.zarr", mask_as="labels")
    out = tmp_path / "labels.h5"
    ingest_crunch([lab["path"]], out, tile=TILE, show_progress=False)
    a, b = cells_frame(crunch["store"]), cells_frame(out)
    for col in ("cell_id", "x", "y", "nucleus_area", "group", "region"):
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy())
    with open_store(crunch["store"]) as h1, open_store(out) as h2:
        at1, at2 = dict(h1["images/UC1_NI"].attrs), dict(h2["images/UC1_NI"].attrs)
    assert at1["mask_kind"] == "images" and at2["mask_kind"] == "labels"
    r1 = ZarrSampleImage(crunch["store"], "UC1_NI", at1)
    r2 = ZarrSampleImage(out, "UC1_NI", at2)
    for y0, x0 in ((0, 0), (490, 495), (1990, 1990)):
        m = r1.read_mask_region(y0, x0, 40, 40)
        np.testing.assert_array_equal(m, r2.read_mask_region(y0, x0, 40, 40))
        exp = np.zeros((40, 40), np.int64)
        part = crunch["mask"][y0:y0 + 40, x0:x0 + 40]
        exp[:part.shape[0], :part.shape[1]] = part
        np.testing.assert_array_equal(m, exp)


def test_regions_from_the_group_table_or_the_region_image(crunch, tmp_path):
    f = cells_frame(crunch["store"])
    in_group = dict(zip(crunch["g_ids"].tolist(), crunch["g_region"].tolist()))
    exp = [in_group.get(int(k), "unknown") for k in f["mask_label"]]
    assert f["region"].tolist() == exp and len(set(exp) - {"unknown"}) == 4
    # 4 regions + "unknown" for the expression-only cells that have no group-table row
    assert "5 region(s) from table 'cell_id-group' obs['region']" in crunch["lines"][0]
    # no obs['region']: the region image group_HEspace at the centroid pixel
    t = write_crunch_zarr(tmp_path / "UC1_NI.zarr", region_column=False)
    out = tmp_path / "img.h5"
    lines = []
    ingest_crunch([t["path"]], out, tile=TILE, show_progress=False, log=lines.append)
    g = cells_frame(out)
    from test_ingest_crunch import _regions_image

    reg = _regions_image(SIZE)
    exp = [str(reg[int(y), int(x)]) for x, y in zip(g["x"], g["y"])]
    assert g["region"].tolist() == exp and set(exp) == {"1", "2", "3", "4"}
    assert "region image 'group_HEspace'" in lines[0]


def test_obsm_spatial_cross_checked_against_mask_centroids(crunch, tmp_path):
    c = crunch["result"].samples["UC1_NI"]
    # the fixture's obsm['spatial'] is int(centroid) as in the quickstarter: < 1.5 px apart
    assert 0 < c["spatial_max_px"] < 1.5 and c["spatial_n"] == c["n_with_expression"]
    assert "obsm['spatial'] vs mask centroids: max" in crunch["lines"][0]
    assert "WARNING" not in crunch["lines"][0]
    with open_store(crunch["store"]) as h:
        assert h["images/UC1_NI"].attrs["spatial_max_px"] == c["spatial_max_px"]
        assert h["expression/counts"].shape == h["expression/X"].shape  # counts kept
    # (y, x) order in obsm: a loud warning, and the store still uses the mask centroids
    import spatialdata as sd

    t = write_crunch_zarr(tmp_path / "S.zarr", size=600, n=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = sd.read_zarr(t["path"])
        a = s.tables["anucleus"]
        a.obsm["spatial"] = a.obsm["spatial"][:, ::-1].copy()
        s.delete_element_from_disk("anucleus")
        s.write_element("anucleus")
    lines = []
    ingest_crunch([t["path"]], tmp_path / "s.h5", tile=TILE, show_progress=False,
                  log=lines.append)
    assert "WARNING" in lines[0] and "looks like (y, x)" in lines[0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_bad_expression_values_are_refused(tmp_path, bad):
    import spatialdata as sd

    t = write_crunch_zarr(tmp_path / "S.zarr", size=400, n=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = sd.read_zarr(t["path"])
        a = s.tables["anucleus"]
        X = np.array(a.X)
        X[2, 5] = bad
        a.X = X
        s.delete_element_from_disk("anucleus")
        s.write_element("anucleus")
    out = tmp_path / "s.h5"
    with pytest.raises(InputError) as e:
        ingest_crunch([t["path"]], out, tile=TILE, show_progress=False)
    msg = str(e.value)
    assert f"cell_id '{t['e_ids'][2]}'" in msg and GENES[5] in msg and "row 3" in msg
    assert "table 'anucleus' X value" in msg
    assert {np.inf: "infinite", -1.0: "negative"}.get(bad, "missing or NaN") in msg
    assert not out.exists()


def test_obs_region_that_is_the_annotation_key_falls_back_to_the_region_image(tmp_path):
    """In SpatialData, obs['region'] can be the table's annotation column (one element name for
    every row), not tissue regions: then the region image is used."""
    import spatialdata as sd
    from spatialdata.models import TableModel

    t = write_crunch_zarr(tmp_path / "S.zarr", size=400, n=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = sd.read_zarr(t["path"])
        g = s.tables["cell_id-group"]
        g.obs["region"] = "HE_nuc_original"
        g.obs["region"] = g.obs["region"].astype("category")
        s.tables["cell_id-group"] = TableModel.parse(g, region="HE_nuc_original",
                                                     region_key="region", instance_key="cell_id")
        s.delete_element_from_disk("cell_id-group")
        s.write_element("cell_id-group")
    lines = []
    out = tmp_path / "s.h5"
    ingest_crunch([t["path"]], out, tile=TILE, show_progress=False, log=lines.append)
    assert "region image 'group_HEspace'" in lines[0]
    assert set(cells_frame(out)["region"]) <= {"1", "2", "3", "4"}
