"""Spot-based platforms: legacy ST (real STUtility MOB sections), 10x Visium (real CytAssist
outputs) and HEST-1k (a fixture written in HEST's layout).

Expected numbers are recomputed here from the raw files with plain csv/gzip parsing (not the
readers under test) and checked against the ranges stated in ../shared/data/README.md.
"""
from __future__ import annotations

import csv
import functools
import gzip
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from tabst.errors import InputError, TabstError
from tabst.store import attrs_dict, cells_frame, open_store, read_strings

DATA = Path(os.environ.get("TABST_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
MOB = DATA / "stutility-mob"
VISIUM = DATA / "visium-mouse-cytassist"
need_mob = pytest.mark.skipif(not MOB.is_dir(), reason="shared MOB data not present")
need_visium = pytest.mark.skipif(not VISIUM.is_dir(), reason="shared Visium data not present")


def _app():
    from tabst_cli.app import app

    return app


def _mob_specs(n=4):
    return [(MOB / f"MOB{i}.tsv.gz", MOB / f"alignment_table_MOB{i}.tsv", MOB / f"MOB{i}.jpg",
             f"MOB{i}") for i in range(1, n + 1)]


def _grey(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"), dtype=np.float64)


def _window_mean(img, x, y, r):
    """Mean grey value of the (2r+1)^2 window at each (x, y)."""
    out = []
    for xi, yi in zip(np.floor(x).astype(int), np.floor(y).astype(int)):
        out.append(img[max(0, yi - r): yi + r + 1, max(0, xi - r): xi + r + 1].mean())
    return np.asarray(out)


# ------------------------------------------------------------------------------------------
# independent expectations for the MOB sections (plain csv / gzip)


@functools.lru_cache(maxsize=None)
def _mob_expected(i):
    with gzip.open(MOB / f"MOB{i}.tsv.gz", "rt") as fh:
        rd = csv.reader(fh, delimiter="\t")
        header = next(rd)
        rows = {r[0]: [float(v) for v in r[1:]] for r in rd}
    genes = header[1:]
    with open(MOB / f"alignment_table_MOB{i}.tsv") as fh:
        al = list(csv.DictReader(fh, delimiter="\t"))
    align = {f"{int(float(a['x']))}x{int(float(a['y']))}": a for a in al}
    matched = [s for s in rows if s in align]
    selected = [s for s in matched if int(float(align[s]["selected"])) == 1]
    off = [a for a in al if int(float(a["selected"])) == 0]
    return dict(genes=genes, rows=rows, align=align, matched=matched, selected=selected, off=off)


MOB_PATIENTS = {"MOB1": "mouseA", "MOB2": "mouseA", "MOB3": "mouseB", "MOB4": "mouseB"}


@pytest.fixture(scope="module")
def mob_store(tmp_path_factory):
    from tabst.ingest.st import ingest_st

    out = tmp_path_factory.mktemp("mob") / "mob.h5"
    summary = ingest_st(_mob_specs(), out, patients=MOB_PATIENTS, show_progress=False)
    return out, summary


@need_mob
def test_mob_spot_and_gene_counts_match_raw_files_and_readme(mob_store):
    path, summary = mob_store
    cells = cells_frame(path)
    with open_store(path) as f:
        genes = list(read_strings(f["expression/genes"]))
        X = f["expression/X"]
        assert X.shape == (len(cells), 1000)
        assert X.attrs["transform"] == "log1p(count/total*10000)"  # spots default to CP10k
        assert X.attrs["normalize"] == "cp10k" and X.attrs["scale"] == 1e4
    for i in range(1, 5):
        exp = _mob_expected(i)
        # README: ~1,930 spots per section, ~380-440 under tissue, 1,000 genes
        assert 1900 <= len(exp["rows"]) <= 1960
        assert 370 <= len(exp["selected"]) <= 450
        assert len(exp["genes"]) == 1000
        sub = cells[cells["sample"] == f"MOB{i}"]
        assert len(sub) == len(exp["selected"])
        assert set(sub["spot_id"]) == set(exp["selected"])
        assert bool(sub["in_tissue"].all())
        rep = summary["sections"][f"MOB{i}"]
        assert rep["spots_in_counts"] == len(exp["rows"])
        assert rep["match_rate"] == pytest.approx(len(exp["matched"]) / len(exp["rows"]))
        assert rep["match_rate"] > 0.99
        assert rep["selected_with_counts"] == rep["selected_in_alignment"]  # none lost
    assert genes == _mob_expected(1)["genes"]
    assert cells["cell_id"].is_unique
    assert cells["cell_id"].iloc[0].startswith("MOB1_")
    assert summary["n_spots"] == len(cells) and summary["n_genes"] == 1000


@need_mob
def test_mob_expression_is_cp10k_of_raw_counts_which_are_kept(mob_store):
    path, summary = mob_store
    exp = _mob_expected(2)
    cells = cells_frame(path, ["spot_id", "sample", "total_counts"])
    rows = np.flatnonzero((cells["sample"] == "MOB2").to_numpy())
    with open_store(path) as f:
        X = f["expression/X"][rows[0]:rows[-1] + 1]
        C = f["expression/counts"][rows[0]:rows[-1] + 1]
        assert f["expression/counts"].attrs["unit"] == "count"
    raw = np.asarray([exp["rows"][s] for s in cells["spot_id"].iloc[rows]])
    np.testing.assert_array_equal(C, raw)  # raw counts of the section, as in the file
    np.testing.assert_allclose(cells["total_counts"].iloc[rows], raw.sum(axis=1))
    np.testing.assert_allclose(X, np.log1p(raw / raw.sum(axis=1, keepdims=True) * 1e4),
                               rtol=1e-5, atol=1e-6)
    assert summary["normalize"] == "cp10k"
    assert summary["transform"] == "log1p(count/total*10000)"


@need_mob
def test_mob_patients_written_per_spot_not_as_group(mob_store):
    from tabst.ingest.spots import describe_summary

    path, summary = mob_store
    cells = cells_frame(path, ["sample", "patient"])
    assert cells["patient"].tolist() == [MOB_PATIENTS[s] for s in cells["sample"]]
    assert set(cells["patient"]) == {"mouseA", "mouseB"}
    with open_store(path) as f:
        assert f["cells/patient"].attrs["description"].startswith("patient / tumour")
        assert "cells/group" not in f  # /cells/group stays the train/validation/test split
        prov = json.loads(f.attrs["provenance"])
        assert prov["patients"] == MOB_PATIENTS and "groups" not in prov
    assert summary["patients"] == MOB_PATIENTS and "groups" not in summary
    text = "\n".join(describe_summary(summary))
    assert "patients: 2 (mouseA = MOB1, MOB2; mouseB = MOB3, MOB4) -> /cells/patient" in text
    assert any(ln.startswith("  MOB3: ") and "patient=mouseB" in ln for ln in text.splitlines())
    assert "normalisation cp10k: X = log1p(count/total*10000)" in text


@need_mob
@pytest.mark.parametrize("args, expected", [
    (["--patient", "MOB1=a", "--patient", "MOB5=b"], "'MOB5', which are not sections of this "
                                                     "ingest (sections: MOB1, MOB2)"),
    (["--patient", "MOB1=a"], "sections without a patient: MOB2"),
    (["--patient", "MOB1=a", "--patient", "MOB1=b", "--patient", "MOB2=b"], "two patients"),
    (["--patient", "MOB1"], "--patient 'MOB1': expected SAMPLE=PATIENT"),
    (["--group", "MOB1"], "--group 'MOB1': expected SAMPLE=PATIENT"),  # the old name too
    (["--patient", "MOB1=a", "--group", "MOB1=b", "--patient", "MOB2=b"], "'a' and 'b'"),
    (["--scale", "50"], "does not apply to --normalize cp10k"),
    (["--normalize", "log1p", "--scale", "100"], "applies to --normalize log1p-cpt only"),
    (["--normalize", "cpm"], "must be one of cp10k, log1p, log1p-cpt, none"),
])
def test_st_bad_patient_or_normalisation_refused_before_reading(tmp_path, args, expected):
    sections = []
    for c, a, i, n in _mob_specs(2):
        sections += ["--section", f"{c},{a},{i},{n}"]
    out = tmp_path / "bad.h5"
    r = CliRunner().invoke(_app(), ["ingest", "st", *sections, *args, "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert expected in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)  # a message
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written, no temp file


@need_mob
def test_mob_coordinates_land_on_tissue(mob_store):
    path, _ = mob_store
    cells = cells_frame(path, ["sample", "x", "y"])
    with open_store(path) as f:
        attrs = {s: attrs_dict(f["images"][s]) for s in f["images"]}
    for i in range(1, 5):
        s = f"MOB{i}"
        a = attrs[s]
        assert a["kind"] == "file" and (a["height"], a["width"]) == (1905, 1905)
        assert 18 < a["spot_diameter_px"] < 28  # 100 um spots, ~22-24 px per array unit
        assert 3.5 < a["pixel_size_um"] < 5.5
        img_path = (path.parent / a["path"]).resolve()
        assert img_path == (MOB / f"MOB{i}.jpg").resolve()
        img = _grey(img_path)
        sub = cells[cells["sample"] == s]
        under = _window_mean(img, sub["x"], sub["y"], 5)
        off = _mob_expected(i)["off"]
        offv = _window_mean(img, [float(o["pixel_x"]) for o in off],
                            [float(o["pixel_y"]) for o in off], 5)
        # H&E stain is darker (lower brightness) under the tissue spots than on bare glass
        assert under.mean() < offv.mean() - 30, (s, under.mean(), offv.mean())


@need_mob
def test_st_cli_sections_manifest_all_spots_and_json(tmp_path):
    man = tmp_path / "sections.csv"
    man.write_text("counts,alignment,image,sample,patient\n" + "".join(
        f"{c},{a},{i},{n},patient2\n" for c, a, i, n in _mob_specs(2)[1:]))
    c1, a1, i1, _ = _mob_specs(1)[0]
    out = tmp_path / "cli.h5"
    base = ["ingest", "st", str(c1), str(a1), str(i1), "--sample", "A", "--manifest", str(man)]
    r = CliRunner().invoke(_app(), [*base, "--all-spots", "--normalize", "none",
                                    "--patient", "A=patient1", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["samples"] == {"A": len(_mob_expected(1)["matched"]),
                                  "MOB2": len(_mob_expected(2)["matched"])}
    assert summary["patients"] == {"A": "patient1", "MOB2": "patient2"}  # --patient + manifest
    cells = cells_frame(out, ["sample", "patient"])
    assert (cells["patient"] == cells["sample"].map({"A": "patient1", "MOB2": "patient2"})).all()
    assert "note:" not in r.output  # the current names: no deprecation note
    with open_store(out) as f:
        assert f["expression/X"].attrs["transform"] == "count"
        assert json.loads(f.attrs["provenance"])["normalize"] == "none"
        x = f["expression/X"][0]
        np.testing.assert_array_equal(f["expression/counts"][:50], f["expression/X"][:50])
    assert np.all(x == np.round(x)) and x.max() > 1  # raw counts kept as they are
    # the manifest's patient and --patient disagree on MOB2: refused before anything is read
    r = CliRunner().invoke(_app(), [*base, "--patient", "A=p1", "--patient", "MOB2=p3",
                                    "--out", str(tmp_path / "conflict.h5")])
    assert r.exit_code == 1 and "'patient2' and 'p3'" in r.output, r.output
    assert not (tmp_path / "conflict.h5").exists()
    # an existing store is refused without --force; nothing else is touched
    r = CliRunner().invoke(_app(), ["ingest", "st", str(c1), str(a1), str(i1), "--out", str(out)])
    assert r.exit_code == 1 and "already exists" in r.output


def _write_st_section(folder: Path, name: str, genes, spots, image_size=200):
    """A tiny synthetic ST section: 2k-array checkerboard, counts table, alignment, image."""
    from PIL import Image

    rng = np.random.default_rng(len(name))
    folder.mkdir(parents=True, exist_ok=True)
    xs = [(x, y) for x in range(1, 9) for y in range(1, 9) if (x + y) % 2 == 0]
    with open(folder / f"align_{name}.tsv", "w") as fh:
        fh.write("x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n")
        for x, y in xs:
            fh.write(f"{x}\t{y}\t{x}\t{y}\t{20 * x}\t{20 * y}\t{int(x <= 4)}\n")
    with gzip.open(folder / f"{name}.tsv.gz", "wt") as fh:
        fh.write("\t" + "\t".join(genes) + "\n")
        for x, y in xs[:spots]:
            fh.write(f"{x}x{y}\t" + "\t".join(str(int(v)) for v in rng.integers(0, 9, len(genes)))
                     + "\n")
    img = np.full((image_size, image_size, 3), 200, np.uint8)
    Image.fromarray(img).save(folder / f"{name}.png")
    return folder / f"{name}.tsv.gz", folder / f"align_{name}.tsv", folder / f"{name}.png"


def test_gene_sets_intersected_with_report_or_strict_error(tmp_path):
    from tabst.ingest.st import ingest_st

    a = _write_st_section(tmp_path, "A", ["g1", "g2", "g3", "g4"], 30)
    b = _write_st_section(tmp_path, "B", ["g2", "g4", "g5", "g1"], 30)
    summ = ingest_st([(*a, None), (*b, None)], tmp_path / "s.h5", show_progress=False)
    assert summ["n_genes"] == 3
    assert summ["genes"]["per_sample"]["A"]["dropped_examples"] == ["g3"]
    assert summ["genes"]["per_sample"]["B"]["dropped_examples"] == ["g5"]
    with open_store(tmp_path / "s.h5") as f:
        assert list(read_strings(f["expression/genes"])) == ["g1", "g2", "g4"]
        prov = json.loads(f.attrs["provenance"])
        assert prov["genes"]["per_sample"]["B"]["n_dropped"] == 1
        assert "hvg" in prov["hvg_note"].lower() or "highly variable" in prov["hvg_note"]
    # spot diameter of the synthetic 2k array: 20 px per array unit = 100 um -> 20 px
    with open_store(tmp_path / "s.h5") as f:
        assert f["images/A"].attrs["spot_diameter_px"] == pytest.approx(20.0)
    # --genes strict refuses, naming the extra genes; nothing is written
    r = CliRunner().invoke(_app(), ["ingest", "st", "--section", ",".join(map(str, a)),
                                    "--section", ",".join(map(str, b)), "--genes", "strict",
                                    "--out", str(tmp_path / "strict.h5")])
    assert r.exit_code == 1 and "g3" in r.output and "g5" in r.output
    assert not (tmp_path / "strict.h5").exists()
    assert not list(tmp_path.glob(".strict.h5.tmp*"))
    # --genes FILE: exactly those genes, in that order; a missing gene is an error
    gl = tmp_path / "genes.txt"
    gl.write_text("gene\ng4\ng1\n")
    summ = ingest_st([(*a, None), (*b, None)], tmp_path / "f.h5", genes=str(gl),
                     show_progress=False)
    with open_store(tmp_path / "f.h5") as f:
        assert list(read_strings(f["expression/genes"])) == ["g4", "g1"]
    gl.write_text("g4\ng3\n")
    with pytest.raises(InputError, match="g3"):
        ingest_st([(*a, None), (*b, None)], tmp_path / "f2.h5", genes=str(gl),
                  show_progress=False)


def test_st_errors_name_the_file(tmp_path):
    from tabst.ingest.st import ingest_st

    c, a, i = _write_st_section(tmp_path, "A", ["g1", "g2"], 20, image_size=50)
    with pytest.raises(InputError, match="outside"):  # pixels beyond a 50 px image
        ingest_st([(c, a, i, None)], tmp_path / "x.h5", show_progress=False)
    bad = tmp_path / "bad_align.tsv"
    bad.write_text("x\ty\tpixel_x\tpixel_y\n1\t1\t2\t2\n")
    with pytest.raises(InputError, match="selected") as e:
        ingest_st([(c, bad, i, None)], tmp_path / "x.h5", show_progress=False)
    assert "bad_align.tsv" in str(e.value)
    # a non-numeric count is reported with its file row (1-based) and gene column
    lines = gzip.open(c, "rt").read().splitlines()
    cells = lines[3].split("\t")
    cells[2] = "seven"
    lines[3] = "\t".join(cells)
    bad_counts = tmp_path / "bad.tsv"
    bad_counts.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="non-numeric count 'seven'") as e:
        ingest_st([(bad_counts, a, i, None)], tmp_path / "x.h5", show_progress=False)
    assert "row 3" in str(e.value) and "column 'g2'" in str(e.value)
    assert not (tmp_path / "x.h5").exists()


def _st_cli_args(tmp_path, *names):
    """``--section`` options of tiny synthetic ST sections called ``names``."""
    args = []
    for n in names:
        args += ["--section", ",".join(map(str, _write_st_section(tmp_path, n, ["g1", "g2"], 20)))
                 + f",{n}"]
    return args


def test_old_group_option_is_an_alias_of_patient_and_never_writes_cells_group(tmp_path):
    out = tmp_path / "alias.h5"
    r = CliRunner().invoke(_app(), ["ingest", "st", *_st_cli_args(tmp_path, "A", "B"),
                                    "--group", "A=p1", "--patient", "B=p2", "--out", str(out),
                                    "--json"])
    assert r.exit_code == 0, r.output
    notes = [ln for ln in r.stderr.splitlines() if "--group" in ln]
    assert len(notes) == 1 and "old name of --patient" in notes[0], r.stderr
    assert "writes /cells/patient" in notes[0]
    summary = json.loads(r.stdout.strip().splitlines()[-1])  # stdout stays one JSON line
    assert summary["patients"] == {"A": "p1", "B": "p2"}
    cells = cells_frame(out, ["sample", "patient"])
    assert (cells["patient"] == cells["sample"].map({"A": "p1", "B": "p2"})).all()
    with open_store(out) as f:
        assert "cells/group" not in f  # predict's --group split column is left alone
        assert json.loads(f.attrs["provenance"])["patients"] == {"A": "p1", "B": "p2"}


def test_manifest_group_column_is_read_as_patient_with_a_note(tmp_path):
    specs = {n: _write_st_section(tmp_path, n, ["g1", "g2"], 20) for n in ("A", "B")}
    man = tmp_path / "m.csv"
    man.write_text("counts,alignment,image,sample,group\n" + "".join(
        f"{c},{a},{i},{n},P{n}\n" for n, (c, a, i) in specs.items()))
    out = tmp_path / "m.h5"
    r = CliRunner().invoke(_app(), ["ingest", "st", "--manifest", str(man), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "the 'group' column of m.csv is the old name of 'patient'" in r.stderr, r.stderr
    assert "patients: 2 (PA = A; PB = B) -> /cells/patient" in r.output
    with open_store(out) as f:
        assert "cells/group" not in f
        assert sorted(set(read_strings(f["cells/patient"]))) == ["PA", "PB"]
    # both names at once: refused, nothing written
    man.write_text("counts,alignment,image,sample,patient,group\n" + "".join(
        f"{c},{a},{i},{n},P{n},P{n}\n" for n, (c, a, i) in specs.items()))
    r = CliRunner().invoke(_app(), ["ingest", "st", "--manifest", str(man),
                                    "--out", str(tmp_path / "both.h5")])
    assert r.exit_code == 1 and "both a 'patient' and a 'group' column" in r.output, r.output
    assert "m.csv" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "both.h5").exists()


def test_normalize_counts_choices():
    import scipy.sparse as sp

    from tabst.ingest.normalize import normalize_counts, transform_name

    c = sp.csr_matrix(np.array([[1, 3, 0], [0, 0, 0]], dtype=np.float32))
    tot = np.array([8.0, 0.0])  # the total covers genes not selected too
    np.testing.assert_allclose(normalize_counts(c, tot, "log1p-cpt", 100),
                               [[np.log1p(12.5), np.log1p(37.5), 0], [0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(normalize_counts(c, tot),  # default: cp10k
                               [[np.log1p(1250), np.log1p(3750), 0], [0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(normalize_counts(c, tot, "log1p"), np.log1p(c.toarray()))
    np.testing.assert_array_equal(normalize_counts(c, tot, "none"), c.toarray())
    assert transform_name("log1p-cpt", 1e4) == transform_name("cp10k")
    assert transform_name("log1p-cpt") == "log1p(count/total*100)"  # Crunch's default scale
    with pytest.raises(TabstError):
        transform_name("zscore", 1)
    with pytest.raises(TabstError, match="positive"):
        transform_name("log1p-cpt", -1)


@need_mob
@pytest.mark.parametrize("normalize, scale, transform, formula", [
    ("cp10k", None, "log1p(count/total*10000)", lambda c, t: np.log1p(c / t * 1e4)),
    ("log1p", None, "log1p(count)", lambda c, t: np.log1p(c)),
    ("log1p-cpt", None, "log1p(count/total*100)", lambda c, t: np.log1p(c / t * 100)),
    ("log1p-cpt", 50.0, "log1p(count/total*50)", lambda c, t: np.log1p(c / t * 50)),
    ("none", None, "count", lambda c, t: c),
])
def test_each_normalisation_equals_numpy_on_the_raw_file(tmp_path, normalize, scale, transform,
                                                         formula):
    from tabst.ingest.st import ingest_st

    summ = ingest_st(_mob_specs(1), tmp_path / "n.h5", normalize=normalize, scale=scale,
                     show_progress=False)
    exp = _mob_expected(1)
    cells = cells_frame(tmp_path / "n.h5", ["spot_id"])
    raw = np.asarray([exp["rows"][s] for s in cells["spot_id"]])  # plain csv parsing
    with open_store(tmp_path / "n.h5") as f:
        X, C = f["expression/X"][()], f["expression/counts"][()]
        assert f["expression/X"].attrs["transform"] == transform
        assert f["expression/X"].attrs["normalize"] == normalize
    assert summ["transform"] == transform and summ["normalization"].startswith(normalize)
    np.testing.assert_array_equal(C, raw)
    np.testing.assert_allclose(X, formula(raw, raw.sum(axis=1, keepdims=True)), rtol=1e-5,
                               atol=1e-6)


# ------------------------------------------------------------------------------------------
# Visium (real CytAssist outputs)


@functools.lru_cache(maxsize=1)
def _visium_expected():
    with gzip.open(VISIUM / "filtered_feature_bc_matrix" / "barcodes.tsv.gz", "rt") as fh:
        barcodes = [line.strip() for line in fh if line.strip()]
    with gzip.open(VISIUM / "filtered_feature_bc_matrix" / "features.tsv.gz", "rt") as fh:
        feats = [line.rstrip("\n").split("\t") for line in fh if line.strip()]
    with open(VISIUM / "spatial" / "tissue_positions.csv") as fh:
        pos = list(csv.DictReader(fh))
    sf = json.loads((VISIUM / "spatial" / "scalefactors_json.json").read_text())
    return barcodes, feats, pos, sf


@functools.lru_cache(maxsize=1)
def _visium_mtx_triplets():
    with gzip.open(VISIUM / "filtered_feature_bc_matrix" / "matrix.mtx.gz", "rt") as fh:
        lines = [ln for ln in fh if not ln.startswith("%")]
    g, b, nnz = (int(v) for v in lines[0].split())
    t = np.loadtxt(lines[1:], dtype=np.int64).reshape(-1, 3)
    assert len(t) == nnz
    return g, b, t  # 1-based gene, 1-based barcode, count


@pytest.fixture(scope="module")
def visium_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("visium") / "visium.h5"
    r = CliRunner().invoke(_app(), ["ingest", "visium", str(VISIUM), "--sample", "cyt",
                                    "--patient", "cyt=mouse1", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout.strip().splitlines()[-1])


@need_visium
def test_visium_counts_genes_and_expression_match_raw(visium_store):
    path, summary = visium_store
    barcodes, feats, pos, sf = _visium_expected()
    in_tissue = {p["barcode"] for p in pos if p["in_tissue"] == "1"}
    # README: 2,898 in-tissue spots x 19,465 genes
    assert len(barcodes) == 2898 and len(feats) == 19465
    assert len(in_tissue) == 2898 and set(barcodes) == in_tissue
    cells = cells_frame(path)
    assert len(cells) == 2898 and summary["n_spots"] == 2898 and summary["n_genes"] == 19465
    assert set(cells["patient"]) == {"mouse1"} and summary["patients"] == {"cyt": "mouse1"}
    assert "group" not in cells.columns
    assert set(cells["cell_id"]) == in_tissue  # one sample: ids are the barcodes themselves
    with open_store(path) as f:
        genes = list(read_strings(f["expression/genes"]))
        ids = list(read_strings(f["expression/gene_ids"]))
        assert len(set(genes)) == len(genes) == 19465
        assert ids == [r[0] for r in feats]
        names = [r[1] for r in feats]
        seen, dups = set(), set()
        for n in names:
            (dups if n in seen else seen).add(n)
        for gname, gid, sym in zip(genes, ids, names):
            assert gname == (f"{sym}_{gid}" if sym in dups else sym)
        rows = [0, 1234, 2897]
        X = f["expression/X"][rows]
        C = f["expression/counts"][rows]
        assert f["expression/X"].attrs["transform"] == "log1p(count/total*10000)"  # CLI default
    G, B, t = _visium_mtx_triplets()
    bc_index = {b: i for i, b in enumerate(barcodes)}
    for r, xrow, crow in zip(rows, X, C):
        col = bc_index[cells["cell_id"].iloc[r]] + 1
        sel = t[t[:, 1] == col]
        raw = np.zeros(G)
        raw[sel[:, 0] - 1] = sel[:, 2]
        assert cells["total_counts"].iloc[r] == pytest.approx(raw.sum())
        np.testing.assert_allclose(xrow, np.log1p(raw / raw.sum() * 1e4), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(crow, raw)


@need_visium
def test_visium_image_choice_scale_and_tissue_overlap(visium_store):
    path, summary = visium_store
    _, _, pos, sf = _visium_expected()
    with open_store(path) as f:
        a = attrs_dict(f["images/cyt"])
    assert a["image_choice"] == "lowres" and a["scale_factor"] == pytest.approx(0.2)
    assert (a["height"], a["width"]) == (600, 600)
    assert a["spot_diameter_px"] == pytest.approx(sf["spot_diameter_fullres"] * 0.2)
    cells = cells_frame(path, ["cell_id", "x", "y"])
    p = {q["barcode"]: q for q in pos}
    b0 = cells["cell_id"].iloc[10]
    assert cells["x"].iloc[10] == pytest.approx(float(p[b0]["pxl_col_in_fullres"]) * 0.2)
    assert cells["y"].iloc[10] == pytest.approx(float(p[b0]["pxl_row_in_fullres"]) * 0.2)
    img = _grey((path.parent / a["path"]).resolve())
    under = _window_mean(img, cells["x"], cells["y"], 1)
    off = [q for q in pos if q["in_tissue"] == "0"]
    offv = _window_mean(img, [float(q["pxl_col_in_fullres"]) * 0.2 for q in off],
                        [float(q["pxl_row_in_fullres"]) * 0.2 for q in off], 1)
    assert under.mean() < offv.mean() - 40, (under.mean(), offv.mean())


@need_visium
def test_visium_h5_and_old_positions_list_read_the_same(tmp_path, visium_store):
    """Space Ranger's .h5 matrix + the older headerless tissue_positions_list.csv give the same
    store as the mtx folder + tissue_positions.csv."""
    from tabst.ingest.visium import ingest_visium

    _, feats, pos, _ = _visium_expected()
    G, B, t = _visium_mtx_triplets()
    import scipy.sparse as sp

    csc = sp.csc_matrix((t[:, 2], (t[:, 0] - 1, t[:, 1] - 1)), shape=(G, B))
    with gzip.open(VISIUM / "filtered_feature_bc_matrix" / "barcodes.tsv.gz", "rt") as fh:
        barcodes = [line.strip() for line in fh if line.strip()]
    outs = tmp_path / "run1" / "outs"
    (outs / "spatial").mkdir(parents=True)
    with h5py.File(outs / "filtered_feature_bc_matrix.h5", "w") as f:
        m = f.create_group("matrix")
        m["data"], m["indices"], m["indptr"] = csc.data.astype(np.int32), csc.indices, csc.indptr
        m["shape"] = np.array([G, B], dtype=np.int32)
        m["barcodes"] = np.array(barcodes, dtype="S")
        fe = m.create_group("features")
        fe["id"] = np.array([r[0] for r in feats], dtype="S")
        fe["name"] = np.array([r[1] for r in feats], dtype="S")
        fe["feature_type"] = np.array([r[2] for r in feats], dtype="S")
    with open(outs / "spatial" / "tissue_positions_list.csv", "w") as fh:
        for q in pos:
            fh.write(",".join(q[k] for k in ("barcode", "in_tissue", "array_row", "array_col",
                                             "pxl_row_in_fullres", "pxl_col_in_fullres")) + "\n")
    for n in ("scalefactors_json.json", "tissue_lowres_image.png"):
        shutil.copy(VISIUM / "spatial" / n, outs / "spatial" / n)
    summ = ingest_visium([outs], tmp_path / "h5.h5", show_progress=False)
    assert summ["samples"] == {"run1": 2898}  # sample name from the folder above outs/
    assert summ["sections"]["run1"]["matrix_format"] == "h5"
    ref, _ = visium_store
    with open_store(ref) as f1, open_store(tmp_path / "h5.h5") as f2:
        np.testing.assert_array_equal(read_strings(f1["cells/cell_id"]),
                                      read_strings(f2["cells/cell_id"]))
        np.testing.assert_allclose(f1["cells/x"][()], f2["cells/x"][()])
        np.testing.assert_array_equal(f1["expression/X"][::97], f2["expression/X"][::97])
        np.testing.assert_array_equal(read_strings(f1["expression/genes"]),
                                      read_strings(f2["expression/genes"]))


# ------------------------------------------------------------------------------------------
# HEST-1k fixture in HEST's own layout


def _write_hest_sample(root: Path, sid: str, genes, n_spots=12, missing_patch=(3,),
                       extra_patch=True, seed=0):
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    for d in ("st", "patches", "metadata"):
        (root / d).mkdir(parents=True, exist_ok=True)
    barcodes = [f"{sid}-AAAC{i:04d}-1" for i in range(n_spots)]
    counts = rng.poisson(3.0, size=(n_spots, len(genes))).astype(np.float32)
    spatial = np.column_stack([1000 + 110 * np.arange(n_spots), 2000 + 55 * np.arange(n_spots)])
    ad = anndata.AnnData(X=sp.csr_matrix(counts),
                         obs=pd.DataFrame({"in_tissue": np.ones(n_spots, int),
                                           "array_row": np.arange(n_spots),
                                           "array_col": 2 * np.arange(n_spots)}, index=barcodes),
                         var=pd.DataFrame(index=list(genes)))
    ad.obsm["spatial"] = spatial.astype(np.float64)
    ad.write_h5ad(root / "st" / f"{sid}.h5ad")
    # patches: every spot except `missing_patch`, in reversed order, + one unknown barcode
    order = [i for i in range(n_spots) if i not in missing_patch][::-1]
    bcs = [barcodes[i] for i in order] + (["UNKNOWN-1"] if extra_patch else [])
    imgs = np.zeros((len(bcs), 224, 224, 3), np.uint8)
    for k, i in enumerate(order):
        imgs[k, :, :, 0] = i  # the patch remembers its spot
        imgs[k, :, :, 1] = 200
    coords = np.array([spatial[i] - 112 for i in order] + ([[0, 0]] if extra_patch else []))
    with h5py.File(root / "patches" / f"{sid}.h5", "w") as f:
        f.create_dataset("img", data=imgs, chunks=(1, 224, 224, 3))
        f.create_dataset("coords", data=coords.astype(np.int64))
        f.create_dataset("barcode", data=np.array(bcs, dtype="S").reshape(-1, 1))
    (root / "metadata" / f"{sid}.json").write_text(json.dumps(
        {"pixel_size_um_estimated": 0.25, "spot_diameter": 55.0, "st_technology": "Visium",
         "organ": "Bowel"}))
    return counts, barcodes, spatial, order


def test_hest_fixture_round_trips(tmp_path):
    from tabst.images import open_sample_image, sample_attrs
    from tabst.patches import fit_patch

    root = tmp_path / "hest_data"
    c1, b1, s1, _ = _write_hest_sample(root, "TENX1", ["A", "B", "C", "D"], seed=1)
    c2, b2, s2, _ = _write_hest_sample(root, "TENX2", ["B", "C", "D", "E"], n_spots=9,
                                        missing_patch=(), extra_patch=False, seed=2)
    out = tmp_path / "store" / "hest.h5"
    r = CliRunner().invoke(_app(), ["ingest", "hest", str(root), "--normalize", "log1p",
                                    "--patient", "TENX1=P1", "--patient", "TENX2=P2",
                                    "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["patients"] == {"TENX1": "P1", "TENX2": "P2"}
    rep = summary["sections"]["TENX1"]
    assert rep["spots_without_patch"] == 1 and rep["patches_without_expression"] == 1
    assert summary["samples"] == {"TENX1": 11, "TENX2": 9}
    assert summary["genes"]["per_sample"]["TENX1"]["dropped_examples"] == ["A"]
    cells = cells_frame(out)
    with open_store(out) as f:
        genes = list(read_strings(f["expression/genes"]))
        X = f["expression/X"][()]
        a1 = attrs_dict(f["images/TENX1"])
    assert genes == ["B", "C", "D"]
    assert a1["kind"] == "hest-patches" and (a1["height"], a1["width"]) == (224, 224)
    assert a1["spot_diameter_px"] == pytest.approx(110.0)  # 55 um at 0.5 um/px
    assert (out.parent / a1["path"]).resolve() == (root / "patches" / "TENX1.h5").resolve()
    assert set(cells["tissue"]) == {"Bowel"}
    assert (cells["patient"] == cells["sample"].map({"TENX1": "P1", "TENX2": "P2"})).all()
    with open_store(out) as f:
        assert f["expression/X"].attrs["transform"] == "log1p(count)"  # what the HEST preset reads
    for sid, counts, bcs, spatial in (("TENX1", c1, b1, s1), ("TENX2", c2, b2, s2)):
        gcols = [["A", "B", "C", "D"], ["B", "C", "D", "E"]][sid == "TENX2"]
        cols = [gcols.index(g) for g in genes]
        sub = np.flatnonzero((cells["sample"] == sid).to_numpy())
        for r in sub:
            i = bcs.index(cells["spot_id"].iloc[r])
            assert cells["cell_id"].iloc[r] == f"{sid}_{bcs[i]}"
            np.testing.assert_allclose(X[r], np.log1p(counts[i, cols]), rtol=1e-6)
            assert (cells["x"].iloc[r], cells["y"].iloc[r]) == tuple(spatial[i])
    # patches come back through the hest-patches reader, the right one for each row
    reader = open_sample_image(out, sample_attrs(out, "TENX1"), "TENX1")
    try:
        assert reader.patch_based and reader.row_fields == ("patch_index",)
        sub = np.flatnonzero((cells["sample"] == "TENX1").to_numpy())
        for r in sub:
            p = reader.read_patch(int(r), {"patch_index": int(cells["patch_index"].iloc[r])})
            assert p.shape == (224, 224, 3) and p.dtype == np.uint8
            assert p[0, 0, 0] == b1.index(cells["spot_id"].iloc[r]) and p[5, 5, 1] == 200
        small, _ = fit_patch(p, 110)  # --patch-size spot crops the stored patch to the spot
        assert small.shape == (110, 110, 3)
        with pytest.raises(InputError, match="patch_index"):
            reader.read_patch(0, {"patch_index": 999})
    finally:
        reader.close()


def test_hest_defaults_to_cp10k_and_checks_patient_ids(tmp_path):
    root = tmp_path / "hest_data"
    counts, bcs, _, _ = _write_hest_sample(root, "S1", ["A", "B", "C"], missing_patch=())
    out = tmp_path / "h.h5"
    r = CliRunner().invoke(_app(), ["ingest", "hest", str(root), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    cells = cells_frame(out, ["spot_id"])
    raw = counts[[bcs.index(b) for b in cells["spot_id"]]]
    with open_store(out) as f:
        assert f["expression/X"].attrs["transform"] == "log1p(count/total*10000)"
        np.testing.assert_allclose(f["expression/X"][()],
                                   np.log1p(raw / raw.sum(axis=1, keepdims=True) * 1e4),
                                   rtol=1e-5)
        assert "cells/patient" not in f and "cells/group" not in f  # no --patient: no column
    r = CliRunner().invoke(_app(), ["ingest", "hest", str(root), "--patient", "S2=P1",
                                    "--out", str(tmp_path / "g.h5")])
    assert r.exit_code == 1 and "'S2'" in r.output and "sections: S1" in r.output, r.output
    assert not (tmp_path / "g.h5").exists()


def test_hest_mismatched_files_error(tmp_path):
    from tabst.ingest.hest import ingest_hest

    root = tmp_path / "hest_data"
    _write_hest_sample(root, "S1", ["A", "B"])
    # patches of another sample: no barcode in common
    with h5py.File(root / "patches" / "S1.h5", "r+") as f:
        del f["barcode"]
        f["barcode"] = np.array([f"X{i}" for i in range(f["img"].shape[0])],
                                dtype="S").reshape(-1, 1)
    with pytest.raises(InputError, match="no barcode"):
        ingest_hest(root, tmp_path / "h.h5", show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no sample"):
        ingest_hest(tmp_path / "empty", tmp_path / "h.h5", show_progress=False)
    assert not (tmp_path / "h.h5").exists()
