"""Uncertainty of what reports print: bootstrap confidence intervals and rank groups.

Per-image metrics (LPIPS, PSNR, SSIM, per-image correctness) are means over evaluation units — (seed, image)
pairs; a pooled accuracy such as attribute accuracy is a weighted mean (weights = objects per image). Their
interval is the percentile bootstrap of that (weighted) mean over the units. Two methods measured on the same
units (same seeds, same conditions) are compared by a *paired* bootstrap of the difference of their means:
each resample takes the same units for both, so the noise they share (a hard prompt) cancels. Speedups are
ratios of median latencies of interleaved repeats, resampled by repeat pairs.

Every function takes a ``seed`` so that a report is the same each time it is made.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LEVEL = 0.95  # every interval printed is a 95 % interval
RESAMPLES = 2000


def _weighted_means(values: np.ndarray, weights: np.ndarray | None, index: np.ndarray) -> np.ndarray:
    """Mean of ``values`` (weighted by ``weights``) over each row of unit indices ``index`` (B × n)."""
    if weights is None:
        return values[index].mean(axis=1)
    w = weights[index]
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (values[index] * w).sum(axis=1) / total, np.nan)


def _resample(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _paired(a: Sequence[float], b: Sequence[float], mismatch: str) -> tuple[np.ndarray, np.ndarray]:
    """Two per-unit sequences as float arrays, refused when they do not cover the same number of units."""
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if va.shape != vb.shape:
        raise ValueError(f"{mismatch}, got {len(va)} and {len(vb)}")
    return va, vb


def _percentiles(estimates: np.ndarray, level: float) -> tuple[float, float]:
    finite = estimates[~np.isnan(estimates)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def mean_ci(
    values: Sequence[float],
    weights: Sequence[float] | None = None,
    *,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the (weighted) mean of per-unit ``values``; (nan, nan) for < 2 units.
    Infinite values (PSNR of identical images) give infinite bounds, as the mean itself is infinite."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float("nan"), float("nan")
    w = None if weights is None else np.asarray(weights, dtype=float)
    with np.errstate(invalid="ignore"):
        return _percentiles(_weighted_means(v, w, _resample(len(v), resamples, seed)), level)


def paired_difference_ci(
    a: Sequence[float],
    b: Sequence[float],
    weights_a: Sequence[float] | None = None,
    weights_b: Sequence[float] | None = None,
    *,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Interval of mean(a) − mean(b) over the same units, resampled together (a[i] and b[i]: unit i)."""
    va, vb = _paired(a, b, "paired values need the same units")
    if len(va) < 2:
        return float("nan"), float("nan")
    index = _resample(len(va), resamples, seed)
    wa = None if weights_a is None else np.asarray(weights_a, dtype=float)
    wb = None if weights_b is None else np.asarray(weights_b, dtype=float)
    with np.errstate(invalid="ignore"):
        return _percentiles(_weighted_means(va, wa, index) - _weighted_means(vb, wb, index), level)


def ratio_of_medians_ci(
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Interval of median(numerator) / median(denominator), repeat pairs resampled together — the speedup
    of interleaved timings (numerator: the full model's seconds, denominator: the method's)."""
    num, den = _paired(numerator, denominator, "paired timings need the same repeats")
    if len(num) < 2:
        return float("nan"), float("nan")
    index = _resample(len(num), resamples, seed)
    return _percentiles(np.median(num[index], axis=1) / np.median(den[index], axis=1), level)


def replicate_mean_ci(values: Sequence[float], *, level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean of a few independent replicates (e.g. one paired difference per training
    seed): with 3 replicates a bootstrap has only 10 distinct resamples and is far too narrow, the t interval
    (T − 1 degrees of freedom) is exact for normal replicates. (nan, nan) below 2 replicates."""
    from scipy.stats import t

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float("nan"), float("nan")
    half = float(t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return float(v.mean() - half), float(v.mean() + half)


def units_to_separate(difference: float, interval: tuple[float, float], units: int) -> float:
    """About how many evaluation units (images × seeds) would make a paired difference's interval exclude 0,
    if the difference stayed as measured: the half-width shrinks as 1/√n, so n × (half-width / |difference|)².
    inf for a zero difference; below ``units`` when the interval already excludes 0."""
    half = (interval[1] - interval[0]) / 2
    if not np.isfinite(half) or units < 1:
        return float("nan")
    if difference == 0:
        return float("inf")
    return float(units * (half / abs(difference)) ** 2)


def rank_groups(separable: Sequence[bool]) -> list[int]:
    """Competition ranks (1, 2, 2, 4, …) of items already sorted best first; ``separable[k]`` says whether item
    k + 1 is told apart from item k (their difference interval excludes 0). An item not separable from the
    one above it shares that item's rank."""
    ranks = [1]
    for position, apart in enumerate(separable, start=2):
        ranks.append(position if apart else ranks[-1])
    return ranks


def excludes_zero(interval: tuple[float, float]) -> bool:
    """Whether a difference interval lies wholly on one side of 0 (a nan interval decides nothing)."""
    low, high = interval
    return bool(low > 0 or high < 0)
