"""An LRU cache of whole decoded chunks for reading many small windows of a chunked array.

Zarr arrays (a SpatialData zarr, a TIFF opened through ``tifffile``'s zarr store) pay a large
fixed cost per read call (zarr v3 goes through its event loop for every slice) and decode a
whole chunk even for a 32 px window. Cells close in the store are close in the image, so the
windows of neighbouring cells share chunks: each chunk is read and decoded once while it stays
in the cache.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np


class ChunkCache:
    """Read rectangular (y, x) regions of a zarr array through an LRU cache of whole chunks.

    Patches of neighbouring cells share chunks: each chunk is decoded once while it stays in
    the cache (``max_bytes``), instead of once per patch.
    """

    def __init__(self, arr, y_axis: int, x_axis: int, max_bytes: int):
        self.arr, self.ya, self.xa = arr, y_axis, x_axis
        self.shape = tuple(int(s) for s in arr.shape)
        ch = arr.chunks
        self.cy, self.cx = int(ch[y_axis]), int(ch[x_axis])
        self.max_bytes = max_bytes
        self._cache: OrderedDict = OrderedDict()
        self._bytes = 0

    def _chunk(self, iy: int, ix: int) -> np.ndarray:
        key = (iy, ix)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        sl = [slice(None)] * len(self.shape)
        sl[self.ya] = slice(iy * self.cy, min(self.shape[self.ya], (iy + 1) * self.cy))
        sl[self.xa] = slice(ix * self.cx, min(self.shape[self.xa], (ix + 1) * self.cx))
        data = np.asarray(self.arr[tuple(sl)])
        self._cache[key] = data
        self._bytes += data.nbytes
        while self._bytes > self.max_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.nbytes
        return data

    def read(self, y0: int, x0: int, h: int, w: int, out: np.ndarray, put) -> None:
        """Fill ``out`` ([h, w, ...], zero outside) via ``put(out_slice, chunk_view)``."""
        H, W = self.shape[self.ya], self.shape[self.xa]
        ya, yb = max(0, y0), min(H, y0 + h)
        xa, xb = max(0, x0), min(W, x0 + w)
        if ya >= yb or xa >= xb:
            return
        for iy in range(ya // self.cy, (yb - 1) // self.cy + 1):
            for ix in range(xa // self.cx, (xb - 1) // self.cx + 1):
                c = self._chunk(iy, ix)
                cy0, cx0 = iy * self.cy, ix * self.cx
                sy0, sy1 = max(ya, cy0), min(yb, cy0 + self.cy)
                sx0, sx1 = max(xa, cx0), min(xb, cx0 + self.cx)
                sl = [slice(None)] * c.ndim
                sl[self.ya] = slice(sy0 - cy0, sy1 - cy0)
                sl[self.xa] = slice(sx0 - cx0, sx1 - cx0)
                put((slice(sy0 - y0, sy1 - y0), slice(sx0 - x0, sx1 - x0)), c[tuple(sl)])
