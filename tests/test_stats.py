"""Paired statistics of `segbench report`, checked against scipy and against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from segbench.stats import bootstrap_mean_ci, holm, min_wilcoxon_p, paired_comparison


def test_bootstrap_matches_a_hand_computation_with_the_same_seed():
    values = np.random.default_rng(3).normal(0.02, 0.05, 37)
    rng = np.random.default_rng(11)
    means = values[rng.integers(0, values.size, (5000, values.size))].mean(axis=1)
    expected = np.percentile(means, [2.5, 97.5])
    # 5000 resamples are drawn in chunks: the stream must be the same as one draw.
    assert bootstrap_mean_ci(values, n_resamples=5000, seed=11) == pytest.approx(tuple(expected), abs=1e-12)


def test_bootstrap_agrees_with_scipy_percentile_bootstrap():
    values = np.random.default_rng(5).normal(0.03, 0.08, 60)
    ours = bootstrap_mean_ci(values, n_resamples=20_000, seed=0)
    ref = stats.bootstrap((values,), np.mean, n_resamples=20_000, method="percentile",
                          random_state=np.random.default_rng(1)).confidence_interval
    # Different random streams: equal up to Monte Carlo error (~1% of the interval width).
    width = ref.high - ref.low
    assert ours[0] == pytest.approx(ref.low, abs=0.03 * width)
    assert ours[1] == pytest.approx(ref.high, abs=0.03 * width)
    assert ours[0] < values.mean() < ours[1]


def test_paired_comparison_p_value_is_scipys_wilcoxon():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.9, 40)
    cand = np.clip(base + rng.normal(0.03, 0.04, 40), 0, 1)
    out = paired_comparison(cand, base, n_resamples=2000, seed=0)
    assert out["p_value"] == pytest.approx(stats.wilcoxon(cand, base).pvalue, rel=1e-12)
    assert out["mean_diff"] == pytest.approx(float((cand - base).mean()))
    assert out["ci_low"] < out["mean_diff"] < out["ci_high"]
    assert out["n_pairs"] == 40
    assert out["verdict"] == "significantly better at 0.05"
    worse = paired_comparison(base, cand, n_resamples=2000, seed=0)
    assert worse["verdict"] == "significantly worse at 0.05"
    assert worse["p_value"] == pytest.approx(out["p_value"])
    # For a lower-is-better metric (HD95) the same difference is the other verdict.
    assert paired_comparison(cand, base, n_resamples=200, higher_is_better=False)["verdict"] \
        == "significantly worse at 0.05"


def test_no_difference_verdict():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 0.9, 30)
    cand = base + rng.normal(0, 0.05, 30)
    out = paired_comparison(cand, base, n_resamples=1000)
    assert out["p_value"] > 0.05
    assert out["verdict"] == "no significant difference at 0.05"


def test_all_zero_differences_are_identical_not_an_error():
    values = np.linspace(0.2, 0.9, 12)
    out = paired_comparison(values, values.copy(), n_resamples=500)
    assert out["p_value"] == 1.0
    assert out["mean_diff"] == 0.0 and out["ci_low"] == 0.0 and out["ci_high"] == 0.0
    assert out["verdict"] == "identical on every test image"


def test_fewer_than_six_differing_pairs_are_inconclusive():
    assert min_wilcoxon_p(5) == pytest.approx(0.0625)
    assert min_wilcoxon_p(6) == pytest.approx(0.03125)
    base = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.4, 0.3])
    cand = base + np.array([0.1, 0.2, 0.15, 0.12, 0.3, 0, 0])  # 5 non-zero, all better
    out = paired_comparison(cand, base, n_resamples=500)
    assert out["n_nonzero"] == 5
    assert out["p_value"] >= 0.0625 - 1e-9  # the test cannot go lower with 5 pairs
    assert out["verdict"].startswith("too few differing images (5)")
    six = paired_comparison(np.r_[cand, 1.0], np.r_[base, 0.5], n_resamples=500)
    assert six["n_nonzero"] == 6 and six["p_value"] == pytest.approx(0.03125)
    assert six["verdict"] == "significantly better at 0.05"


def test_nan_pairs_are_dropped_and_empty_input_is_reported():
    out = paired_comparison([0.5, math.nan, 0.7], [0.4, 0.6, math.nan], n_resamples=100)
    assert out["n_pairs"] == 1
    empty = paired_comparison([], [], n_resamples=100)
    assert empty["n_pairs"] == 0 and math.isnan(empty["p_value"])
    assert "not compared" in empty["verdict"]
    with pytest.raises(ValueError):
        paired_comparison([0.1, 0.2], [0.1], n_resamples=100)


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, math.nan, 0.2]
    # Sorted: 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08 -> max(0.09, 0.08)=0.09, 0.2*1=0.2.
    adjusted = holm(p)
    assert adjusted[0] == pytest.approx(0.04)
    assert adjusted[2] == pytest.approx(0.09)
    assert adjusted[1] == pytest.approx(0.09)
    assert adjusted[4] == pytest.approx(0.2)
    assert math.isnan(adjusted[3])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
