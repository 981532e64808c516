"""95% intervals for the numbers the report computes from samples.

- ``wilson``: the Wilson (1927) score interval of a share, k of n (a test accuracy, a hit rate);
- ``t_interval``: Student's t interval of a mean over a few repeats (e.g. draws of training images);
- ``bootstrap``: the percentile bootstrap interval of any statistic (median, mean, share) over the
  items of a sample, resampled with replacement.

numpy only.
"""
from __future__ import annotations

import numpy as np

from zfcore.errors import ArgumentError, check_count

Z975 = 1.959964            # the normal's 0.975 quantile
# Student's t, 0.975 quantile, for 1..30 degrees of freedom (beyond 30: the normal's 1.96 is within 2%)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)


def wilson(k, n, z: float = Z975):
    """(share, low, high): k successes of n trials and the Wilson score interval (95% for the default
    z). ``k`` and ``n`` may be arrays of one shape (the results are then arrays); 0 <= k <= n, n > 0."""
    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    if np.any(n <= 0) or np.any(k < 0) or np.any(k > n):
        raise ArgumentError(f"need 0 <= k <= n and n > 0; got k={k}, n={n}")
    p = k / n
    d = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / d
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    if p.ndim == 0:
        return float(p), float(mid - half), float(mid + half)
    return p, mid - half, mid + half


def t_interval(values):
    """(mean, low, high): the mean of ``values`` (M,), M >= 2, and its 95% Student-t interval."""
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or len(v) < 2:
        raise ArgumentError(f"t_interval needs at least two values, got shape {v.shape}")
    t = T975[len(v) - 2] if len(v) - 1 <= len(T975) else Z975
    half = t * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def bootstrap(values, stat=np.mean, n_boot: int = 2000, level: float = 0.95, seed=0):
    """(estimate, low, high): ``stat`` (a reduction taking ``axis``, e.g. ``np.median``) of ``values``
    (N,) or (N, K) over the items (axis 0), and its percentile bootstrap interval from ``n_boot``
    resamples of the N items. ``seed``: an int or a ``numpy.random.Generator``. Floats for (N,)
    values, (K,) arrays for (N, K)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim not in (1, 2) or len(v) == 0:
        raise ArgumentError(f"values must be (N,) or (N, K) with N > 0, got shape {v.shape}")
    if not 0 < level < 1:
        raise ArgumentError(f"level must be in (0, 1), got {level}")
    idx = np.random.default_rng(seed).integers(0, len(v), (check_count(n_boot, "n_boot", 1), len(v)))
    boot = stat(v[idx], axis=1)
    a = (1 - level) / 2
    est, lo, hi = stat(v, axis=0), np.quantile(boot, a, axis=0), np.quantile(boot, 1 - a, axis=0)
    if v.ndim == 1:
        return float(est), float(lo), float(hi)
    return est, lo, hi
