"""Integrated gradients with a completeness correction, shared by the neural models (TabNet,
context): the midpoint Riemann sum of the gradient along the straight path from a baseline,
then the residual ``f(x) - f(b) - Σ IG`` spread over the features in proportion to their
|IG|, so the attributions add up exactly; the size of that correction is reported."""
from __future__ import annotations

import numpy as np


def integrated_gradients(f, X, baseline, steps: int, device) -> np.ndarray:
    """IG [n, F, k] of ``f`` (tensor [m, F] -> [m, k]) at the rows of ``X`` (array or tensor)
    from ``baseline`` [F], ``steps`` midpoints, in chunks of about 8,192 path points."""
    import torch

    t = torch.as_tensor((np.arange(steps) + 0.5) / steps, dtype=torch.float32, device=device)
    b = torch.as_tensor(baseline, dtype=torch.float32, device=device)
    n, F = X.shape
    ig = None
    chunk = max(1, 8192 // steps)
    for s in range(0, n, chunk):
        x = torch.as_tensor(X[s:s + chunk], dtype=torch.float32, device=device)
        c = x.shape[0]
        path = (b[None, None, :] + t[None, :, None] * (x - b)[:, None, :]).reshape(c * steps, F)
        path.requires_grad_(True)
        out = f(path)                                                   # [c·steps, k]
        k = out.shape[1]
        if ig is None:
            ig = np.zeros((n, F, k))
        for j in range(k):
            (g,) = torch.autograd.grad(out[:, j].sum(), path, retain_graph=j < k - 1)
            gm = g.reshape(c, steps, F).mean(dim=1)
            ig[s:s + c, :, j] = ((x - b) * gm).double().cpu().numpy()
    return ig if ig is not None else np.zeros((n, F, 0))


def complete(ig: np.ndarray, target: np.ndarray):
    """(corrected IG, max per-row relative residual, total residual share) for ``target`` =
    f(x) - f(b) [n, k]. The total share (Σ|residual| / Σ|f(x) - f(b)|) weighs rows by the size of
    their change; the max is dominated by rows that barely change."""
    F = ig.shape[1]
    resid = target - ig.sum(axis=1)
    scale = np.maximum(np.abs(target), 1e-6 * max(1.0, float(np.abs(target).max(initial=0))))
    max_resid = float(np.max(np.abs(resid) / scale, initial=0.0))
    total = float(np.abs(resid).sum() / max(float(np.abs(target).sum()), 1e-12))
    w = np.abs(ig)
    wsum = w.sum(axis=1, keepdims=True)
    w = np.where(wsum > 0, w / np.where(wsum > 0, wsum, 1.0), 1.0 / F)
    return ig + w * resid[:, None, :], max_resid, total
