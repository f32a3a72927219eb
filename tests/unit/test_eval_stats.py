"""The eval statistics against scipy (a test dependency only) and known values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from llmops.eval.stats import bootstrap_mean, paired, sign_flip_p, wilcoxon


def test_bootstrap_matches_scipy_percentile_interval() -> None:
    data = np.random.default_rng(1).binomial(1, 0.6, size=80).astype(float)
    ours = bootstrap_mean(data.tolist(), seed=3)
    theirs = stats.bootstrap((data,), np.mean, method="percentile", n_resamples=10_000, random_state=3)
    assert ours.mean == pytest.approx(data.mean())
    assert ours.low == pytest.approx(theirs.confidence_interval.low, abs=0.02)
    assert ours.high == pytest.approx(theirs.confidence_interval.high, abs=0.02)
    assert ours.low < ours.mean < ours.high


def test_bootstrap_is_seeded_and_degenerate_cases() -> None:
    data = np.random.default_rng(0).random(30).tolist()
    assert bootstrap_mean(data, seed=7) == bootstrap_mean(data, seed=7)
    assert bootstrap_mean(data, seed=7) != bootstrap_mean(data, seed=8)
    same = bootstrap_mean([1.0] * 10)
    assert (same.low, same.mean, same.high) == (1.0, 1.0, 1.0)
    assert bootstrap_mean([]).n == 0


@pytest.mark.parametrize("diffs", [
    [1.0, 1.0, 1.0, 0.0, -1.0, 1.0, 1.0, 0.5],
    [0.2, -0.1, 0.4, 0.3, -0.2, 0.1, 0.6, 0.0, 0.3, -0.4, 0.5, 0.2],
    [1.0, -1.0, 1.0, -1.0],
])
def test_sign_flip_exact_matches_scipy(diffs: list[float]) -> None:
    theirs = stats.permutation_test((np.array(diffs),), np.mean, permutation_type="samples",
                                    alternative="two-sided", n_resamples=np.inf)
    assert sign_flip_p(diffs) == pytest.approx(theirs.pvalue, rel=1e-9)


def test_sign_flip_monte_carlo_close_to_scipy() -> None:
    diffs = np.random.default_rng(5).normal(0.25, 1.0, size=60)
    theirs = stats.permutation_test((diffs,), np.mean, permutation_type="samples", alternative="two-sided",
                                    n_resamples=20_000, random_state=5)
    assert sign_flip_p(diffs.tolist(), seed=5) == pytest.approx(theirs.pvalue, abs=0.01)


def test_sign_flip_no_difference() -> None:
    assert sign_flip_p([0.0] * 12) == 1.0
    assert sign_flip_p([]) == 1.0


@pytest.mark.parametrize("diffs", [
    [1.0, 1.0, 1.0, 0.0, -1.0, 1.0, 1.0, 0.5, 1.0, -0.5, 1.0, 0.0, 1.0],  # ties and zeros
    np.random.default_rng(2).normal(0.3, 1.0, size=40).round(1).tolist(),
])
def test_wilcoxon_matches_scipy_normal_approximation(diffs: list[float]) -> None:
    theirs = stats.wilcoxon(diffs, zero_method="wilcox", correction=False, method="approx")
    statistic, p = wilcoxon(diffs)
    assert statistic == pytest.approx(theirs.statistic)
    assert p == pytest.approx(theirs.pvalue, rel=1e-9)


def test_paired_counts_and_direction() -> None:
    a = [0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    b = [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    result = paired(a, b)
    assert (result.wins, result.ties, result.losses) == (9, 2, 1)
    assert result.diff.mean == pytest.approx(8 / 12)
    assert result.diff.low > 0
    # 10 non-zero differences, 9 of +1 and one -1: |mean| as large or larger in 2 * 11 of 2^10 patterns
    assert result.p_sign_flip == pytest.approx(22 / 1024)
    with pytest.raises(ValueError, match="same length"):
        paired([1.0], [])
