"""95 % bootstrap intervals for retrieval results: one method's mean, and the paired gain of two.

Queries are the resampling unit (a collection's test captions); two methods evaluated on the same
test pairs are compared *paired* (the same resampled queries for both), which is what makes a
small but consistent gain visible and a tie look like a tie.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr[~np.isnan(arr)]


def bootstrap_mean(values: Sequence[float] | np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of the mean of per-query values (NaNs ignored)."""
    arr = _clean(values)
    if len(arr) == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(n_boot, len(arr)))].mean(axis=1)
    tail = (1 - level) / 2
    return Interval(float(arr.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail)))


def paired_bootstrap_gain(baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray,
                          n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Interval of mean(candidate - baseline) over the same queries, resampled together.

    ``baseline`` and ``candidate`` are per-query results on the same test pairs in the same order
    (e.g. R@1 hits as 0/1 from ``(ranks <= 1)``, or category precision@10). Queries where either
    is NaN are dropped from both.
    """
    a = np.asarray(baseline, dtype=np.float64).ravel()
    b = np.asarray(candidate, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired results differ in length: {a.shape} vs {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    return bootstrap_mean(b[keep] - a[keep], n_boot, seed, level)


def ratio_interval(numerators: np.ndarray, denominators: np.ndarray, level: float = 0.95) -> Interval | None:
    """Interval of mean(num)/mean(den) from matched bootstrap replicates (e.g. a recovered fraction).

    ``numerators[i]`` and ``denominators[i]`` must come from the same resample. None when the
    point denominator is not positive (nothing to recover).
    """
    num, den = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    point_den = float(den[0])
    if point_den <= 0:
        return None
    ratios = num[1:] / np.where(den[1:] > 0, den[1:], np.nan)
    ratios = ratios[~np.isnan(ratios)]
    tail = (1 - level) / 2
    return Interval(float(num[0] / point_den), float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail)))
