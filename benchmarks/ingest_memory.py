"""Peak memory of `tabst ingest table` for 20k vs 200k cells x 460 genes (CSV and .h5ad).

Each ingest runs in a fresh Python subprocess that reports its own peak resident set size
(``VmHWM`` from ``/proc/self/status``: the whole process, imports included). The expression
rows are shuffled relative to the label table, so rows are matched by cell id and scattered
into /expression/X (the harder path).

Goal: for each format, the 200k peak is at most 20 % above the 20k peak (streaming: memory
does not grow with the number of cells). Inputs are generated under a temporary folder
(about 1.5 GB for 200k cells) and removed afterwards.

    .venv/bin/python benchmarks/ingest_memory.py [--sizes 20000 200000] [--genes 460]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

N_SAMPLES = 4
IMAGE_SIDE = 2048
CHUNK = 20000

CHILD = r"""
import json, sys, time
def vm_hwm_mb():  # peak RSS of this process image (reset by exec, unlike ru_maxrss)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
t0 = time.perf_counter()
from tabst.ingest.table import ingest_table
a = json.loads(sys.argv[1])
rec = {}
if not a.get("imports_only"):
    res = ingest_table(a["labels"], out=a["out"], images=a["images"], expression=a["expression"],
                       show_progress=False, command=["benchmark"])
    rec["n_cells"] = res["n_cells"]
rec.update(seconds=time.perf_counter() - t0, peak_rss_mb=round(vm_hwm_mb(), 1))
print(json.dumps(rec))
"""


def write_inputs(folder: Path, n: int, n_genes: int, seed: int = 0) -> dict:
    """Label CSV, per-sample PNGs, and the same expression as CSV and as .h5ad (shuffled rows)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    img = folder / "images"
    img.mkdir(exist_ok=True)
    samples = [f"S{i + 1}" for i in range(N_SAMPLES)]
    for s in samples:
        Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), (232, 182, 210)).save(img / f"{s}.png",
                                                                         compress_level=1)
    ids = np.array([f"cell_{i:07d}" for i in range(n)], dtype=object)
    sample = np.array(samples, dtype=object)[np.arange(n) * N_SAMPLES // n]
    pd.DataFrame({"cell_id": ids, "sample": sample,
                  "tissue": np.where(np.isin(sample, samples[:2]), "tA", "tB"),
                  "x": np.round(rng.uniform(0, IMAGE_SIDE - 1, n), 2),
                  "y": np.round(rng.uniform(0, IMAGE_SIDE - 1, n), 2)}).to_csv(
        folder / "labels.csv", index=False)
    genes = [f"GENE{j:04d}" for j in range(n_genes)]
    order = rng.permutation(n)
    lam = rng.gamma(0.6, 1.0, n_genes)
    csv_path, h5ad_path = folder / "expr.csv", folder / "expr.h5ad"
    str_dt = h5py.string_dtype("utf-8")
    with h5py.File(h5ad_path, "w") as f, pa.OSFile(str(csv_path), "wb") as sink:
        # AnnData on-disk format (anndata >= 0.8): dense X, obs/var dataframes with an _index
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        X = f.create_dataset("X", shape=(n, n_genes), dtype=np.float32,
                             chunks=(min(n, 512), n_genes))
        X.attrs["encoding-type"], X.attrs["encoding-version"] = "array", "0.2.0"
        for grp, index in (("obs", ids[order]), ("var", np.array(genes, dtype=object))):
            g = f.create_group(grp)
            g.attrs.update({"_index": "_index", "encoding-type": "dataframe",
                            "encoding-version": "0.2.0"})
            g.attrs.create("column-order", np.array([], dtype=object), dtype=str_dt)
            d = g.create_dataset("_index", data=index, dtype=str_dt)
            d.attrs["encoding-type"], d.attrs["encoding-version"] = "string-array", "0.2.0"
        for k in ("layers", "obsm", "varm", "obsp", "varp", "uns"):
            g = f.create_group(k)
            g.attrs["encoding-type"], g.attrs["encoding-version"] = "dict", "0.1.0"
        writer = None
        for a in range(0, n, CHUNK):
            b = min(n, a + CHUNK)
            block = np.round(np.log1p(rng.poisson(lam, (b - a, n_genes))), 3).astype(np.float32)
            X[a:b] = block
            t = pa.table({"cell_id": ids[order[a:b]],
                          **{g: block[:, j] for j, g in enumerate(genes)}})
            if writer is None:
                writer = pacsv.CSVWriter(sink, t.schema)
            writer.write_table(t)
        writer.close()
    return {"labels": str(folder / "labels.csv"), "images": str(img),
            "csv": str(csv_path), "h5ad": str(h5ad_path)}


def measure(args: dict) -> dict:
    """Run one ingest in a fresh interpreter; return its peak RSS (MB) and timing.

    The child reports its own ``VmHWM`` (peak resident set of its process image).
    ``ru_maxrss`` from ``wait4`` is not used: Linux carries the pre-exec high-water mark of
    the forking parent into it, so it would measure this script, not the ingest.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, check=False,
                       env=env, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"ingest failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rec = json.loads(p.stdout.strip().splitlines()[-1])
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    return rec


def write_inputs_subprocess(folder: Path, n: int, n_genes: int) -> dict:
    """Generate the inputs in a child process (keeps this process small)."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import ingest_memory as m; "
            "from pathlib import Path; "
            "print(json.dumps(m.write_inputs(Path(sys.argv[2]), int(sys.argv[3]), "
            "int(sys.argv[4]))))")
    p = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(folder),
                        str(n), str(n_genes)], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"input generation failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[20000, 200000])
    ap.add_argument("--genes", type=int, default=460)
    ap.add_argument("--tmp", default=None, help="folder for the generated inputs (default: /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    a = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="tabst-ingest-mem-", dir=a.tmp))
    results: dict = {"csv": {}, "h5ad": {}}
    seconds: dict = {"csv": {}, "h5ad": {}}
    try:
        base = measure({"imports_only": True})
        print(f"baseline (python + tabst.ingest imports): {base['peak_rss_mb']:.1f} MB")
        for n in a.sizes:
            t0 = time.perf_counter()
            inp = write_inputs_subprocess(root / f"n{n}", n, a.genes)
            gb = sum(Path(inp[k]).stat().st_size for k in ("csv", "h5ad")) / 1e9
            print(f"{n:,} cells x {a.genes} genes: inputs written in "
                  f"{time.perf_counter() - t0:.1f} s ({gb:.2f} GB)")
            for fmt in ("csv", "h5ad"):
                out = root / f"n{n}" / f"store_{fmt}.h5"
                rec = measure({"labels": inp["labels"], "images": inp["images"],
                               "expression": inp[fmt], "out": str(out)})
                assert rec["n_cells"] == n
                with h5py.File(out, "r") as f:
                    assert f["expression/X"].shape == (n, a.genes)
                out.unlink()
                results[fmt][str(n)] = rec["peak_rss_mb"]
                seconds[fmt][str(n)] = rec["wall_s"]
                print(f"  {fmt:5s} peak RSS {rec['peak_rss_mb']:8.1f} MB   "
                      f"wall {rec['wall_s']:6.1f} s")
            if not a.keep:
                shutil.rmtree(root / f"n{n}")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    small, big = (str(s) for s in a.sizes)
    growth = {fmt: round(results[fmt][big] / results[fmt][small] - 1.0, 3) for fmt in results}
    met = all(g <= 0.20 for g in growth.values())
    for fmt, g in growth.items():
        print(f"{fmt}: {big} vs {small} cells: peak RSS {g * 100:+.1f} %")
    print(json.dumps({"benchmark": "ingest_memory", "genes": a.genes, "sizes": a.sizes,
                      "baseline_mb": base["peak_rss_mb"], "peak_rss_mb": results,
                      "wall_s": seconds, "growth": growth,
                      "goal": "per format, peak RSS at the larger size <= 1.20 x the smaller",
                      "met": met}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
