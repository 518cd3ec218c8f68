"""Embedding throughput on a CUDA GPU for foundation-model-size encoders (bf16 autocast).

For each encoder (default: ``uni`` = ViT-L/16 and ``uni2h`` = ViT-g/14 at 224 px, random
weights: the speed does not depend on the values): raw forward patches/s on random uint8
tensors already on the GPU, at the batch ``tabst embed`` chooses from free memory, vs the
end-to-end ``tabst embed --no-features`` call (32-px crops from PNG files -> DataLoader
workers -> resize to 224 -> GPU -> store). One JSON line per encoder, then a summary line;
goal: end-to-end >= 0.8 x raw forward.

    python benchmarks/embed_gpu.py [--cells 16384] [--encoders uni,uni2h] [--dtype bfloat16]

Without a GPU it stops with a message, unless ``--allow-cpu`` (a smoke run of the script
itself, e.g. ``--allow-cpu --encoders timm:vit_tiny_patch16_224 --cells 64``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from embed_throughput import end_to_end, make_store  # noqa: E402


def raw_forward(encoder: str, dtype: str, device: str, n_batches: int) -> tuple[float, int]:
    import torch

    from tabst.encoders import build_encoder, resolve_spec
    from tabst.encoders.batching import auto_batch_size, autocast_dtype

    spec = replace(resolve_spec(encoder), cuda_dtype=dtype)
    model, _ = build_encoder(encoder, None, "random")
    model = model.to(device)
    side = spec.input_size or 224
    batch = auto_batch_size(model, spec, device, side)
    x = torch.randint(0, 256, (batch, side, side, 3), dtype=torch.uint8, device=device)
    def amp():
        return torch.autocast(device, dtype=autocast_dtype(dtype)) if device == "cuda" \
            else contextlib.nullcontext()

    with torch.inference_mode():
        with amp():
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n_batches):
            with amp():
                model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    del model, x
    if device == "cuda":
        torch.cuda.empty_cache()
    return batch * n_batches / dt, batch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=16384)
    ap.add_argument("--encoders", default="uni,uni2h")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    ap.add_argument("--raw-batches", type=int, default=20)
    ap.add_argument("--allow-cpu", action="store_true")
    args = ap.parse_args()

    import torch

    from tabst.embed import default_workers
    from tabst.encoders import resolve_spec

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.allow_cpu:
        raise SystemExit("embed_gpu.py: no CUDA GPU here (torch.cuda.is_available() is False). "
                         "Run it on a GPU machine, or pass --allow-cpu for a smoke run.")
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    workers = default_workers(device)
    results = []
    with tempfile.TemporaryDirectory(prefix="tabst-gpu-bench-") as td:
        store = make_store(Path(td) / "bench.h5", args.cells)
        for enc in [e.strip() for e in args.encoders.split(",") if e.strip()]:
            spec = resolve_spec(enc)
            raw, batch = raw_forward(enc, args.dtype, device, args.raw_batches)
            import tabst.encoders.registry as reg

            if not enc.startswith("timm:"):  # the run's autocast dtype = --dtype
                reg.REGISTRY[spec.name] = replace(reg.REGISTRY[spec.name], cuda_dtype=args.dtype)
            e2e, loop = end_to_end(store, workers, False, enc, None, batch)
            r = {"benchmark": "embed_gpu", "encoder": spec.name, "arch": spec.arch,
                 "device": gpu, "dtype": args.dtype if device == "cuda" else "float32",
                 "workers": workers, "cells": args.cells, "input_px": spec.input_size or 224,
                 "batch_size": batch, "raw_forward_patches_per_s": round(raw, 1),
                 "end_to_end_patches_per_s": round(e2e, 1), "loop_patches_per_s": round(loop, 1),
                 "end_to_end_over_raw": round(e2e / raw, 3),
                 "goal": "end_to_end >= 0.8 x raw forward", "met": bool(e2e >= 0.8 * raw)}
            results.append(r)
            print(json.dumps(r), flush=True)
    print(json.dumps({"benchmark": "embed_gpu", "device": gpu,
                      "encoders": [r["encoder"] for r in results],
                      "end_to_end_over_raw": {r["encoder"]: r["end_to_end_over_raw"]
                                              for r in results},
                      "goal": "end_to_end >= 0.8 x raw forward for every encoder",
                      "met": all(r["met"] for r in results)}))


if __name__ == "__main__":
    main()
