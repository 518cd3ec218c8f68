import json

import h5py
import numpy as np
import pytest
from conftest import write_tiny_store

from tabst.errors import StoreError, TabstError
from tabst.store import (
    cells_frame,
    create_store,
    iter_batches,
    open_store,
    put,
    read_strings,
    torch_dataset,
)


def test_round_trip_with_attrs(tmp_path):
    p = write_tiny_store(tmp_path / "s.h5")
    f = open_store(p)
    assert f.attrs["tabst_schema"] == 1
    prov = json.loads(f.attrs["provenance"])
    assert prov["command"] == "tests"
    assert read_strings(f["cells/cell_id"])[0] == "c0"
    assert f["cells/x"].attrs["unit"] == "px"
    X = f["expression/X"]
    assert X.dtype == np.float32 and X.chunks[1] == X.shape[1]  # row-chunked

    def no_desc(name, obj):
        if isinstance(obj, h5py.Dataset) and "description" not in obj.attrs:
            return name
    assert f.visititems(no_desc) is None
    f.close()
    df = cells_frame(p)
    assert list(df.columns[:2]) == ["cell_id", "sample"] and len(df) == 180


def test_create_is_atomic(tmp_path):
    p = tmp_path / "s.h5"
    with pytest.raises(RuntimeError):
        with create_store(p) as f:
            put(f, "a", np.arange(3), description="a")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with create_store(p) as f:
        put(f, "a", np.arange(3), description="a")
    with pytest.raises(TabstError, match="--force"):
        with create_store(p):
            pass


def test_other_schema_version_is_refused(tmp_path):
    p = tmp_path / "old.h5"
    with h5py.File(p, "w") as f:
        f.attrs["tabst_schema"] = 2
    with pytest.raises(StoreError, match="schema version 2.*reads version 1"):
        open_store(p)
    with h5py.File(tmp_path / "plain.h5", "w"):
        pass
    with pytest.raises(StoreError, match="not a tabst store"):
        open_store(tmp_path / "plain.h5")


def test_iter_batches_rows_order_and_bound(tmp_path):
    p = write_tiny_store(tmp_path / "s.h5")
    with h5py.File(p) as f:
        X = f["expression/X"][()]
        ids = read_strings(f["cells/cell_id"])
    rows = np.array([5, 3, 3, 170, 0, 42, 99])
    got = list(iter_batches(p, ["expression/X", "cells/cell_id"], batch_size=3, rows=rows))
    assert [len(b["rows"]) for b in got] == [3, 3, 1]
    assert all(b["expression/X"].shape[0] <= 3 for b in got)
    np.testing.assert_array_equal(np.concatenate([b["expression/X"] for b in got]), X[rows])
    assert list(np.concatenate([b["cells/cell_id"] for b in got])) == list(ids[rows])
    sh = list(iter_batches(p, ["cells/x"], batch_size=50, shuffle=True, seed=1))
    allrows = np.concatenate([b["rows"] for b in sh])
    assert sorted(allrows) == list(range(180)) and not np.array_equal(allrows, np.arange(180))


def test_iter_batches_reads_only_requested_rows(tmp_path, monkeypatch):
    p = write_tiny_store(tmp_path / "s.h5")
    seen = []
    orig = h5py.Dataset.__getitem__

    def spy(self, key):
        out = orig(self, key)
        if hasattr(out, "shape") and out.ndim >= 1:
            seen.append(out.shape[0])
        return out
    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    for _ in iter_batches(p, ["expression/X"], batch_size=7, rows=np.arange(0, 180, 5)):
        pass
    assert seen and max(seen) <= 7


def test_torch_dataset_workers_cover_all_rows(tmp_path):
    import torch.utils.data as tud

    p = write_tiny_store(tmp_path / "s.h5")
    ds = torch_dataset(p, ["cells/x"], batch_size=16)
    rows = np.concatenate([b["rows"] for b in tud.DataLoader(ds, batch_size=None, num_workers=2)])
    assert sorted(rows.tolist()) == list(range(180))


def test_put_fast_compression_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    X = np.round(rng.gamma(1.0, 1.0, size=(500, 40)), 2).astype(np.float32)
    with create_store(tmp_path / "c.h5") as f:
        ds = put(f, "X", X, description="x", compression="fast")
        assert ds.compression == "gzip" and ds.shuffle
    with h5py.File(tmp_path / "c.h5") as f:
        np.testing.assert_array_equal(f["X"][()], X)
        assert f["X"].id.get_storage_size() < X.nbytes  # actually smaller on disk
