"""A run's own figures: curves.png (integer epoch ticks, the run's name in the title) and
predictions.png (a colour key, colour-blind-safe overlay colours); the latency a run records."""

from __future__ import annotations

import json

import numpy as np
import torch

from segbench.models.info import inference_latency
from segbench.viz import OVERLAY, overlay, plot_curves, plot_predictions


def test_curves_have_integer_epoch_ticks_and_the_run_name(tmp_path):
    history = [{"epoch": e, "lr": 1e-3, "train_loss": 1 / e, "val_loss": 1.2 / e,
                "train_dice": 0.1 * e, "val_dice": 0.09 * e, "train_iou": 0.05 * e,
                "val_iou": 0.04 * e} for e in (1, 2, 3)]
    fig = plot_curves(history, tmp_path / "curves.png", 2, title="optimizer=sgd/seed=1: unet")
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert fig._suptitle.get_text() == "optimizer=sgd/seed=1: unet"
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_predictions_have_a_colour_key_in_the_overlay_colours(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(2)]
    masks = [np.eye(16, dtype=np.uint8), np.zeros((16, 16), np.uint8)]
    probs = [np.full((16, 16), 0.7, np.float32), np.zeros((16, 16), np.float32)]
    fig = plot_predictions(images, masks, probs, ["a", "b"], tmp_path / "p.png")
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == list(OVERLAY)
    # The overlay paints each outcome towards its key colour.
    truth = np.array([[1, 1, 0]], np.uint8)
    pred = np.array([[1, 0, 1]], np.uint8)
    grey = np.zeros((1, 3, 3), np.uint8)
    out = overlay(grey, truth, pred)
    for col, name in ((0, "true positive"), (1, "false negative"), (2, "false positive")):
        expected = np.array([int(OVERLAY[name][i:i + 2], 16) for i in (1, 3, 5)]) / 255 * 0.7
        np.testing.assert_allclose(out[0, col], expected, atol=1e-6)


def test_inference_latency_is_a_median_in_milliseconds():
    model = torch.nn.Conv2d(3, 1, 3, padding=1)
    ms = inference_latency(model, (3, 16, 16), torch.device("cpu"), warmup=1, repeats=3)
    assert 0 < ms < 10_000 and model.training  # the model's mode is restored


def test_a_run_records_its_latency(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["model"]["latency_ms"] > 0 and metrics["model"]["gflops"] > 0
