"""The synthetic dataset: deterministic, binary masks, and not solvable by a threshold."""

from __future__ import annotations

import cv2
import numpy as np

from segbench.data import synthetic


def _frames(n=40, size=96, difficulty=0.5, seed=0):
    rngs = np.random.SeedSequence(seed).spawn(n)
    return zip(*(synthetic.render(np.random.default_rng(s), size, difficulty) for s in rngs))


def _mean_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = (pred & truth).sum((1, 2))
    den = pred.sum((1, 2)) + truth.sum((1, 2))
    return float(np.where(den == 0, 1.0, 2 * tp / np.maximum(den, 1)).mean())


def test_generation_is_deterministic_and_masks_are_binary(tmp_path):
    a = synthetic.generate(tmp_path / "a", seed=3, num_train=4, num_test=2, image_size=48,
                           difficulty=0.5)
    b = synthetic.generate(tmp_path / "b", seed=3, num_train=4, num_test=2, image_size=48,
                           difficulty=0.5)
    names = sorted(p.name for p in (a / "images").iterdir())
    assert len(names) == 6
    for name in names:
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes()
        mask = cv2.imread(str(a / "masks" / name), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) <= {0, 255}


def test_every_frame_has_an_instrument_of_plausible_size():
    images, masks = _frames()
    share = np.array([m.mean() for m in masks])
    assert share.min() > 0.01 and share.max() < 0.6
    assert all(img.dtype == np.uint8 and img.shape == (96, 96, 3) for img in images)


def test_no_constant_or_threshold_predictor_reaches_dice_0_8():
    images, masks = _frames(n=60)
    x = np.stack(images).astype(np.float32) / 255
    truth = np.stack(masks).astype(bool)
    hsv = np.stack([cv2.cvtColor(i, cv2.COLOR_RGB2HSV) for i in images]).astype(np.float32)
    features = {"R": x[..., 0], "G": x[..., 1], "B": x[..., 2], "grey": x.mean(-1),
                "saturation": hsv[..., 1], "hue": hsv[..., 0], "B-R": x[..., 2] - x[..., 0],
                "G-R": x[..., 1] - x[..., 0]}
    best = max(_mean_dice(np.ones_like(truth), truth), _mean_dice(np.zeros_like(truth), truth))
    for f in features.values():
        for t in np.quantile(f, np.linspace(0.01, 0.99, 50)):
            best = max(best, _mean_dice(f >= t, truth), _mean_dice(f < t, truth))
    assert best < 0.8, f"a threshold predictor reaches Dice {best:.3f}"
