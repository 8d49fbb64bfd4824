"""Bootstrap intervals over test queries and seeds, for the quality report.

Every quantity is a mean of per-query values (R@K hits as 0/1, category P@10, AP). A method run
with S seeds gives an (S, Q) matrix over the same Q test queries. One bootstrap replicate draws Q
queries with replacement (shared by every method: the comparison is paired) and, per method, S
seeds with replacement; replicate 0 is the point estimate on the data as measured.
"""

from __future__ import annotations

import numpy as np

from adapters.stats import Interval

N_BOOT = 2000
LEVEL = 0.95


class Resampler:
    """One fixed set of query draws, reused for every method of a (shift, train size)."""

    def __init__(self, n_queries: int, n_boot: int = N_BOOT, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        identity = np.arange(n_queries)[None, :]
        self.queries = np.concatenate([identity, self.rng.integers(0, n_queries, size=(n_boot, n_queries))])

    def replicates(self, matrix: np.ndarray) -> np.ndarray:
        """Replicate means (index 0: the point estimate) of an (S, Q) matrix or a (Q,) vector."""
        m = np.atleast_2d(np.asarray(matrix, dtype=np.float64))
        n_seeds = m.shape[0]
        # Mean over queries first per seed (NaNs, e.g. queries without a category, left out).
        with np.errstate(invalid="ignore"):
            per_seed = np.nanmean(m[:, self.queries], axis=2).T  # (B+1, S)
        seed_draw = self.rng.integers(0, n_seeds, size=(len(self.queries), n_seeds))
        seed_draw[0] = np.arange(n_seeds)
        return np.take_along_axis(per_seed, seed_draw, axis=1).mean(axis=1)


def interval(replicates: np.ndarray, level: float = LEVEL) -> Interval:
    tail = (1 - level) / 2
    rest = replicates[1:][~np.isnan(replicates[1:])]
    return Interval(float(replicates[0]), float(np.quantile(rest, tail)), float(np.quantile(rest, 1 - tail)))


def recovered(method: np.ndarray, zero: np.ndarray, upper: np.ndarray) -> Interval | None:
    """(method - zero) / (upper - zero) from matched replicates; None when the upper bound gained nothing."""
    gain_up = upper - zero
    if gain_up[0] <= 0:
        return None
    ratio = (method - zero) / np.where(gain_up > 0, gain_up, np.nan)
    return interval(ratio)
