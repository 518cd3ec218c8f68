"""The mean-profile baseline: every cell gets the training mean of each gene."""
from __future__ import annotations

import numpy as np

from .base import TabstModel


class MeanModel(TabstModel):
    """Per-gene training mean (the floor every model must beat: cell-wise Spearman rewards the
    average profile).

    Parameters (``DEFAULTS``)
    -------------------------
    codec : "identity" (default) | "pca";  codec_k : 32;  seed : 0 (unused).

    Attributes
    ----------
    mean_ : [k] float64, training mean of each code (= each gene with the identity codec).

    ``explain``: all attributions are 0 and the base value is the mean (exactly additive).
    """

    name = "mean"
    DEFAULTS: dict = {}

    def _fit(self, X, Z, groups):
        self.mean_ = np.asarray(Z).mean(axis=0, dtype=np.float64)  # no float64 copy of Z

    def _predict(self, X):
        # the identity codec returns float32: fill that directly (no [n, G] float64 temporary)
        dt = np.float32 if self.codec_.kind == "identity" else np.float64
        return np.broadcast_to(self.mean_.astype(dt), (X.shape[0], self.mean_.shape[0])).copy()

    def _explain(self, X):
        values = np.zeros((X.shape[0], X.shape[1], self.mean_.shape[0]), dtype=np.float32)
        return values, self.mean_, "none (constant model: base = training mean)"

    def _state(self):
        return {"mean": self.mean_}

    def _set_state(self, arrays, meta):
        self.mean_ = arrays["mean"]
