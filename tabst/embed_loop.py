"""The batch loop of `tabst embed` (:mod:`tabst.embed`): patches from
:class:`tabst.patch_batches.PatchBatches` (in this process or DataLoader workers) through the
encoder, rows written in order, each batch flushed before the ``rows_done`` marker advances."""
from __future__ import annotations

import os
import signal
import time

import numpy as np

from .morphology import FEATURES_NAME
from .patch_batches import _worker_init

KILL_ENV = "TABST_EMBED_KILL_AFTER"  # tests: SIGKILL self after writing N batches' data


class SimulatedInterruption(RuntimeError):
    """Raised by the ``_stop_after_batches`` test hook (an interruption after a flushed batch)."""


def forward(model, patches, dev: str, precision: str) -> np.ndarray:
    """One batch through the encoder: uint8 ``[b, S, S, 3]`` (tensor or array) -> float32
    ``[b, D]``; on CUDA under autocast with the run's precision, cuDNN deterministic."""
    import torch

    xb = torch.as_tensor(patches)
    if dev != "cuda":
        with torch.inference_mode():
            return model(xb).float().numpy()
    from .encoders.batching import autocast_dtype

    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    with torch.inference_mode(), torch.autocast("cuda", dtype=autocast_dtype(precision)):
        return model(xb.to(dev, non_blocking=True)).float().cpu().numpy()


def run_batches(store_path, dataset, batch_ids, n, start, *, model, dev, emb_name, feat,
                 workers, precision, show_progress, stop_after, label, t_start):
    from contextlib import nullcontext

    from .store import now_utc, open_store
    from .util import progress

    workers = max(0, workers)
    if model is not None or workers:
        import torch
        from torch.utils.data import DataLoader

        loader = DataLoader(dataset, batch_size=None, sampler=list(batch_ids),
                            num_workers=workers, pin_memory=(dev == "cuda"),
                            worker_init_fn=_worker_init if workers else None,
                            prefetch_factor=4 if workers else None, persistent_workers=False)
        grad_off = torch.inference_mode()
    else:  # features only, in this process: no torch needed at all
        loader, grad_off = (dataset[k] for k in batch_ids), nullcontext()
    if model is not None:
        model = model.to(dev)
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    t_setup = time.perf_counter() - t_start
    it = iter(loader)  # workers fork here, before the store is opened for writing
    t0 = time.perf_counter()
    f = open_store(store_path, "r+")
    done_batches = 0
    try:
        ds_e = f[f"embeddings/{emb_name}"] if model is not None else None
        ds_f = f[f"features/{FEATURES_NAME}"] if feat else None
        with progress(unit="patches", transient=False) as bar, grad_off:
            task = bar.add_task(label, total=n, completed=start, visible=show_progress)
            if not show_progress:
                bar.stop()
            for b in it:
                if "error" in b:
                    raise b["error"]
                rows = np.asarray(b["rows"])
                lo, hi = int(rows[0]), int(rows[-1]) + 1
                if ds_e is not None:
                    ds_e[lo:hi] = forward(model, b["patches"], dev, precision)
                if ds_f is not None:
                    ds_f[lo:hi] = np.asarray(b["features"], dtype=np.float32)
                f.flush()
                done_batches += 1
                if kill_after and done_batches >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)  # tests: data written, marker not
                for ds in (ds_e, ds_f):
                    if ds is not None and int(ds.attrs["rows_done"]) < hi:
                        ds.attrs["rows_done"] = hi
                f.flush()
                bar.update(task, completed=hi)
                if stop_after is not None and done_batches >= stop_after:
                    raise SimulatedInterruption(f"stopped after {done_batches} batches (test hook)")
        loop_s = time.perf_counter() - t0
        for ds in (ds_e, ds_f):
            if ds is not None:
                ds.attrs["rows_done"] = n
                ds.attrs["completed_utc"] = now_utc()
                # timing of the last (possibly resumed) run: rows it computed, setup and loop time
                ds.attrs["last_run_rows"] = n - start
                ds.attrs["last_run_setup_s"] = round(t_setup, 3)
                ds.attrs["last_run_loop_s"] = round(loop_s, 3)
                ds.attrs["complete"] = True
        f.flush()
    finally:
        f.close()
        del it
