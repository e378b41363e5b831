"""Paired statistics for comparing two configurations on the same test images.

- Mean difference with a percentile bootstrap confidence interval: resample the paired
  differences with replacement (a seeded NumPy Generator, so a report is reproducible) and take
  the percentiles of the resampled means. A few lines rather than scipy.stats.bootstrap: its
  resampling stream is a scipy internal, and its BCa interval is undefined when every difference
  is equal (all zero), which is a common case here (two configurations that predict alike).
- Wilcoxon signed-rank test (scipy.stats.wilcoxon, two-sided, zero differences dropped).
  With m non-zero differences the smallest two-sided p the test can give is 2 / 2**m, so with
  m < 6 it can never reach 0.05; the verdict says so instead of "no difference".
- Holm's step-down adjustment for the several comparisons of one report.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

CHUNK = 2000  # resamples drawn at once: bounds memory for large test sets


def bootstrap_mean_ci(values, *, confidence: float = 0.95, n_resamples: int = 10_000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (NaNs dropped)."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, CHUNK):
        stop = min(start + CHUNK, n_resamples)
        means[start:stop] = v[rng.integers(0, v.size, (stop - start, v.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def min_wilcoxon_p(m: int) -> float:
    """Smallest two-sided exact p-value the signed-rank test can reach with m non-zero pairs."""
    return min(1.0, 2.0 ** (1 - m)) if m > 0 else 1.0


def paired_comparison(candidate, baseline, *, alpha: float = 0.05, n_resamples: int = 10_000,
                      seed: int = 0, higher_is_better: bool = True) -> dict:
    """candidate - baseline on paired per-image values: mean difference, bootstrap CI, Wilcoxon."""
    a, b = np.asarray(candidate, np.float64), np.asarray(baseline, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    n, nonzero = int(d.size), int(np.count_nonzero(d))
    out = {"n_pairs": n, "n_nonzero": nonzero, "mean_diff": math.nan, "ci_low": math.nan,
           "ci_high": math.nan, "p_value": math.nan, "verdict": ""}
    if n == 0:
        out["verdict"] = "no common test images: not compared"
        return out
    out["mean_diff"] = float(d.mean())
    out["ci_low"], out["ci_high"] = bootstrap_mean_ci(d, confidence=1 - alpha,
                                                      n_resamples=n_resamples, seed=seed)
    if nonzero == 0:
        out["p_value"] = 1.0
        out["verdict"] = "identical on every test image"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy notes when ties force the normal approximation
        out["p_value"] = float(stats.wilcoxon(a[keep], b[keep]).pvalue)
    out["verdict"] = verdict(out["p_value"], out["mean_diff"], nonzero, alpha, higher_is_better)
    return out


def verdict(p: float, mean_diff: float, nonzero: int, alpha: float = 0.05,
            higher_is_better: bool = True) -> str:
    if min_wilcoxon_p(nonzero) > alpha:
        return (f"too few differing images ({nonzero}) for the test to reach {alpha:g}: "
                "inconclusive")
    if not p < alpha:
        return f"no significant difference at {alpha:g}"
    better = (mean_diff > 0) == higher_is_better
    return f"significantly {'better' if better else 'worse'} at {alpha:g}"


def holm(p_values) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaNs stay NaN and do not count)."""
    p = np.asarray(p_values, np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()
