"""Metric contracts (DESIGN.md) against hand-computed cases, and fold construction."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from tabst.errors import TabstError
from tabst.evaluate import (
    cell_spearman_scores,
    cellwise_spearman,
    genewise_pearson,
    genewise_pearson_detail,
    hierarchical_mean,
    make_folds,
    mean_sd,
    mse,
    parse_folds,
    score_fold,
)


# ---------------------------------------------------------------- cell-wise Spearman
def test_cell_spearman_hand_computed_with_ties():
    # truth ranks (average for ties): [1, 2.5, 2.5, 4]; pred ranks: [1, 2, 3, 4]
    t = np.array([[0.0, 1.0, 1.0, 5.0]])
    p = np.array([[0.1, 0.2, 0.3, 0.4]])
    rt = np.array([1, 2.5, 2.5, 4])
    rp = np.array([1, 2, 3, 4.0])
    a, b = rt - rt.mean(), rp - rp.mean()
    expected = (a @ b) / np.sqrt((a @ a) * (b @ b))  # = 0.9486832980505138
    got = cell_spearman_scores(t, p)
    assert got[0] == pytest.approx(expected, abs=1e-12)
    assert got[0] == pytest.approx(0.9486832980505138, abs=1e-12)
    assert got[0] == pytest.approx(spearmanr(t[0], p[0]).statistic, abs=1e-12)


def test_cell_spearman_perfect_reversed_constant_nan():
    t = np.array([[1, 2, 3, 4],       # perfect
                  [1, 2, 3, 4],       # reversed
                  [2, 2, 2, 2],       # constant truth -> 0
                  [1, 2, 3, 4],       # constant prediction -> 0
                  [1, 2, np.nan, 4],  # NaN in truth -> 0
                  [1, 2, 3, 4]], dtype=float)  # NaN in prediction -> 0
    p = np.array([[10, 20, 30, 40],
                  [4, 3, 2, 1],
                  [1, 2, 3, 4],
                  [7, 7, 7, 7],
                  [1, 2, 3, 4],
                  [1, np.nan, 3, 4]], dtype=float)
    got = cell_spearman_scores(t, p)
    np.testing.assert_allclose(got, [1, -1, 0, 0, 0, 0], atol=1e-12)
    assert np.isfinite(got).all()


def test_cell_spearman_matches_scipy_random():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 4, size=(30, 9)).astype(float)  # many ties
    p = rng.normal(size=(30, 9))
    got = cell_spearman_scores(t, p)
    ref = [spearmanr(t[i], p[i]).statistic for i in range(30)]
    ref = np.nan_to_num(np.asarray(ref), nan=0.0)
    np.testing.assert_allclose(got, ref, atol=1e-10)


def test_cellwise_spearman_averaging_order_cells_regions_samples():
    # per-cell scores: S0 region a: [1, 1, 1] (3 cells), region b: [-1] (1 cell); S1: [0, 0]
    t = np.array([[1, 2, 3]] * 6, dtype=float)
    p = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [3, 2, 1], [5, 5, 5], [5, 5, 5]], dtype=float)
    samples = np.array(["S0", "S0", "S0", "S0", "S1", "S1"])
    regions = np.array(["a", "a", "a", "b", "a", "a"])
    # regions = samples: S0 mean over 4 cells = 0.5, S1 = 0 -> 0.25
    assert cellwise_spearman(t, p, samples) == pytest.approx(0.25)
    # with regions: S0 = mean(1, -1) = 0; S1 = 0 -> 0.0 (a pooled mean would give 2/6)
    assert cellwise_spearman(t, p, samples, regions) == pytest.approx(0.0)
    # region "a" in S0 and "a" in S1 are different regions (nested in samples)
    assert hierarchical_mean([1, 1, 1, -1, 0, 0], samples, regions) == pytest.approx(0.0)
    # sample average, not cell average: unequal sample sizes
    s2 = np.array(["S0"] * 5 + ["S1"])
    assert cellwise_spearman(t, p, s2) == pytest.approx(((3 - 1 + 0) / 5 + 0) / 2)


# ---------------------------------------------------------------- gene-wise Pearson
def test_genewise_pearson_hand_computed_and_constant_gene():
    t = np.array([[1, 5, 2], [2, 5, 4], [3, 5, 6], [4, 5, 8.5]])
    p = np.array([[2, 1, 1], [4, 2, 2], [6, 3, 3], [8, 4, 3]])
    d = genewise_pearson_detail(t, p)
    assert d.per_gene[0] == pytest.approx(1.0)
    assert d.per_gene[1] == 0.0  # constant truth gene counts 0 ...
    assert d.constant_truth.tolist() == [False, True, False]  # ... and is reported
    assert d.per_gene[2] == pytest.approx(pearsonr(t[:, 2], p[:, 2]).statistic, abs=1e-12)
    assert genewise_pearson(t, p) == pytest.approx((1 + 0 + d.per_gene[2]) / 3)


def test_genewise_pearson_constant_prediction_is_zero():
    t = np.array([[1.0, 2], [2, 1], [3, 5]])
    p = np.tile([[0.3, 0.7]], (3, 1))  # the mean baseline predicts a constant per gene
    d = genewise_pearson_detail(t, p)
    np.testing.assert_array_equal(d.per_gene, [0.0, 0.0])
    assert d.constant_pred.all() and not d.constant_truth.any()
    assert genewise_pearson(t, p) == 0.0


def test_genewise_pearson_nan_gives_zero_not_nan():
    t = np.array([[1.0, 2], [2, np.nan], [3, 5]])
    p = np.array([[1.0, 2], [2, 3], [3, 4]])
    d = genewise_pearson_detail(t, p)
    assert d.per_gene[0] == pytest.approx(1.0)
    assert d.per_gene[1] == 0.0


# ---------------------------------------------------------------- MSE
def test_mse_per_cell_then_samples():
    t = np.zeros((3, 2))
    p = np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 0.0]])  # per-cell MSE: 5, 4, 0
    samples = np.array(["A", "A", "B"])
    assert mse(t, p, samples) == pytest.approx(((5 + 4) / 2 + 0) / 2)
    assert mse(t, p) == pytest.approx(3.0)


def test_score_fold_per_sample_and_per_gene():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(20, 5))
    p = t + 0.1 * rng.normal(size=(20, 5))
    s = np.array(["A"] * 12 + ["B"] * 8)
    sc = score_fold(t, p, s)
    assert set(sc.per_sample) == {"A", "B"}
    assert sc.per_sample["A"]["n_cells"] == 12
    assert sc.cellwise_spearman == pytest.approx(
        (sc.per_sample["A"]["cellwise_spearman"] + sc.per_sample["B"]["cellwise_spearman"]) / 2)
    assert sc.per_gene.per_gene.shape == (5,)
    np.testing.assert_allclose(sc.per_gene_mse, ((t - p) ** 2).mean(0))
    assert sc.metrics()["n_const_truth_genes"] == 0


def test_mean_sd():
    assert mean_sd([1.0, 3.0]) == (2.0, pytest.approx(np.sqrt(2)))
    assert mean_sd([0.5]) == (0.5, 0.0)
    m, s = mean_sd([])
    assert np.isnan(m) and np.isnan(s)


# ---------------------------------------------------------------- folds
def _check_no_mixing(folds, samples):
    for f in folds:
        tr = set(samples[f.train])
        te = set(samples[f.test])
        assert not (tr & te), f"fold {f.k} mixes samples {tr & te}"
        assert len(np.intersect1d(f.train, f.test)) == 0


def test_loso_folds_never_mix_samples():
    samples = np.repeat(["S0", "S1", "S2", "S3"], [5, 7, 3, 9])
    folds = make_folds(samples, "leave-one-sample-out")
    assert len(folds) == 4
    _check_no_mixing(folds, samples)
    assert sorted(s for f in folds for s in f.test_samples) == ["S0", "S1", "S2", "S3"]
    assert all(len(f.train) + len(f.test) == len(samples) for f in folds)


def test_group_kfold_never_mixes_samples_and_covers_all_rows():
    rng = np.random.default_rng(0)
    samples = rng.choice([f"S{i}" for i in range(7)], size=200)
    folds = make_folds(samples, "group-kfold:3")
    assert len(folds) == 3
    _check_no_mixing(folds, samples)
    np.testing.assert_array_equal(np.sort(np.concatenate([f.test for f in folds])), np.arange(200))


def test_group_column_keeps_patients_together():
    samples = np.repeat(["a1", "a2", "b1", "c1"], 4)
    patients = np.repeat(["A", "A", "B", "C"], 4)
    folds = make_folds(samples, "leave-one-sample-out", groups=patients)
    assert len(folds) == 3
    _check_no_mixing(folds, patients)
    with pytest.raises(TabstError, match="several groups"):
        make_folds(np.repeat(["a1", "a2"], 4), groups=np.array(list("AABBCCCC")))


def test_random_split_needs_unsafe_flag():
    samples = np.repeat(["S0", "S1"], 10)
    with pytest.raises(TabstError, match="unsafe-random-split"):
        make_folds(samples, "random:4")
    folds = make_folds(samples, "random:4", unsafe_random_split=True, seed=3)
    assert len(folds) == 4
    assert any(set(samples[f.train]) & set(samples[f.test]) for f in folds)  # it does mix


def test_fold_errors():
    with pytest.raises(TabstError, match="at least 2"):
        make_folds(np.repeat(["S0"], 5))
    with pytest.raises(TabstError, match="group-kfold:5 needs at least 5"):
        make_folds(np.repeat(["S0", "S1"], 5), "group-kfold:5")
    with pytest.raises(TabstError, match="unknown fold scheme"):
        parse_folds("kfold")
    assert parse_folds("group-kfold:4") == ("group-kfold", 4)


def test_scores_are_the_same_in_small_row_chunks(monkeypatch):
    """Scoring streams the cells in chunks (a million cells need no float64 copy): chunks of 7
    rows give the scores of one chunk, NaN / inf / constant genes and cells included."""
    from tabst import evaluate

    rng = np.random.default_rng(3)
    t = rng.normal(size=(60, 9)).astype(np.float32)
    p = (t + rng.normal(size=t.shape)).astype(np.float32)
    t[:, 1] = 3.0
    p[:, 2] = 1.5
    t[5, 3], p[7, 4], t[9, :] = np.nan, np.inf, 3.0  # a constant cell, gene 1 stays constant
    s = np.repeat(["a", "b", "c"], 20)
    ref = evaluate.score_fold(t, p, s)
    monkeypatch.setattr(evaluate, "ROW_CHUNK", 7)
    got = evaluate.score_fold(t, p, s)
    assert got.metrics() == pytest.approx(ref.metrics(), rel=1e-12, nan_ok=True)
    np.testing.assert_allclose(got.per_gene.per_gene, ref.per_gene.per_gene, atol=1e-12)
    assert (got.per_gene.constant_truth == ref.per_gene.constant_truth).all()
    assert (got.per_gene.constant_pred == ref.per_gene.constant_pred).all()
    assert got.per_gene.constant_truth[1] and got.per_gene.constant_pred[2]
    assert not got.per_gene.constant_truth[3]  # a NaN column is not constant
    np.testing.assert_allclose(got.per_gene_mse, ref.per_gene_mse, atol=1e-12)
    assert 0 < got.per_gene.per_gene[0] < 1
