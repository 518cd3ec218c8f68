"""`tabst compare --cluster`: the (fold x model) fits of :mod:`tabst.compare` as Dask tasks.

Per fold the client builds the features as usual and scatters the fold's arrays once
(training features, targets, groups, test features); every model that uses the run's feature
set and is not tuned becomes one task that fits it and predicts the test rows on a worker
(one thread) and returns the fitted model and its predictions. Everything else stays on the
client exactly as without a cluster: tuned models (their Optuna studies live in the run
folder), models with their own feature set (``context``, built from the store), the scoring,
``predictions.h5``, the saved models and the report. The results are those of a
single-process run (same parameters, same seeds, same rows).
"""
from __future__ import annotations

import time

import numpy as np


def fit_predict(model, X, Y, X_test, groups, fit_kw: dict):
    """Fit ``model`` and predict ``X_test`` (None: no prediction) -> (model, P, predict_s)."""
    model.fit(X, Y, groups=groups, **fit_kw)
    if X_test is None:
        return model, None, 0.0
    t1 = time.perf_counter()
    P = np.asarray(model.predict(X_test), dtype=np.float32)
    return model, P, time.perf_counter() - t1


def submit_fits(client, names, build, X, Y, X_test, groups, fit_kw) -> dict:
    """Futures of :func:`fit_predict` for the models ``build(name)`` returns (None = stays on
    the client: tuned, own features, or a model that cannot be built, whose error the client
    then records as usual). The arrays are scattered once for all of them."""
    models = {}
    for name in names:
        try:
            m = build(name)
        except Exception:  # recorded when the client builds it again in its own loop
            m = None
        if m is not None:
            models[name] = m
    if not models:
        return {}
    data = [None if a is None else client.scatter(a, hash=False) for a in (X, Y, X_test, groups)]
    return {name: client.submit(fit_predict, m, *data, fit_kw, pure=False,
                                key=f"fit-{name}-{time.time_ns()}")
            for name, m in models.items()}
