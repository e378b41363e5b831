"""Metrics on hand-made masks follow docs/metrics.md's definitions exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segbench import metrics


def counts_for(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> torch.Tensor:
    return metrics.confusion(torch.tensor(pred, dtype=torch.float32)[None, None],
                             torch.tensor(truth, dtype=torch.uint8)[None, None], threshold)


def test_both_empty_is_a_perfect_score():
    c = counts_for(np.zeros((4, 4)), np.zeros((4, 4)))
    v = metrics.per_image(c)
    assert v["dice"][0] == 1.0 and v["iou"][0] == 1.0
    assert math.isnan(v["precision"][0]) and math.isnan(v["recall"][0])
    assert v["specificity"][0] == 1.0 and v["accuracy"][0] == 1.0


def test_one_empty_scores_zero():
    truth = np.zeros((4, 4))
    truth[0, :2] = 1
    v = metrics.per_image(counts_for(np.zeros((4, 4)), truth))  # nothing predicted
    assert v["dice"][0] == 0.0 and v["iou"][0] == 0.0 and v["recall"][0] == 0.0
    assert math.isnan(v["precision"][0])
    v = metrics.per_image(counts_for(truth, np.zeros((4, 4))))  # nothing to find
    assert v["dice"][0] == 0.0 and v["precision"][0] == 0.0 and math.isnan(v["recall"][0])


def test_partial_overlap_by_hand():
    # truth: 4 pixels; prediction: 3 of them plus 2 outside. TP=3, FP=2, FN=1, TN=10 of 16.
    truth = np.zeros((4, 4))
    truth[0, :4] = 1
    pred = np.zeros((4, 4))
    pred[0, :3] = 0.9
    pred[1, :2] = 0.7
    c = counts_for(pred, truth)
    assert c.tolist() == [[3, 2, 1, 10]]
    v = metrics.per_image(c)
    assert v["dice"][0] == pytest.approx(6 / 9)
    assert v["iou"][0] == pytest.approx(3 / 6)
    assert v["precision"][0] == pytest.approx(3 / 5)
    assert v["recall"][0] == pytest.approx(3 / 4)
    assert v["specificity"][0] == pytest.approx(10 / 12)
    assert v["accuracy"][0] == pytest.approx(13 / 16)


def test_threshold_is_inclusive_and_masks_are_value_above_zero():
    c = counts_for(np.array([[0.5, 0.4999]]), np.array([[255, 1]]))
    assert c.tolist() == [[1, 0, 1, 0]]


def test_mean_and_micro_differ_and_nan_is_left_out():
    big = np.zeros((10, 10))
    big[:5] = 1
    small = np.zeros((10, 10))
    small[0, 0] = 1
    counts = torch.cat([counts_for(big, big), counts_for(np.zeros((10, 10)), small),
                        counts_for(np.zeros((10, 10)), np.zeros((10, 10)))])
    s = metrics.summarize(counts)
    assert s["dice"] == pytest.approx((1 + 0 + 1) / 3)
    assert s["dice_micro"] == pytest.approx(2 * 50 / (2 * 50 + 1))
    assert s["iou_micro"] == pytest.approx(50 / 51)
    # precision: image 2 and 3 predict nothing -> NaN, left out of the mean and counted
    assert s["precision"] == 1.0 and s["precision_nan_count"] == 2
    assert s["empty_gt_images"] == 1 and s["n_images"] == 3


def test_iou_never_exceeds_dice_on_random_masks():
    rng = np.random.default_rng(0)
    pred = torch.tensor(rng.random((50, 1, 16, 16)), dtype=torch.float32)
    truth = torch.tensor(rng.random((50, 1, 16, 16)) > 0.7)
    v = metrics.per_image(metrics.confusion(pred, truth))
    assert np.all(v["iou"] <= v["dice"])
    np.testing.assert_allclose(v["dice"], 2 * v["iou"] / (1 + v["iou"]), rtol=1e-12)
