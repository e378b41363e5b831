"""Paired statistics of `segbench report`, checked against scipy and against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from segbench.metrics.stats import (
    bootstrap_mean_ci,
    hierarchical_comparison,
    hierarchical_mean_ci,
    hierarchical_resamples,
    holm,
    min_wilcoxon_p,
    paired_comparison,
    single_run_verdict,
)


def test_bootstrap_matches_a_hand_computation_with_the_same_seed():
    values = np.random.default_rng(3).normal(0.02, 0.05, 37)
    rng = np.random.default_rng(11)
    means = values[rng.integers(0, values.size, (5000, values.size))].mean(axis=1)
    expected = np.percentile(means, [2.5, 97.5])
    # 5000 resamples are drawn in chunks: the stream must be the same as one draw.
    assert bootstrap_mean_ci(values, n_resamples=5000, seed=11) == pytest.approx(tuple(expected),
                                                                                 abs=1e-12)


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


# --- several runs per configuration: the two-level bootstrap --------------------------------------

def test_runs_and_cases_are_each_resampled_with_replacement():
    # Two runs that differ and identical cases: only the runs vary, so the resampled grand means
    # are 0, 0.5 and 1 with probabilities 1/4, 1/2, 1/4.
    runs = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    means = hierarchical_resamples([runs], n_resamples=20_000, seed=0)[:, 0]
    values, counts = np.unique(np.round(means, 9), return_counts=True)
    assert values.tolist() == [0.0, 0.5, 1.0]
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.015)
    # One run and two cases that differ: the same distribution over the cases.
    cases = np.array([[0.0, 1.0]])
    means = hierarchical_resamples([cases], n_resamples=20_000, seed=1)[:, 0]
    values, counts = np.unique(np.round(means, 9), return_counts=True)
    assert values.tolist() == [0.0, 0.5, 1.0]
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.015)


def test_the_case_draw_is_shared_so_the_comparison_stays_paired():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.3, 0.9, (1, 40))
    cand = base + 0.01  # better on every case by the same amount, image difficulty shared
    out = hierarchical_comparison(cand, base, n_resamples=2000)
    assert out["mean_diff"] == pytest.approx(0.01)
    assert out["ci_low"] == pytest.approx(0.01) and out["ci_high"] == pytest.approx(0.01)
    assert out["p_value"] < 0.001 and out["verdict"] == "significantly better at 0.05"


def test_seed_variance_is_carried_where_a_per_image_test_misses_it():
    """Three seeds per configuration whose run-to-run offsets (sd 0.04) dwarf the per-image
    noise: both configurations are the same, yet a Wilcoxon over per-image means of the seeds
    calls it significant; the bootstrap over runs and images does not."""
    rng = np.random.default_rng(7)
    difficulty = rng.uniform(0.4, 0.9, 60)
    a = difficulty + rng.normal(0, 0.04, (3, 1)) + rng.normal(0, 0.005, (3, 60))
    b = difficulty + rng.normal(0, 0.04, (3, 1)) + rng.normal(0, 0.005, (3, 60))
    naive = paired_comparison(a.mean(0), b.mean(0), n_resamples=2000)
    assert naive["p_value"] < 1e-6  # every image moves with the seeds' offsets
    out = hierarchical_comparison(a, b, n_resamples=5000, seed=0)
    assert out["p_value"] > 0.05 and out["ci_low"] < 0 < out["ci_high"]
    assert out["verdict"] == "no significant difference at 0.05"
    assert out["n_runs"] == (3, 3) and out["n_pairs"] == 60
    assert out["mean_diff"] == pytest.approx(a.mean() - b.mean())


def test_hierarchical_edge_cases():
    same = np.tile(np.linspace(0.2, 0.9, 8), (2, 1))
    out = hierarchical_comparison(same, same.copy(), n_resamples=300)
    assert out["p_value"] == 1.0 and out["verdict"] == "identical on every test case"
    nan = np.array([[0.5, math.nan, 0.7], [0.6, 0.5, 0.8]])
    assert hierarchical_comparison(nan, nan + 0.1, n_resamples=200)["n_pairs"] == 2
    low, high = hierarchical_mean_ci(np.array([[0.5, 0.6, 0.7]]), n_resamples=500)
    assert low < 0.6 < high
    with pytest.raises(ValueError):
        hierarchical_comparison(np.ones((2, 3)), np.ones((2, 4)))


def test_single_run_verdicts_never_claim_a_configuration_is_better():
    assert single_run_verdict(0.001, -0.05, 30, 30, "images") == (
        "worse on these 30 images at 0.05; one run, so seed-to-seed variance is not captured")
    assert single_run_verdict(0.4, 0.01, 30, 30, "volumes").startswith(
        "no difference on these 30 volumes")
    assert single_run_verdict(0.06, 0.1, 4, 5, "volumes").startswith(
        "too few differing volumes (4)")
    assert single_run_verdict(1.0, 0.0, 0, 5, "images") == "identical on every test image"


def test_verdicts_follow_the_holm_p_printed_beside_them():
    """Raw p under 0.05, Holm p over it: the words say no difference (issue 22)."""
    from segbench.metrics.stats import holm_verdicts

    straddling = {"p_value": 0.031, "mean_diff": -0.02, "n_nonzero": 8, "n_pairs": 8,
                  "verdict": "worse on these 8 images at 0.05", "test": "wilcoxon",
                  "unit": "images"}
    clear = {"p_value": 0.001, "mean_diff": 0.05, "n_nonzero": 8, "n_pairs": 8, "verdict": "",
             "test": "wilcoxon", "unit": "images"}
    other = {"p_value": 0.5, "mean_diff": 0.01, "n_nonzero": 8, "n_pairs": 8, "verdict": "",
             "test": "wilcoxon", "unit": "images"}
    holm_verdicts([straddling, clear, other])  # Holm: 0.001 x 3, 0.031 x 2, 0.5
    assert straddling["p_holm"] == pytest.approx(0.062)
    assert straddling["verdict"].startswith("no difference on these 8 images at 0.05")
    assert clear["p_holm"] == pytest.approx(0.003)
    assert clear["verdict"].startswith("better on these 8")

    # Several runs a side (two-level bootstrap): p 0.042 -> Holm 0.084 is not significant.
    boot = [{"p_value": 0.042, "mean_diff": 0.03, "n_pairs": 30, "verdict": "significantly better "
             "at 0.05", "test": "bootstrap"},
            {"p_value": 0.7, "mean_diff": 0.0, "n_pairs": 30, "verdict": "", "test": "bootstrap"}]
    holm_verdicts(boot)
    assert boot[0]["p_holm"] == pytest.approx(0.084)
    assert boot[0]["verdict"] == "no significant difference at 0.05"

    # Without a unit (a plain paired comparison) the Wilcoxon verdict words; identical stays.
    plain = [{"p_value": 0.02, "mean_diff": 0.1, "n_nonzero": 10, "n_pairs": 10, "verdict": "x",
              "test": "wilcoxon"},
             {"p_value": 1.0, "mean_diff": 0.0, "n_nonzero": 0, "n_pairs": 10,
              "verdict": "identical on every test image", "test": "wilcoxon"},
             {"p_value": math.nan, "mean_diff": math.nan, "n_pairs": 0,
              "verdict": "no common test images: not compared", "test": "wilcoxon"}]
    holm_verdicts(plain)
    assert plain[0]["p_holm"] == pytest.approx(0.04)
    assert plain[0]["verdict"] == "significantly better at 0.05"
    assert plain[1]["verdict"] == "identical on every test image"
    assert plain[2]["verdict"] == "no common test images: not compared"
