"""Batch size and precision of an embedding pass, chosen to fit the device.

CPU: small batches (256 patches up to 64 px, then fewer in proportion to the pixels: 16 at
224 px), float32. CUDA: the encoder's autocast dtype from the registry (float16, or bfloat16
where the model card says so) and a batch sized from the GPU's free memory: a probe forward of
a few patches measures the peak memory per patch, and the batch is the largest power of two that
fits in 60 % of what is free (8 .. 1024). The choice is recorded with the embedding, and a
resumed run reuses the recorded batch (so the result stays bit-identical).
"""
from __future__ import annotations

from .registry import EncoderSpec

CPU_BASE, CPU_BASE_SIDE = 256, 64
CUDA_FRACTION, CUDA_MIN, CUDA_MAX, PROBE = 0.6, 8, 1024, 4


def precision_of(spec: EncoderSpec, device: str) -> str:
    return f"{spec.cuda_dtype} autocast" if device == "cuda" else "float32"


def autocast_dtype(precision: str):
    import torch

    return torch.bfloat16 if precision.startswith("bfloat16") else torch.float16


def _pow2_floor(v: float) -> int:
    p = 1
    while p * 2 <= v:
        p *= 2
    return p


def cpu_batch_size(side: int) -> int:
    side = max(1, int(side))
    if side <= CPU_BASE_SIDE:
        return CPU_BASE
    return max(4, _pow2_floor(CPU_BASE * (CPU_BASE_SIDE / side) ** 2))


def auto_batch_size(model, spec: EncoderSpec, device: str, side: int) -> int:
    """Patches per batch for ``model`` on ``device`` at ``side`` px input."""
    if device != "cuda":
        return cpu_batch_size(side)
    import torch

    model = model.to("cuda")
    free, _ = torch.cuda.mem_get_info()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    x = torch.zeros(PROBE, side, side, 3, dtype=torch.uint8, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=autocast_dtype(
            precision_of(spec, device))):
        model(x)
    torch.cuda.synchronize()
    per_patch = max(1, (torch.cuda.max_memory_allocated() - base) / PROBE)
    del x
    torch.cuda.empty_cache()
    return int(min(CUDA_MAX, max(CUDA_MIN, _pow2_floor(CUDA_FRACTION * free / per_patch))))
