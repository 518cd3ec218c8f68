"""`tabst embed --cluster`: the batch loop of :mod:`tabst.embed_loop` spread over Dask workers.

The rows are cut into the same fixed batches ``[k*B, (k+1)*B)`` as the single-process loop and
the batches into shards of consecutive batches (:func:`shard_batches`). Each shard is one task:
the worker crops the patches of its rows from the sample images (:class:`PatchBatches`, shipped
once to every worker; the workers never open the HDF5 store), computes the features, runs the
encoder batch by batch with one thread, and returns the rows. The client is the one writer: it
puts each shard into the store as it arrives, flushes, then marks its batches done in the
``batches_done`` bitmap (packed bits, an attr beside ``rows_done``, which stays the contiguous
prefix a single-process resume reads). An interrupted run (client stopped, worker killed)
resumes by shard; since every batch is computed alone with the same boundaries, the result is
bit-identical to a single-process run on the same kind of device.

The encoder's weights travel as a state dict (workers rebuild the architecture with random
weights and load it: no hub or weights file needed there); Hugging Face transformers models
are rebuilt on the worker from the same ``--weights``. A worker uses CUDA when the run's device
is ``cuda`` (``auto`` = every worker has a GPU).
"""
from __future__ import annotations

import os
import time

import numpy as np

from .errors import TabstError
from .morphology import FEATURES_NAME

SHARD_ROWS = 4096  # rows per shard (rounded to whole batches)
KILL_SHARD_ENV = "TABST_EMBED_KILL_SHARD"  # tests: the worker of shard K kills itself
_MODELS: dict = {}  # per worker process: token -> built encoder


def shard_batches(batch_ids, batch_size: int, shard_rows: int | None = None) -> list[list[int]]:
    """Consecutive batch ids grouped into shards of about ``shard_rows`` (:data:`SHARD_ROWS`)
    rows, at least one batch each."""
    per = max(1, int(shard_rows or SHARD_ROWS) // max(1, batch_size))
    ids = list(batch_ids)
    return [ids[i:i + per] for i in range(0, len(ids), per)]


def done_bits(ds, n_batches: int) -> np.ndarray:
    """bool [n_batches]: batches of ``ds`` already written (bitmap, or below ``rows_done``)."""
    done = np.zeros(n_batches, dtype=bool)
    bits = ds.attrs.get("batches_done")
    if bits is not None and int(ds.attrs.get("batches_done_n", -1)) == n_batches:
        done |= np.unpackbits(np.asarray(bits, dtype=np.uint8), count=n_batches).astype(bool)
    bs = int(ds.attrs.get("batch_size", 0) or 0)
    if bs:
        done[: int(ds.attrs.get("rows_done", 0)) // bs] = True
    return done


def _mark(ds, done: np.ndarray, batch_size: int, n: int) -> None:
    ds.attrs["batches_done"] = np.packbits(done)
    ds.attrs["batches_done_n"] = len(done)
    prefix = len(done) if done.all() else int(np.argmin(done))
    ds.attrs["rows_done"] = min(n, prefix * batch_size)


def cluster_device(client, device: str) -> str:
    """The device the workers embed on: ``auto`` = cuda when every worker has one."""
    def has_cuda():
        import torch

        return bool(torch.cuda.is_available())

    flags = list(client.run(has_cuda).values())
    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if flags and all(flags) else "cpu"
    if device == "cuda" and not all(flags):
        raise TabstError("--device cuda, but some Dask workers see no CUDA GPU. Use --device "
                         "cpu (or auto), or run the workers on GPU nodes.")
    if device not in ("cpu", "cuda"):
        raise TabstError(f"--device must be auto, cpu or cuda, got {device!r}")
    return device


def _probe_batch(encoder, layer, weights, kwargs, spec, side) -> int:
    from .encoders import build_encoder
    from .encoders.batching import auto_batch_size

    w = weights if spec.family == "transformers" else "random"  # memory does not need weights
    model, _ = build_encoder(encoder, layer, w, None, kwargs)
    return auto_batch_size(model, spec, "cuda", side)


def worker_batch_size(client, encoder, layer, weights, kwargs, spec, side) -> int:
    """:func:`tabst.encoders.batching.auto_batch_size` measured on one worker's GPU."""
    return int(client.submit(_probe_batch, encoder, layer, weights, kwargs, spec, side,
                             pure=False).result())


def _worker_model(recipe: dict):
    model = _MODELS.get(recipe["token"])
    if model is None:
        import torch

        from .encoders import build_encoder

        torch.set_num_threads(1)
        if recipe["state"] is None:
            model, _ = build_encoder(recipe["encoder"], recipe["layer"], recipe["weights"],
                                     recipe["sha256"], recipe["kwargs"])
        else:
            model, _ = build_encoder(recipe["encoder"], recipe["layer"], "random", None,
                                     recipe["kwargs"])
            model.load_state_dict(recipe["state"])
        _MODELS.clear()
        _MODELS[recipe["token"]] = model = model.to(recipe["device"])
    return model


def embed_shard(dataset, recipe, batch_ids, kill: bool = False) -> list[dict]:
    """Run on a worker: the batches ``batch_ids`` of ``dataset`` -> ``[{rows, emb, features}]``."""
    if kill:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    out = []
    model = _worker_model(recipe) if recipe is not None else None
    for k in batch_ids:
        b = dataset[k]
        if "error" in b:
            raise b["error"]
        item = {"rows": np.asarray(b["rows"]), "features": b.get("features")}
        if model is not None:
            from .embed_loop import forward

            item["emb"] = forward(model, b["patches"], recipe["device"], recipe["precision"])
        out.append(item)
    return out


def model_recipe(model, info, *, encoder, layer, weights, sha256, kwargs, device,
                 precision) -> dict:
    """What a worker needs to rebuild the client's encoder exactly."""
    ship = info.extra["family"] != "transformers"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()} if ship else None
    token = f"{info.encoder}|{layer}|{info.weights_id}|{info.weights_sha256}|{time.time_ns()}"
    return {"encoder": encoder, "layer": layer, "weights": weights, "sha256": sha256,
            "kwargs": kwargs, "state": state, "device": device, "precision": precision,
            "token": token}


def run_shards(client, store_path, dataset, batch_ids, n, *, recipe, emb_name, feat,
               show_progress, label, t_start):
    """Embed ``batch_ids`` on the cluster's workers and write them (the client is the writer)."""
    from distributed import as_completed

    from .store import now_utc, open_store
    from .util import progress

    bs = dataset.batch_size
    n_batches = len(dataset)
    with open_store(store_path) as f:
        names = ([f"embeddings/{emb_name}"] if emb_name else []) + \
            ([f"features/{FEATURES_NAME}"] if feat else [])
        done = {nm: done_bits(f[nm], n_batches) for nm in names}
    pending = [k for k in batch_ids if not all(done[nm][k] for nm in names)]
    shards = shard_batches(pending, bs)
    kill = int(os.environ.get(KILL_SHARD_ENV, "-1") or -1)
    t_setup = time.perf_counter() - t_start
    t0 = time.perf_counter()
    # one copy on every worker (a list: a dict would be scattered value by value), so a dead
    # worker loses no input of the others
    data, rec = client.scatter([dataset, recipe], broadcast=True, hash=False)
    futures = {client.submit(embed_shard, data, rec, ids, kill=(j == kill), pure=False): j
               for j, ids in enumerate(shards)}
    failure = None
    n_done = int(min(d.sum() for d in done.values())) * bs
    f = open_store(store_path, "r+")
    try:
        with progress(unit="patches", transient=False) as bar:
            task = bar.add_task(label, total=n, completed=min(n, n_done), visible=show_progress)
            if not show_progress:
                bar.stop()
            for fut in as_completed(list(futures)):
                j = futures[fut]
                try:
                    parts = fut.result()
                except TabstError:
                    raise
                except Exception as e:  # a dead worker (KilledWorker) or a failed task
                    failure = failure or (j, e)
                    continue
                for p in parts:
                    lo, hi = int(p["rows"][0]), int(p["rows"][-1]) + 1
                    if emb_name:
                        f[f"embeddings/{emb_name}"][lo:hi] = p["emb"]
                    if feat:
                        f[f"features/{FEATURES_NAME}"][lo:hi] = np.asarray(p["features"],
                                                                           dtype=np.float32)
                f.flush()
                for nm in names:
                    done[nm][shards[j]] = True
                    _mark(f[nm], done[nm], bs, n)
                f.flush()
                bar.advance(task, sum(len(p["rows"]) for p in parts))
        if failure is not None:
            j, e = failure
            rows = shards[j][0] * bs, min(n, (shards[j][-1] + 1) * bs)
            raise TabstError(f"a Dask worker failed on rows {rows[0]:,}-{rows[1]:,} (shard "
                             f"{j + 1} of {len(shards)}): {type(e).__name__}: {e}. The shards "
                             "that finished are in the store: rerun the same command to resume.")
        loop_s = time.perf_counter() - t0
        for nm in names:
            ds = f[nm]
            ds.attrs["rows_done"] = n
            ds.attrs["completed_utc"] = now_utc()
            ds.attrs["last_run_rows"] = sum(min(n, (k + 1) * bs) - k * bs for k in pending)
            ds.attrs["last_run_setup_s"] = round(t_setup, 3)
            ds.attrs["last_run_loop_s"] = round(loop_s, 3)
            ds.attrs["last_run_cluster"] = f"{len(client.scheduler_info()['workers'])} workers"
            ds.attrs["complete"] = True
        f.flush()
    finally:
        for fut in futures:
            fut.cancel()
        f.close()
