"""segbench's metrics against independent implementations, to 1e-6, and their invariants.

- confusion-based metrics: segmentation-models-pytorch (get_stats + micro / micro-imagewise)
- AUROC and average precision: scikit-learn
- HD95 and ASSD: MONAI (same definitions) and medpy (its directed distances and Hausdorff)
- properties (hypothesis): IoU <= Dice, Dice = 2 IoU / (1 + IoU), symmetry, ranges
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from omegaconf import OmegaConf
from scipy import ndimage

from segbench import SegbenchError, metrics
from segbench.inference.loop import pixel_spacing
from segbench.metrics import surface

TOL = 1e-6


def random_batch(n=6, h=17, w=23, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.stack([ndimage.binary_dilation(rng.random((h, w)) < 0.03, iterations=2)
                      for _ in range(n)])
    prob = np.clip(truth * 0.35 + rng.random((n, h, w)) * 0.65, 0, 1).astype(np.float32)
    return torch.from_numpy(prob)[:, None], torch.from_numpy(truth.astype(np.uint8))[:, None]


def hand_made_batch():
    """Both empty, prediction empty, truth empty, perfect, partial overlap, everything
    foreground."""
    truth = np.zeros((6, 8, 8), np.uint8)
    pred = np.zeros((6, 8, 8), np.float32)
    truth[1, 2:4, 2:4] = 1
    pred[2, 5:7, 5:7] = 1
    truth[3, 1:5, 1:5] = 1
    pred[3, 1:5, 1:5] = 1
    truth[4, 0:4, 0:4] = 1
    pred[4, 2:6, 2:6] = 1
    truth[5] = 1
    pred[5] = 1
    return torch.from_numpy(pred)[:, None], torch.from_numpy(truth)[:, None]


SMP_NAMES = {"dice": "f1_score", "iou": "iou_score", "precision": "precision", "recall": "recall",
             "specificity": "specificity", "accuracy": "accuracy"}


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.8])
@pytest.mark.parametrize("batch", ["random", "hand-made"])
def test_confusion_metrics_equal_smp(threshold, batch):
    import segmentation_models_pytorch as smp

    prob, truth = random_batch() if batch == "random" else hand_made_batch()
    counts = metrics.confusion(prob, truth, threshold)
    tp, fp, fn, tn = smp.metrics.get_stats(prob, truth.long(), mode="binary", threshold=threshold)
    np.testing.assert_array_equal(counts.numpy(), torch.cat([tp, fp, fn, tn], 1).numpy())

    ours = metrics.per_image(counts)
    summary = metrics.summarize(counts)
    for name, fn_name in SMP_NAMES.items():
        fn_ = getattr(smp.metrics, fn_name)
        # Dice and IoU: both masks empty scores 1 (segbench's empty rule = smp zero_division=1).
        # The others: a zero denominator is NaN in segbench and left out of the mean.
        zero = 1.0 if name in ("dice", "iou") else math.nan
        per_image = fn_(tp, fp, fn, tn, reduction="none", zero_division=zero).numpy()[:, 0]
        np.testing.assert_allclose(ours[name], per_image, atol=TOL, equal_nan=True)
        micro = fn_(tp, fp, fn, tn, reduction="micro", zero_division=zero).item()
        assert summary[f"{name}_micro"] == pytest.approx(micro, abs=TOL, nan_ok=True)
        defined = ~np.isnan(per_image)
        if defined.all():
            imagewise = fn_(tp, fp, fn, tn, reduction="micro-imagewise", zero_division=zero).item()
            assert summary[name] == pytest.approx(imagewise, abs=TOL)
        else:  # smp has no "leave out" rule: the mean over the defined images
            assert summary[name] == pytest.approx(per_image[defined].mean(), abs=TOL)
            assert summary[f"{name}_nan_count"] == int((~defined).sum())


def test_hand_made_values():
    v = metrics.per_image(metrics.confusion(*hand_made_batch()))
    assert list(v["dice"]) == pytest.approx([1, 0, 0, 1, 2 * 4 / (16 + 16), 1])
    assert list(v["iou"]) == pytest.approx([1, 0, 0, 1, 4 / 28, 1])


def _rounded(prob: np.ndarray) -> np.ndarray:
    """The probabilities as the histogram holds them: floor(p * 2^20), p = 1 in the top bin."""
    return np.minimum(np.floor(prob.astype(np.float64) * metrics.SCORE_BINS),
                      metrics.SCORE_BINS - 1)


@pytest.mark.parametrize("case", ["random", "ties", "separable", "inverted"])
def test_auroc_and_ap_equal_sklearn(case):
    from sklearn.metrics import average_precision_score, roc_auc_score

    prob, truth = random_batch(n=8, h=31, w=29, seed=3)
    if case == "ties":
        prob = torch.round(prob * 4) / 4
    elif case == "separable":
        prob = truth.float() * 0.5 + 0.25
    elif case == "inverted":
        prob = 1 - prob
    # Summed over batches of uneven size, as the evaluation loop does.
    hist = sum(metrics.score_histogram(prob[i:i + 3], truth[i:i + 3]) for i in range(0, 8, 3))
    got = metrics.auroc_ap(hist)
    y, p = truth.numpy().ravel(), prob.numpy().ravel()
    # Exact on the rounded probabilities the histogram holds...
    assert got["auroc"] == pytest.approx(roc_auc_score(y, _rounded(p)), abs=1e-12)
    assert got["average_precision"] == pytest.approx(average_precision_score(y, _rounded(p)),
                                                     abs=1e-12)
    # ...and within the rounding's reach of scikit-learn on the float32 probabilities.
    assert got["auroc"] == pytest.approx(roc_auc_score(y, p), abs=TOL)
    assert got["average_precision"] == pytest.approx(average_precision_score(y, p), abs=TOL)


def test_auroc_and_ap_without_both_classes():
    prob = torch.rand(2, 1, 5, 5)
    none = metrics.auroc_ap(metrics.score_histogram(prob, torch.zeros(2, 1, 5, 5)))
    assert math.isnan(none["auroc"]) and math.isnan(none["average_precision"])
    only = metrics.auroc_ap(metrics.score_histogram(prob, torch.ones(2, 1, 5, 5)))
    assert math.isnan(only["auroc"]) and only["average_precision"] == pytest.approx(1.0)


def blob_pair(rng, h, w):
    def blob():
        return ndimage.binary_dilation(rng.random((h, w)) < 0.015,
                                       iterations=int(rng.integers(0, 4)))
    return blob(), blob()


def test_hd95_and_assd_equal_monai_and_medpy():
    from medpy.metric import binary as medpy_binary
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(7)
    checked = 0
    for i in range(60):
        h, w = (int(v) for v in rng.integers(3, 48, 2))
        pred, truth = blob_pair(rng, h, w)
        spacing = [float(v) for v in rng.uniform(0.3, 2.0, 2)] if i % 2 else None
        hd95, assd = surface.hd95_assd(pred, truth, spacing)
        if not (pred.any() and truth.any()):
            assert math.isnan(hd95) and math.isnan(assd)
            continue
        p = torch.from_numpy(pred)[None, None].float()
        t = torch.from_numpy(truth)[None, None].float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            monai_hd95 = compute_hausdorff_distance(p, t, include_background=True, percentile=95,
                                                    spacing=spacing).item()
            monai_assd = compute_average_surface_distance(p, t, include_background=True,
                                                          symmetric=True, spacing=spacing).item()
        # MONAI returns float32: equal to its precision.
        assert hd95 == pytest.approx(monai_hd95, rel=TOL, abs=TOL)
        assert assd == pytest.approx(monai_assd, rel=TOL, abs=TOL)
        # medpy (float64) on the directed distances both build on.
        to_truth, to_pred = surface.directed_distances(pred, truth, spacing)
        assert to_truth.mean() == pytest.approx(medpy_binary.asd(pred, truth, spacing), abs=1e-9)
        assert to_pred.mean() == pytest.approx(medpy_binary.asd(truth, pred, spacing), abs=1e-9)
        assert max(to_truth.max(), to_pred.max()) == pytest.approx(
            medpy_binary.hd(pred, truth, spacing), abs=1e-9)
        checked += 1
    assert checked > 30


def test_surface_distances_by_hand():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[1, 1] = True
    b[4, 5] = True  # 3 rows and 4 columns away
    assert surface.hd95_assd(a, b) == pytest.approx((5.0, 5.0))
    assert surface.hd95_assd(a, b, spacing=[2.0, 0.5]) == pytest.approx((math.hypot(6, 2),) * 2)
    square = np.zeros((12, 12), bool)
    square[2:6, 2:6] = True
    shifted = np.roll(square, 3, axis=0)  # every surface pixel 3 rows from the other's...
    hd95, assd = surface.hd95_assd(square, shifted)
    assert hd95 == pytest.approx(3.0)
    assert 1.0 < assd < 3.0  # ...except the side pixels, which lie closer
    assert surface.hd95_assd(square, square) == (0.0, 0.0)
    assert all(math.isnan(v) for v in surface.hd95_assd(square, np.zeros_like(square)))
    assert all(math.isnan(v)
               for v in surface.hd95_assd(np.zeros_like(square), np.zeros_like(square)))


def test_surface_metrics_of_a_split_in_threads_equal_one_by_one():
    rng = np.random.default_rng(11)
    pairs = [blob_pair(rng, 40, 52) for _ in range(24)]
    preds = np.stack([p for p, _ in pairs])
    truths = np.stack([t for _, t in pairs]).astype(np.uint8)
    preds[0] = False  # an empty prediction: NaN, counted
    serial = surface.surface_metrics(preds, truths, workers=1)
    parallel = surface.surface_metrics(preds, truths, workers=3)
    assert parallel["workers"] == 3 and serial["workers"] == 1
    np.testing.assert_array_equal(serial["hd95"], parallel["hd95"])
    np.testing.assert_array_equal(serial["assd"], parallel["assd"])
    summary = metrics.summarize_surface(serial["hd95"], serial["assd"])
    assert summary["surface_nan_count"] == int(np.isnan(serial["hd95"]).sum()) >= 1
    assert summary["hd95"] == pytest.approx(np.nanmean(serial["hd95"]))


def test_pixel_spacing_follows_the_resize():
    cfg = OmegaConf.create({"dataset": {"pixel_spacing": [0.5, 0.8], "native_size": [512, 256]},
                            "resolution": {"height": 256, "width": 256}})
    assert pixel_spacing(cfg) == pytest.approx([1.0, 0.8])
    cfg.dataset.pixel_spacing = 0.7
    cfg.dataset.native_size = [256, 256]
    assert pixel_spacing(cfg) == pytest.approx([0.7, 0.7])
    assert pixel_spacing(OmegaConf.create({"dataset": {}, "resolution": {}})) is None
    with pytest.raises(SegbenchError, match="native_size"):
        pixel_spacing(OmegaConf.create({"dataset": {"pixel_spacing": 0.5},
                                        "resolution": {"height": 64, "width": 64}}))


# Properties, on any pair of masks.
masks = st.integers(2, 12).flatmap(lambda h: st.integers(2, 12).flatmap(
    lambda w: st.tuples(arrays(bool, (h, w)), arrays(bool, (h, w)))))


def _per_image(pred: np.ndarray, truth: np.ndarray) -> dict:
    counts = metrics.confusion(torch.from_numpy(pred.astype(np.float32))[None, None],
                               torch.from_numpy(truth.astype(np.uint8))[None, None])
    return {k: float(v[0]) for k, v in metrics.per_image(counts).items()}


@settings(max_examples=150, deadline=None)
@given(masks)
def test_iou_never_exceeds_dice_and_they_agree(pair):
    v = _per_image(*pair)
    assert v["iou"] <= v["dice"] + 1e-15
    assert v["dice"] == pytest.approx(2 * v["iou"] / (1 + v["iou"]), abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(masks)
def test_dice_iou_and_surface_distances_are_symmetric(pair):
    a, b = pair
    ab, ba = _per_image(a, b), _per_image(b, a)
    assert ab["dice"] == ba["dice"] and ab["iou"] == ba["iou"]
    hd_ab, assd_ab = surface.hd95_assd(a, b)
    hd_ba, assd_ba = surface.hd95_assd(b, a)
    assert hd_ab == pytest.approx(hd_ba, nan_ok=True, abs=1e-12)
    assert assd_ab == pytest.approx(assd_ba, nan_ok=True, abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(masks)
def test_every_metric_stays_in_its_range(pair):
    a, b = pair
    v = _per_image(a, b)
    for name in ("dice", "iou", "precision", "recall", "specificity", "accuracy"):
        assert math.isnan(v[name]) or 0 <= v[name] <= 1, (name, v[name])
    hd95, assd = surface.hd95_assd(a, b)
    if a.any() and b.any():
        diagonal = math.hypot(*a.shape)
        assert 0 <= assd <= diagonal and 0 <= hd95 <= diagonal
        assert assd <= surface.hd95_assd(a, b, percentile=100)[0] + 1e-12  # mean <= max
    else:
        assert math.isnan(hd95) and math.isnan(assd)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_auroc_and_ap_stay_in_their_range(seed):
    rng = np.random.default_rng(seed)
    prob = torch.from_numpy(rng.random((1, 1, 6, 6)).astype(np.float32))
    truth = torch.from_numpy(rng.random((1, 1, 6, 6)) < rng.random())
    got = metrics.auroc_ap(metrics.score_histogram(prob, truth))
    for value in got.values():
        assert math.isnan(value) or 0 <= value <= 1
