"""The per-batch work of `tabst embed` (:mod:`tabst.embed`): patches and features of a fixed
block of rows, computed in the main process or in DataLoader workers, and the row-chunked
output datasets the pass fills."""
from __future__ import annotations

import math
import os
from collections import OrderedDict

import numpy as np

from .errors import TabstError
from .morphology import (
    MASK_FEATURES,
    batch_nucleus_features,
    patch_nucleus_features,
)
from .patches import crop_patch, fit_patch, resize_patch

MAX_OPEN_READERS = 4

class PatchBatches:
    """Map-style dataset: item ``k`` = batch of rows ``[k*B, min(N, (k+1)*B))``.

    Returns ``{"rows": int64 [b], "patches": uint8 [b, S, S, 3] (when want_patches),
    "features": float32 [b, K] (when features)}``; a :class:`TabstError` raised while reading
    is returned as ``{"error": err}`` so that the main process can raise it unchanged.
    Readers are opened lazily inside each worker process (at most :data:`MAX_OPEN_READERS`).
    """

    def __init__(self, store_path, *, samples, codes, x, y, images, sizes, resize, fit,
                 batch_size, want_patches, feature_cols, neigh, row_values):
        self.store_path = str(store_path)
        self.samples, self.codes, self.x, self.y = list(samples), codes, x, y
        self.images, self.sizes = images, sizes
        self.resize, self.fit, self.batch_size = int(resize or 0), fit, int(batch_size)
        self.want_patches, self.feature_cols, self.neigh = want_patches, feature_cols, neigh
        self.row_values = row_values
        self.n = len(codes)
        self._readers: OrderedDict = OrderedDict()

    def __len__(self):
        return math.ceil(self.n / self.batch_size)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_readers"] = OrderedDict()
        return d

    def _reader(self, code: int):
        from .images import open_sample_image

        r = self._readers.get(code)
        if r is None:
            s = self.samples[code]
            r = open_sample_image(self.store_path, self.images[s], s)
            self._readers[code] = r
            while len(self._readers) > MAX_OPEN_READERS:
                self._readers.popitem(last=False)[1].close()
        else:
            self._readers.move_to_end(code)
        return r

    def __getitem__(self, k: int) -> dict:
        try:
            return self._batch(int(k))
        except TabstError as e:
            return {"error": e}

    def _batch(self, k: int) -> dict:
        rows = np.arange(k * self.batch_size, min(self.n, (k + 1) * self.batch_size))
        natives, boxes = [], []
        with_mask = self.feature_cols is not None and self.feature_cols[0] == MASK_FEATURES[0]
        mask_feats = np.full((len(rows), len(MASK_FEATURES)), np.nan, np.float32) \
            if with_mask else None
        for j, i in enumerate(rows):
            code = int(self.codes[i])
            reader = self._reader(code)
            size = self.sizes[code]
            if reader.patch_based:
                fields = {f: self.row_values[f][i] for f in reader.row_fields}
                patch, box = fit_patch(reader.read_patch(int(i), fields), size, self.fit)
                if with_mask and hasattr(reader, "read_mask_patch"):
                    mask_feats[j] = patch_nucleus_features(
                        reader.read_mask_patch(int(i), fields), size)
            else:
                patch, box = crop_patch(reader, self.x[i], self.y[i], size)
            natives.append(patch)
            boxes.append(box)
        if with_mask:
            self._mask_features(rows, mask_feats)
        out = {"rows": rows}
        if self.feature_cols is not None:
            stain = _stain_batch(natives, boxes)
            parts = ([mask_feats] if with_mask else []) + [stain, self.neigh[rows]]
            out["features"] = np.concatenate(parts, axis=1).astype(np.float32)
        if self.want_patches:
            if self.resize:
                natives = [resize_patch(p, self.resize) for p in natives]
            out["patches"] = np.stack(natives)
        return out

    def _mask_features(self, rows, out) -> None:
        """Nucleus features of the batch's cells on whole-image readers, one sample at a time
        (:func:`tabst.morphology.batch_nucleus_features`)."""
        codes = self.codes[rows]
        for code in np.unique(codes):
            reader = self._reader(int(code))
            if reader.patch_based or not reader.has_mask:
                continue
            j = np.flatnonzero(codes == code)
            out[j] = batch_nucleus_features(reader.read_mask_region, self.x[rows[j]],
                                            self.y[rows[j]], self.sizes[int(code)])


def _stain_batch(patches, boxes) -> np.ndarray:
    """Stain features of a batch: one rgb2hed call over all pixels when shapes agree."""
    from skimage.color import rgb2hed

    from .morphology import stain_features

    if len({p.shape for p in patches}) != 1:
        return np.stack([stain_features(p, b) for p, b in zip(patches, boxes)])
    stack = np.stack(patches)
    hed = rgb2hed(stack.reshape(-1, 1, 3)).reshape(stack.shape)[..., :2]
    out = np.full((len(patches), 4), np.nan, dtype=np.float32)
    for j, (ys, xs) in enumerate(boxes):
        px = np.ascontiguousarray(hed[j, ys, xs]).reshape(-1, 2)
        if len(px):
            out[j] = (px[:, 0].mean(), px[:, 0].std(), px[:, 1].mean(), px[:, 1].std())
    return out


def _worker_init(_):
    import torch

    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def default_workers(device: str = "cpu", encoder: bool = True) -> int:
    """DataLoader workers. On the CPU none: the encoder's threads use every core, and a worker
    decoding beside them slows the forward pass by more than its own work (measured with
    ``benchmarks/embed_throughput.py``: batch loop 0.85 x raw forward in-process vs 0.72 x with
    one worker on 2 cores). With CUDA the cores are free while the GPU computes: 1 per 4
    cores (at least 1, at most 4). Without an encoder (the features pass alone) the workers
    compute the features in parallel: one per core but one (at most 4), none on 2 cores."""
    n = os.cpu_count() or 1
    if not encoder:
        return min(4, n - 1) if n > 2 else 0
    if device != "cuda" or n <= 1:
        return 0
    return max(1, min(4, n // 4))


def _create_rows_dataset(f, group: str, name: str, n: int, d: int, chunk_rows: int):
    """Allocate float32 [n, d] up front (early allocation, NaN fill): writes touch no metadata."""
    import h5py

    g = f.require_group(group)
    if name in g:
        del g[name]
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return g.create_dataset(name, shape=(n, d), dtype=np.float32,
                            chunks=(max(1, min(n, chunk_rows)), d), fillvalue=np.float32(np.nan),
                            dcpl=dcpl)
