"""The statistics of a report: a seeded percentile bootstrap for means and mean differences, and two paired
tests on per-row differences: the sign-flip permutation test (exact up to 2^16 sign patterns, Monte Carlo
beyond) and the Wilcoxon signed-rank test (normal approximation, zeros dropped, tie-corrected). Both are
checked against scipy in the tests; scipy itself is not needed at run time."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
EXACT_UP_TO = 16


@dataclass(frozen=True)
class Estimate:
    n: int
    mean: float
    low: float
    high: float


def bootstrap_mean(values: Sequence[float], seed: int = 0, resamples: int = RESAMPLES,
                   level: float = 0.95) -> Estimate:
    """The mean and its percentile-bootstrap interval (same seed, same interval)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return Estimate(0, math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(int(data.size), float(data.mean()), float(low), float(high))


def sign_flip_p(diffs: Sequence[float], seed: int = 0, resamples: int = 20_000) -> float:
    """Two-sided p-value of mean(diffs) == 0 under random sign flips of each difference."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0 or not np.any(d):
        return 1.0
    observed = abs(d.mean()) * (1 - 1e-9)  # float noise must not split equal statistics
    if d.size <= EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs((signs * d).mean(axis=1)) >= observed))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(resamples, d.size))
    hits = int(np.sum(np.abs((signs * d).mean(axis=1)) >= observed))
    return (hits + 1) / (resamples + 1)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks, 1-based (ties share the mean of their positions)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size)
    sorted_values = values[order]
    i = 0
    while i < values.size:
        j = i
        while j + 1 < values.size and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def wilcoxon(diffs: Sequence[float]) -> tuple[float, float]:
    """(statistic, two-sided p): min of the positive and negative rank sums, normal approximation."""
    d = np.asarray(diffs, dtype=float)
    d = d[d != 0]
    n = d.size
    if n == 0:
        return 0.0, 1.0
    ranks = _ranks(np.abs(d))
    r_plus, r_minus = float(ranks[d > 0].sum()), float(ranks[d < 0].sum())
    _, counts = np.unique(np.abs(d), return_counts=True)
    variance = n * (n + 1) * (2 * n + 1) / 24 - float(np.sum(counts ** 3 - counts)) / 48
    if variance <= 0:
        return min(r_plus, r_minus), 1.0
    z = (r_plus - n * (n + 1) / 4) / math.sqrt(variance)
    return min(r_plus, r_minus), math.erfc(abs(z) / math.sqrt(2))


@dataclass(frozen=True)
class Paired:
    n: int
    diff: Estimate  # b - a
    p_sign_flip: float
    p_wilcoxon: float
    wins: int  # b better
    ties: int
    losses: int


def paired(a: Sequence[float], b: Sequence[float], seed: int = 0) -> Paired:
    """Compare b with a on the same rows (b - a): the mean difference with its CI, two p-values,
    and b's wins, ties and losses."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    return Paired(int(d.size), bootstrap_mean(d.tolist(), seed), sign_flip_p(d.tolist(), seed),
                  wilcoxon(d.tolist())[1], int(np.sum(d > 0)), int(np.sum(d == 0)), int(np.sum(d < 0)))
