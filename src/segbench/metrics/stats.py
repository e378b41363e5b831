"""Paired statistics for comparing two configurations on the same test images.

- Mean difference with a percentile bootstrap confidence interval: resample the paired
  differences with replacement (a seeded NumPy Generator, so a report is reproducible) and take
  the percentiles of the resampled means. A few lines rather than scipy.stats.bootstrap: its
  resampling stream is a scipy internal, and its BCa interval is undefined when every difference
  is equal (all zero), which is a common case here (two configurations that predict alike).
- Wilcoxon signed-rank test (scipy.stats.wilcoxon, two-sided, zero differences dropped).
  With m non-zero differences the smallest two-sided p the test can give is 2 / 2**m, so with
  m < 6 it can never reach 0.05; the verdict says so instead of "no difference".
- Holm's step-down adjustment for the several comparisons of one report. A verdict follows the
  p-value printed beside it after the correction (`holm_verdicts`), never the raw one: a raw
  p of 0.03 that Holm lifts to 0.06 is not a difference at 0.05.
- With several runs (seeds, folds) per configuration, a two-level bootstrap
  (`hierarchical_comparison`): each resample draws the test cases with replacement (the same
  draw for both configurations: the comparison stays paired) and, independently for each
  configuration, its runs with replacement; the statistic is the difference of the grand means.
  Its percentile interval and two-sided bootstrap p-value carry both sources of variance: which
  images were tested and which seed (or fold) trained the model. With one run per
  configuration it reduces to the paired bootstrap over cases, which cannot see seed-to-seed
  variance (the report says so).
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
           "ci_high": math.nan, "p_value": math.nan, "verdict": "", "test": "wilcoxon"}
    if n == 0:
        out["verdict"] = "no common test images: not compared"
        return out
    mean_diff = out["mean_diff"] = float(d.mean())
    out["ci_low"], out["ci_high"] = bootstrap_mean_ci(d, confidence=1 - alpha,
                                                      n_resamples=n_resamples, seed=seed)
    if nonzero == 0:
        out["p_value"] = 1.0
        out["verdict"] = "identical on every test image"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy notes when ties force the normal approximation
        p_value = out["p_value"] = float(stats.wilcoxon(a[keep], b[keep]).pvalue)
    out["verdict"] = verdict(p_value, mean_diff, nonzero, alpha, higher_is_better)
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


def _grand_means(rng, table: np.ndarray, case_weights: np.ndarray) -> np.ndarray:
    """Resampled grand means of a (runs, cases) table: runs drawn with replacement per
    resample, cases weighted by `case_weights` (resamples, cases) of the shared case draw."""
    runs = table.shape[0]
    run_weights = rng.multinomial(runs, np.full(runs, 1 / runs), size=len(case_weights)) / runs
    return np.einsum("kr,rn,kn->k", run_weights, table, case_weights)


def _clean(tables: list[np.ndarray]) -> list[np.ndarray]:
    """Tables (runs, cases) with the cases that are NaN in any run of any table dropped."""
    tables = [np.atleast_2d(np.asarray(t, np.float64)) for t in tables]
    if len({t.shape[1] for t in tables}) != 1:
        raise ValueError(f"tables need the same cases, got {[t.shape for t in tables]}")
    keep = ~np.any([np.isnan(t).any(axis=0) for t in tables], axis=0)
    return [t[:, keep] for t in tables]


def hierarchical_resamples(tables, *, n_resamples: int = 10_000, seed: int = 0) -> np.ndarray:
    """(n_resamples, len(tables)) bootstrap grand means of tables of shape (runs, cases) over
    the same cases: one case draw per resample shared by all tables, runs drawn per table."""
    tables = _clean(tables)
    cases = tables[0].shape[1]
    out = np.empty((n_resamples, len(tables)))
    if cases == 0:
        out[:] = np.nan
        return out
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, CHUNK):
        stop = min(start + CHUNK, n_resamples)
        case_weights = rng.multinomial(cases, np.full(cases, 1 / cases), size=stop - start) / cases
        for j, t in enumerate(tables):
            out[start:stop, j] = _grand_means(rng, t, case_weights)
    return out


def hierarchical_mean_ci(table, *, confidence: float = 0.95, n_resamples: int = 10_000,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the grand mean of a (runs, cases) table, resampling runs and
    cases (cases only when there is one run)."""
    (t,) = _clean([table])
    if t.size == 0:
        return math.nan, math.nan
    means = hierarchical_resamples([t], n_resamples=n_resamples, seed=seed)[:, 0]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def hierarchical_comparison(candidate, baseline, *, alpha: float = 0.05,
                            n_resamples: int = 10_000, seed: int = 0,
                            higher_is_better: bool = True) -> dict:
    """candidate - baseline on (runs, cases) tables over the same cases: difference of grand
    means, its two-level bootstrap interval and two-sided bootstrap p-value."""
    a, b = _clean([candidate, baseline])
    out = {"n_pairs": int(a.shape[1]), "n_runs": (int(a.shape[0]), int(b.shape[0])),
           "mean_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan,
           "verdict": "", "test": "bootstrap"}
    if a.shape[1] == 0:
        out["verdict"] = "no common test cases: not compared"
        return out
    mean_diff = out["mean_diff"] = float(a.mean() - b.mean())
    draws = hierarchical_resamples([a, b], n_resamples=n_resamples, seed=seed)
    d = draws[:, 0] - draws[:, 1]
    tail = alpha / 2 * 100
    low, high = np.percentile(d, [tail, 100 - tail])
    out["ci_low"], out["ci_high"] = float(low), float(high)
    if np.array_equal(a, b) or (np.ptp(d) == 0 and d[0] == 0):
        out["p_value"], out["verdict"] = 1.0, "identical on every test case"
        return out
    below, above = np.count_nonzero(d <= 0), np.count_nonzero(d >= 0)
    p_value = out["p_value"] = float(min(1.0, 2 * (min(below, above) + 1) / (n_resamples + 1)))
    out["verdict"] = bootstrap_verdict(p_value, mean_diff, alpha, higher_is_better)
    return out


def bootstrap_verdict(p: float, mean_diff: float, alpha: float = 0.05,
                      higher_is_better: bool = True) -> str:
    if not p < alpha:
        return f"no significant difference at {alpha:g}"
    better = (mean_diff > 0) == higher_is_better
    return f"significantly {'better' if better else 'worse'} at {alpha:g}"


def single_run_verdict(p: float, mean_diff: float, nonzero: int, n: int, unit: str,
                       alpha: float = 0.05, higher_is_better: bool = True) -> str:
    """The verdict of a paired test over cases when a configuration has one run: a difference
    on these test cases, never a claim about the configuration (seeds were not repeated)."""
    if nonzero == 0:
        return f"identical on every test {unit[:-1]}"
    if min_wilcoxon_p(nonzero) > alpha:
        return f"too few differing {unit} ({nonzero}) for the test to reach {alpha:g}: inconclusive"
    if not p < alpha:
        return (f"no difference on these {n} {unit} at {alpha:g} (one run: seed variance not "
                "captured)")
    better = (mean_diff > 0) == higher_is_better
    return (f"{'better' if better else 'worse'} on these {n} {unit} at {alpha:g}; one run, so "
            "seed-to-seed variance is not captured")


def holm_verdicts(results: list[dict], *, alpha: float = 0.05,
                  higher_is_better: bool = True) -> None:
    """Add `p_holm` to each comparison of one table and re-decide its verdict on that corrected
    p: the words beside a p (Holm) never claim what it does not support. A Wilcoxon comparison
    with a `unit` ("images", "volumes": one run a side) gets single_run_verdict's words."""
    for r, p in zip(results, holm([r["p_value"] for r in results])):
        r["p_holm"] = p
        if math.isnan(p) or not r["n_pairs"]:
            continue  # not compared: nothing to decide
        if r.get("unit"):
            r["verdict"] = single_run_verdict(p, r["mean_diff"], r["n_nonzero"], r["n_pairs"],
                                              r["unit"], alpha, higher_is_better)
        elif r["verdict"].startswith("identical on every"):
            continue  # no difference to correct
        elif r.get("test") == "bootstrap":
            r["verdict"] = bootstrap_verdict(p, r["mean_diff"], alpha, higher_is_better)
        else:
            r["verdict"] = verdict(p, r["mean_diff"], r["n_nonzero"], alpha, higher_is_better)
