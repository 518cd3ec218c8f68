"""`tabst demo`: determinism, ground truth with real structure, self-describing store."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tabst.demo import DRIVER_GENES, DRIVERS, generate_demo_inputs, run_demo
from tabst.store import open_store, read_strings


def _contents(path):
    """Every dataset's values and every attr except creation time / provenance."""
    out = {}
    with open_store(path) as f:
        def visit(name, obj):
            attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                     for k, v in obj.attrs.items()}
            out[name + "@attrs"] = repr(sorted(attrs.items()))
            if isinstance(obj, h5py.Dataset):
                v = obj[()]
                out[name] = v.tobytes() if v.dtype.kind != "O" else repr(v.tolist())
        f.visititems(visit)
    return out


@pytest.fixture(scope="module")
def demo_a(tmp_path_factory):
    return run_demo(tmp_path_factory.mktemp("a"), seed=3, quick=True, show_progress=False,
                    stages=("data",))


def test_same_seed_same_store_other_seed_differs(demo_a, tmp_path):
    b = run_demo(tmp_path / "b", seed=3, quick=True, show_progress=False, stages=("data",))
    c = generate_demo_inputs(tmp_path / "c", seed=4, quick=True, show_progress=False)
    ca, cb = _contents(demo_a["store"]), _contents(b["store"])
    assert ca.keys() == cb.keys() and all(ca[k] == cb[k] for k in ca)
    assert (demo_a["images"] / "A1.png").read_bytes() == (b["images"] / "A1.png").read_bytes()
    assert (demo_a["labels"]).read_bytes() == b["labels"].read_bytes()
    assert demo_a["labels"].read_bytes() != c["labels"].read_bytes()
    assert (demo_a["images"] / "A1.png").read_bytes() != (c["images"] / "A1.png").read_bytes()


def test_store_layout_and_truth(demo_a):
    with open_store(demo_a["store"]) as f:
        n = f["cells/cell_id"].shape[0]
        assert n == 3 * 150 and f["expression/X"].shape == (n, 40)
        assert f["expression/X"].attrs["transform"] == "log1p(count/total*100)"
        assert sorted(f["images"].keys()) == ["A1", "A2", "B1"]
        a = dict(f["images/A1"].attrs)
        assert a["kind"] == "file" and a["path"] == "raw/images/A1.png"
        assert a["mask_path"] == "raw/masks/A1_mask.tif" and a["channels"] == 3
        assert set(read_strings(f["cells/tissue"])) == {"tissue_A", "tissue_B"}
        genes = list(read_strings(f["expression/genes"]))
        X = f["expression/X"][()]
        ids = list(read_strings(f["cells/cell_id"]))
    assert np.isfinite(X).all() and X.min() >= 0
    # normalised like Crunch 1: expm1(X) sums to ~100 per cell with any counts
    tot = np.expm1(X.astype(np.float64)).sum(1)
    assert np.allclose(tot[tot > 0], 100, rtol=1e-3)
    truth = json.loads(demo_a["truth"].read_text())
    assert set(truth["driver_genes"]) == set(DRIVER_GENES)
    for g, rec in truth["driver_genes"].items():
        assert g in genes and rec["driver"] in DRIVERS and rec["sign"] in (-1, 1)
    # the drivers really drive their genes, with the documented sign, in the ingested store
    tc = pd.read_csv(demo_a["truth_cells"]).set_index("cell_id").loc[ids]
    for g, rec in truth["driver_genes"].items():
        rho = pd.Series(tc[rec["driver"]].to_numpy()).rank().corr(
            pd.Series(X[:, genes.index(g)]).rank())
        assert rho * rec["sign"] > 0.3, (g, rho)
    # the mask matches the labels: pixel value k = k-th cell of the sample
    import tifffile

    m = tifffile.imread(demo_a["masks"] / "A1_mask.tif")
    lab = pd.read_csv(demo_a["labels"])
    s = lab[lab["sample"] == "A1"].reset_index(drop=True)
    k = 10
    assert m[round(s.y[k]), round(s.x[k])] == k + 1
    area = np.bincount(m.ravel(), minlength=len(s) + 1)[1:]
    np.testing.assert_allclose(area, tc.loc[s.cell_id, "nucleus_area"].to_numpy())
    # cell types differ in morphology (real structure, not noise)
    by_type = tc.groupby("cell_type")["nucleus_area"].median()
    assert by_type["epithelial"] > 1.8 * by_type["lymphocyte"]


def test_cli_demo_end_to_end_and_info_describe_every_dataset(tmp_path):
    """The whole quick demo: ingest -> embed -> compare -> explain, then `tabst info`."""
    from tabst_cli.app import app

    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--quick", "--seed", "1"])
    assert r.exit_code == 0, r.output
    store = tmp_path / "d" / "store.h5"
    run = tmp_path / "d" / "run"
    out = " ".join(r.output.split())
    assert f"store: {store}" in out
    assert f"compare report: {run / 'report.html'}" in out
    assert f"explain report: {run / 'explain.html'}" in out and "demo wall time" in out
    for name in ("leaderboard.csv", "predictions.h5", "report.html", "explain.html",
                 "attributions.h5", "driver_check.json"):
        assert (run / name).stat().st_size > 0, name
    html = (run / "report.html").read_text()
    assert "random" in html.lower()  # random encoder weights are announced
    chk = json.loads((run / "driver_check.json").read_text())
    assert {g["gene"] for g in chk["genes"]} == set(DRIVER_GENES)
    assert chk["best_model"] in chk["models"]
    r2 = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--quick"])
    assert r2.exit_code == 1 and "--force" in r2.output
    info = CliRunner().invoke(app, ["info", str(store), "--json"])
    assert info.exit_code == 0, info.output
    items = json.loads(info.output)["items"]
    datasets = [it for it in items if it["kind"] == "dataset"]
    assert {d["path"] for d in datasets} >= {"/cells/cell_id", "/cells/x", "/expression/X",
                                             "/expression/genes", "/features/morphology",
                                             "/embeddings/resnet50_layer3_p32_random"}
    assert all(d["attrs"].get("description") for d in datasets)
    text = CliRunner().invoke(app, ["info", str(store)])
    assert text.exit_code == 0
    with open_store(store) as f:
        for name in ("cells/x", "expression/X", "expression/genes"):
            assert f[name].attrs["description"][:25] in " ".join(text.output.split())


def test_each_driver_is_the_best_linear_explanation_of_its_gene(tmp_path):
    """The ground truth is identifiable: fitting each driver gene on *all* the named features the
    feature extractor computes (standardised, ridge), the largest coefficient is its driver's --
    not a proxy such as an axis length for the nuclear area (issue 6)."""
    from sklearn.linear_model import RidgeCV

    from tabst.demo import ingest_demo
    from tabst.morphology import compute_features

    p = generate_demo_inputs(tmp_path, seed=3, quick=True, cells_per_sample=600,
                             show_progress=False)
    store = ingest_demo(p, show_progress=False)
    compute_features(store, 32, show_progress=False, workers=0)
    with open_store(store) as f:
        d = f["features/morphology"]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in d.attrs["names"]]
        F = pd.DataFrame(d[()], columns=names)
        genes = list(read_strings(f["expression/genes"]))
        X = f["expression/X"][()]
    assert set(DRIVERS) <= set(names)
    F = F.fillna(F.mean())
    Z = ((F - F.mean()) / F.std()).to_numpy()
    for g, (drv, beta) in DRIVER_GENES.items():
        m = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(Z, X[:, genes.index(g)])
        top = names[int(np.argmax(np.abs(m.coef_)))]
        assert top == drv, (g, drv, dict(zip(names, np.round(m.coef_, 3))))
        assert np.sign(m.coef_[names.index(drv)]) == np.sign(beta), g
