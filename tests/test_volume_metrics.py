"""Per-volume metrics (docs/metrics.md): a volume's Dice pools TP/FP/FN over its slices."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segbench import metrics
from segbench.inference.loop import write_per_volume

# TP, FP, FN, TN per slice
COUNTS = np.array([
    [90, 10, 0, 900],   # volume a: tumour slice, Dice 180/190
    [0, 10, 0, 990],    # volume a: empty slice with 10 false positives, Dice 0
    [0, 0, 0, 1000],    # volume b: empty and predicted empty, Dice 1 (empty rule)
    [50, 0, 50, 900],   # volume c: Dice 100/150
    [50, 50, 0, 900],   # volume c: Dice 100/150
])
GROUPS = ["a", "a", "b", "c", "c"]


def test_per_group_sums_in_first_seen_order():
    names, pooled = metrics.per_group(torch.tensor(COUNTS), GROUPS)
    assert names == ["a", "b", "c"]
    assert pooled.tolist() == [[90, 20, 0, 1890], [0, 0, 0, 1000], [100, 50, 50, 1800]]
    with pytest.raises(ValueError):
        metrics.per_group(COUNTS, GROUPS[:-1])


def test_volume_dice_pools_slices_rather_than_averaging_them():
    summary = metrics.volume_summary(COUNTS, GROUPS)
    dice = [180 / 200, 1.0, 200 / 300]
    assert summary["n_volumes"] == 3
    assert summary["volume_dice_mean"] == pytest.approx(np.mean(dice))
    assert summary["volume_dice_median"] == pytest.approx(np.median(dice))
    # Volume a pooled is 0.9; the mean of its slices' Dice would be (180/190 + 0) / 2.
    assert summary["volume_dice_mean"] != pytest.approx(np.mean([(180 / 190 + 0) / 2, 1.0, 2 / 3]))
    assert summary["volume_iou_mean"] == pytest.approx(np.mean([90 / 110, 1.0, 100 / 200]))


def test_per_volume_csv(tmp_path):
    write_per_volume(tmp_path / "per_volume.csv", torch.tensor(COUNTS), GROUPS)
    rows = list(csv.DictReader(open(tmp_path / "per_volume.csv")))
    assert [r["volume"] for r in rows] == ["a", "b", "c"]
    assert [int(r["slices"]) for r in rows] == [2, 1, 2]
    assert float(rows[0]["dice"]) == pytest.approx(0.9, abs=1e-6)
    assert [int(rows[2][k]) for k in ("tp", "fp", "fn", "tn")] == [100, 50, 50, 1800]
    assert int(rows[0]["gt_pixels"]) == 90 and int(rows[0]["pred_pixels"]) == 110


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50),
                          st.integers(0, 50), st.integers(0, 3)), min_size=1, max_size=12))
def test_volume_iou_never_above_dice(rows):
    counts = np.array([r[:4] for r in rows])
    groups = [f"v{r[4]}" for r in rows]
    names, pooled = metrics.per_group(counts, groups)
    values = metrics.per_image(pooled)
    assert np.all(values["iou"] <= values["dice"] + 1e-12)
    np.testing.assert_allclose(values["dice"], 2 * values["iou"] / (1 + values["iou"]))
    assert pooled.sum(0).tolist() == counts.sum(0).tolist()
