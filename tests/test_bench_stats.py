"""The statistics behind every comparison sentence of the benchmark reports."""

import math

import numpy as np
import pytest

from benchmarks._lib import stats


def test_the_usual_median_and_linear_quantiles():
    assert stats.median([1.0, 2.0, 3.0, 10.0]) == 2.5  # the mean of the two middle values, not a nearest rank
    assert stats.median([0.5, float("nan"), 0.7]) == 0.7  # NaN counts as the worst (largest) loss
    assert stats.median([0.5, float("nan"), 0.7], higher_is_better=True) == 0.5  # ... or the lowest accuracy
    assert stats.quantile([1.0, 2.0, float("inf"), float("inf")], 0.75) == math.inf  # numpy gives nan here
    assert stats.quantile([1.0, 2.0, 3.0, 5.0], 0.25) == pytest.approx(1.75)
    assert stats.med_iqr([3.0, 1.0, 2.0]) == (2.0, 1.5, 2.5)
    assert stats.cell([0.1, 0.2, 0.3], 100, 1, fixed=True) == "20.0 [15.0, 25.0]"


def test_sign_test_and_wilson_interval_known_values():
    assert stats.sign_test(10, 0) == pytest.approx(2 / 1024)
    assert stats.sign_test(3, 3) == 1.0 and stats.sign_test(0, 0) == 1.0
    assert stats.sign_test(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    lo, hi = stats.wilson(14, 20)
    assert (lo, hi) == (pytest.approx(0.4810, abs=1e-4), pytest.approx(0.8545, abs=1e-4))
    assert stats.wilson(0, 20)[0] == 0.0 and stats.wilson(0, 20)[1] == pytest.approx(0.1611, abs=1e-4)
    assert str(stats.Count(14, 20)) == "14/20 [48%, 85%]"


def test_bootstrap_interval_of_the_median():
    values = np.arange(1.0, 41.0)
    lo, hi = stats.bootstrap_median(values, seed=0)
    assert lo < 20.5 < hi and hi - lo < 15
    assert stats.bootstrap_median(values, seed=0) == (lo, hi)  # reproducible


def test_a_clear_paired_win_is_stated_with_its_numbers():
    a, b = 0.1 + 0.001 * np.arange(20), 1.0 + 0.002 * np.arange(20)
    paired = stats.compare(a, b, "lyapunov-gauss", "he", higher_is_better=False)
    assert paired.verdict == "lyapunov-gauss" and paired.wins == 20 and paired.p < 1e-5
    assert paired.hi < 0  # a - b: lower is better
    sentence = paired.sentence("test MSE")
    assert sentence.startswith("lyapunov-gauss beats he in test MSE: median 0.11 vs 1.02, paired difference -0.909 [")
    assert "(95% bootstrap), 20 seeds better, 0 worse, 0 tied, sign test p = 1.9e-06, n = 20 seeds" in sentence
    flipped = stats.compare(b, a, "he", "lyapunov-gauss", higher_is_better=False)
    assert flipped.verdict == "lyapunov-gauss"
    assert flipped.sentence("test MSE").startswith("lyapunov-gauss beats he in test MSE: median 0.11 vs 1.02, paired "
                                                   "difference -0.909 [")


def test_a_median_decided_by_a_split_scheme_is_not_a_win():
    """The issue's score_learning case: one scheme trains on half the seeds (~0.52) and fails on the
    other half (~1.0); another sits at ~0.78 on every seed. Its nearest-rank median (1.0) lost to 0.78,
    the usual median (0.76) wins; paired over seeds the two are not distinguishable."""
    rng = np.random.default_rng(1)
    split = np.concatenate([0.52 + 0.01 * rng.random(10), 1.0 + 0.01 * rng.random(10)])
    steady = 0.78 + 0.01 * rng.random(20)
    assert np.quantile(split, 0.5, method="nearest") > stats.median(steady) > stats.median(split)
    paired = stats.compare(steady, split, "lyapunov-orth", "stiefel", higher_is_better=False)
    assert paired.verdict is None and paired.p == 1.0
    assert paired.sentence("relative score error").startswith(
        "lyapunov-orth and stiefel are not distinguishable in relative score error (median")


def test_three_seeds_can_never_make_a_win():
    paired = stats.compare([0.9, 0.91, 0.92], [0.1, 0.11, 0.12], "a", "b", higher_is_better=True)
    assert paired.wins == 3 and paired.p == 0.25 and paired.verdict is None


def test_diverged_runs_count_as_the_worst_and_equal_infinities_tie():
    paired = stats.compare([float("inf"), 0.2, float("nan")], [float("inf"), 0.3, 0.1], "a", "b",
                           higher_is_better=False)
    assert (paired.wins, paired.losses, paired.ties) == (1, 1, 1)


def test_counts_and_fractions_are_compared_with_exact_tests():
    a = np.array([True] * 14 + [False] * 6)
    b = np.array([False] * 18 + [True] * 2)
    text = stats.compare_counts(a, b, "lyapunov-gauss", "he")
    assert text.startswith("lyapunov-gauss is trained more often than he: lyapunov-gauss 14/20 [48%, 85%], he 2/20")
    assert "only on 14 seeds" in text
    assert "not distinguishable" in stats.compare_counts(a[:3], b[:3], "x", "y")
    assert stats.compare_fractions(5, 100, 50, 100, "x", "y", "collapsed nets").startswith(
        "y has more collapsed nets than x")
    assert "not distinguishable" in stats.compare_fractions(5, 100, 7, 100, "x", "y", "collapsed nets")


def test_best_and_ranking_use_the_median():
    values = {"a": [1.0, 2.0, 9.0, 10.0], "b": [4.0, 5.0, 5.0, 7.0]}  # a's lower middle value (2) would win
    assert stats.best(values, higher_is_better=False) == "b"
    assert stats.ranking(values, higher_is_better=True).startswith("a 5.5 [")


def test_rank_correlation_matches_the_gaussian_closed_form():
    # for a bivariate normal with correlation r, Spearman's rho = (6 / pi) asin(r / 2)
    rng = np.random.default_rng(1)
    r = -0.6
    z = rng.standard_normal((4000, 2))
    x, y = z[:, 0], r * z[:, 0] + np.sqrt(1 - r * r) * z[:, 1]
    rho, lo, hi = stats.rank_correlation(x, y, resamples=300)
    expected = 6 / np.pi * np.arcsin(r / 2)  # -0.5824
    assert abs(rho - expected) < 0.03
    assert lo < expected < hi and hi - lo < 0.08
    assert stats.rank_correlation([1, 2, 3, 4], [10, 20, 30, 45], resamples=50)[0] == pytest.approx(1.0)
    assert math.isnan(stats.rank_correlation([1, 2], [2, 1])[0])
    assert "negative" in stats.correlation_sentence(x, y, "x vs y")
    assert "no monotone" in stats.correlation_sentence(x, rng.standard_normal(4000), "x vs noise")
