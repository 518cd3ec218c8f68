"""tabst's cell-wise Spearman and MSE equal the Crunch 1 scorer's, region by region.

The scorer (crunchdao/competitions, competitions/broad-1/scoring/scoring.py) scores each region
of a sample with ``_spearman`` / ``_mean_squared_error`` (equal weight per cell), averages the
regions of a sample, then the samples (its virtual 'ALL' target). Its formulas are written here
from that public definition:

- ``_spearman``: ``rankdata`` along each cell's genes (average ranks) for truth A and prediction
  B; ``mean((rA - mean(rA)) * (rB - mean(rB)), axis=1) / (std(rA, axis=1) * std(rB, axis=1))``
  with ``mean`` over the *whole* rank matrix and population ``std``; NaN -> 0; mean over cells.
- ``_mean_squared_error``: mean over cells of the per-cell mean over genes of (A - B)^2.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

from tabst.evaluate import cellwise_spearman, mse, score_fold


def scorer_spearman(pred: np.ndarray, truth: np.ndarray) -> float:
    n = len(truth)
    w = np.ones(n) / n
    ra, rb = rankdata(truth, axis=1), rankdata(pred, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (np.multiply(ra - np.mean(ra), rb - np.mean(rb)).mean(axis=1)
                / (np.std(ra, axis=1) * np.std(rb, axis=1)))
    corr[np.isnan(corr)] = 0
    return float(np.sum(w * corr))


def scorer_mse(pred: np.ndarray, truth: np.ndarray) -> float:
    n = len(truth)
    return float(np.sum(np.ones(n) / n * np.square(truth - pred).mean(axis=1)))


def scorer_scores(truth, pred, samples, regions) -> tuple[dict, dict]:
    """Per sample: mean over its regions of the region scores; plus 'ALL' = mean over samples."""
    df = pd.DataFrame({"s": samples, "r": regions})
    sp, ms = {}, {}
    for s, part in df.groupby("s", sort=True):
        rs, rm = [], []
        for _, cells in part.groupby("r", sort=True):
            i = cells.index.to_numpy()
            rs.append(scorer_spearman(pred[i], truth[i]))
            rm.append(scorer_mse(pred[i], truth[i]))
        sp[s], ms[s] = float(np.mean(rs)), float(np.mean(rm))
    sp["ALL"], ms["ALL"] = float(np.mean(list(sp.values()))), float(np.mean(list(ms.values())))
    return sp, ms


def _data(seed: int, n: int = 900, G: int = 40):
    """Crunch-like values: many zeros (ties), log-normalised levels, some constant cells,
    predictions with ties and with a constant row; three samples with unequal regions."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(0.6, 1.5, size=(1, G)), size=(n, G))
    truth = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 100)
    truth[:7] = 0.0                                 # cells with no counts: constant rows
    pred = np.round(truth * 0.4 + rng.normal(0.3, 0.4, size=(n, G)).clip(0), 1)  # ties
    pred[10] = 0.25                                 # a constant prediction
    samples = rng.choice(["UC1_I", "UC6_NI", "DC5"], size=n, p=[0.5, 0.3, 0.2])
    regions = np.array([f"{s}_r{k}" for s, k in zip(samples, rng.choice(4, size=n,
                                                                        p=[0.6, 0.2, 0.15, 0.05]))],
                       dtype=object)
    return truth, pred, samples, regions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cellwise_spearman_and_mse_equal_the_scorer(seed):
    truth, pred, samples, regions = _data(seed)
    sp, ms = scorer_scores(truth, pred, samples, regions)
    assert abs(cellwise_spearman(truth, pred, samples, regions) - sp["ALL"]) < 1e-9
    assert abs(mse(truth, pred, samples, regions) - ms["ALL"]) < 1e-9
    fs = score_fold(truth, pred, samples, regions)        # what `tabst compare` records
    assert abs(fs.cellwise_spearman - sp["ALL"]) < 1e-9 and abs(fs.mse - ms["ALL"]) < 1e-9
    for s in ("UC1_I", "UC6_NI", "DC5"):
        assert abs(fs.per_sample[s]["cellwise_spearman"] - sp[s]) < 1e-9
        assert abs(fs.per_sample[s]["mse"] - ms[s]) < 1e-9


def test_regions_change_the_average_as_the_scorer_says():
    """With unequal regions the per-region average differs from the plain per-sample mean, so
    the test above would notice regions being ignored."""
    truth, pred, samples, regions = _data(5)
    sp, _ = scorer_scores(truth, pred, samples, regions)
    plain = cellwise_spearman(truth, pred, samples)  # region = sample
    assert abs(plain - sp["ALL"]) > 1e-4
    assert abs(cellwise_spearman(truth, pred, samples, regions) - sp["ALL"]) < 1e-9
