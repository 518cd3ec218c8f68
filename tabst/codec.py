"""Target codecs: let a model learn a few components instead of every gene.

A codec is fitted on the training targets of a fold only. ``encode`` maps genes → codes,
``decode`` maps codes → genes. Both codecs are affine, so additive attributions map back exactly:
if ``z = base_z + Σ_f v_f`` then ``decode(z) = decode_base(base_z) + Σ_f decode_attributions(v)_f``
(the mean goes into the base value; attributions only see the linear part).

- :class:`IdentityCodec`: codes are the genes themselves.
- :class:`PCACodec`: ``z = (y − mean) @ components.T``, ``y ≈ mean + z @ components``; the
  components are the top-k eigenvectors of the training covariance of Y (float64, exact, via
  ``numpy.linalg.eigh`` of the G×G covariance — cheap for G in the hundreds).
"""
from __future__ import annotations

import numpy as np

from .errors import TabstError

BLOCK = 16384  # rows per float64 block of the PCA codec (no float64 copy of a million rows)


class IdentityCodec:
    """Codes are the targets themselves (no learning)."""

    kind = "identity"

    def __init__(self):
        pass

    @property
    def label(self) -> str:
        return ""

    def fit(self, Y):
        Y = np.asarray(Y)
        self.n_targets_ = int(Y.shape[1])
        self.k_ = self.n_targets_
        return self

    def encode(self, Y):
        return np.asarray(Y, dtype=np.float32)

    def decode(self, Z):
        return np.asarray(Z, dtype=np.float32)

    def decode_attributions(self, values):
        """values [n, F, k] → [n, F, G] (identity)."""
        return values

    def decode_base(self, base):
        return np.asarray(base, dtype=np.float64)

    # --- persistence -------------------------------------------------------------------------
    def state(self) -> dict:
        return {"codec_n_targets": np.asarray(self.n_targets_)}

    @classmethod
    def from_state(cls, state: dict) -> "IdentityCodec":
        c = cls()
        c.n_targets_ = c.k_ = int(state["codec_n_targets"])
        return c


class PCACodec:
    """PCA of the targets: a model learns ``k`` component scores, predictions map back to genes.

    Parameters
    ----------
    k : int
        Number of components. Clamped to ``min(n_rows, n_targets)`` at fit (``k_`` is the number
        actually used).

    Attributes
    ----------
    mean_ : [G] float64, training mean of each gene.
    components_ : [k, G] float64, orthonormal rows (top-k eigenvectors of the covariance).
    explained_variance_ratio_ : [k] float64.
    """

    kind = "pca"

    def __init__(self, k: int = 32):
        if int(k) < 1:
            raise TabstError(f"codec_k must be >= 1 (got {k}).")
        self.k = int(k)

    @property
    def label(self) -> str:
        return f"pca{self.k}"

    def fit(self, Y):
        Y = np.asarray(Y)
        if Y.ndim != 2:
            raise TabstError(f"targets must be 2-D [n, G], got shape {Y.shape}.")
        n, G = Y.shape
        # mean and covariance in float64, accumulated in row blocks: no float64 copy of Y
        total = np.zeros(G)
        for s in range(0, n, BLOCK):
            B = np.asarray(Y[s:s + BLOCK], dtype=np.float64)
            if not np.isfinite(B).all():
                raise TabstError("targets contain NaN or inf; use only rows with expression "
                                 "(tabst.dataset.rows_with_expression).")
            total += B.sum(axis=0)
        self.n_targets_ = G
        self.k_ = int(min(self.k, G, max(n, 1)))
        self.mean_ = total / max(n, 1)
        C = np.zeros((G, G))
        for s in range(0, n, BLOCK):
            B = np.asarray(Y[s:s + BLOCK], dtype=np.float64) - self.mean_
            C += B.T @ B
        evals, evecs = np.linalg.eigh(C)
        order = np.argsort(evals)[::-1][: self.k_]
        comps = evecs[:, order].T
        # deterministic sign: the largest-magnitude loading of each component is positive
        sign = np.sign(comps[np.arange(self.k_), np.abs(comps).argmax(axis=1)])
        sign[sign == 0] = 1
        self.components_ = comps * sign[:, None]
        total = max(float(np.trace(C)), 1e-300)
        self.explained_variance_ratio_ = np.clip(evals[order], 0, None) / total
        return self

    def encode(self, Y):
        Y = np.asarray(Y)
        out = np.empty((Y.shape[0], self.k_), dtype=np.float32)
        for s in range(0, Y.shape[0], BLOCK):
            B = np.asarray(Y[s:s + BLOCK], dtype=np.float64) - self.mean_
            out[s:s + BLOCK] = B @ self.components_.T
        return out

    def decode(self, Z):
        Z = np.asarray(Z)
        out = np.empty((Z.shape[0], self.n_targets_), dtype=np.float32)
        for s in range(0, Z.shape[0], BLOCK):
            out[s:s + BLOCK] = self.mean_ + np.asarray(Z[s:s + BLOCK], np.float64) \
                @ self.components_
        return out

    def decode_attributions(self, values):
        """Attributions on the codes [n, F, k] → attributions on the genes [n, F, G].

        SHAP values are linear in the model output, so ``v_G = v_k @ components``.
        """
        values = np.asarray(values)
        out = np.tensordot(values.astype(np.float64), self.components_, axes=([2], [0]))
        return out.astype(values.dtype if values.dtype.kind == "f" else np.float32)

    def decode_base(self, base):
        """Base value on the codes [k] → on the genes [G]: ``mean + base_k @ components``."""
        return self.mean_ + np.asarray(base, dtype=np.float64) @ self.components_

    # --- persistence -------------------------------------------------------------------------
    def state(self) -> dict:
        return {"codec_k": np.asarray(self.k), "codec_mean": self.mean_,
                "codec_components": self.components_,
                "codec_evr": self.explained_variance_ratio_}

    @classmethod
    def from_state(cls, state: dict) -> "PCACodec":
        c = cls(int(state["codec_k"]))
        c.mean_ = np.asarray(state["codec_mean"])
        c.components_ = np.asarray(state["codec_components"])
        c.explained_variance_ratio_ = np.asarray(state["codec_evr"])
        c.k_ = int(c.components_.shape[0])
        c.n_targets_ = int(c.components_.shape[1])
        return c


def make_codec(kind: str | None, k: int = 32):
    """``"identity"`` (or None) → :class:`IdentityCodec`; ``"pca"`` → :class:`PCACodec(k)`.

    ``"pca32"`` is accepted as a shorthand for ``kind="pca", k=32``.
    """
    kind = "identity" if kind in (None, "", "none") else str(kind).lower()
    if kind == "identity":
        return IdentityCodec()
    if kind.startswith("pca"):
        rest = kind[3:].lstrip("-_")
        return PCACodec(int(rest) if rest else int(k))
    raise TabstError(f"unknown target codec {kind!r}: use 'identity' or 'pca' (with codec_k).")


def codec_from_state(kind: str, state: dict):
    return IdentityCodec.from_state(state) if kind == "identity" else PCACodec.from_state(state)
