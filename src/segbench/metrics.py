"""Segmentation metrics exactly as DESIGN.md defines them.

Evaluation loops call `confusion()` per batch (on the device, no host sync) and concatenate the
per-image counts; `per_image()` and `summarize()` turn the counts into numbers once per split.

- Masks are binary (value > 0); a prediction is foreground when probability >= threshold.
- Per image: Dice = 2TP/(2TP+FP+FN), IoU = TP/(TP+FP+FN), precision = TP/(TP+FP),
  recall = TP/(TP+FN), specificity = TN/(TN+FP), accuracy = (TP+TN)/N.
- Empty prediction and empty ground truth: Dice = IoU = 1 (EMPTY_RULE). Precision, recall and
  specificity with a zero denominator are NaN and left out of means (their count is reported).
- `dice`/`iou` are means over images; `dice_micro`/`iou_micro` pool TP/FP/FN over the split.
"""

from __future__ import annotations

import numpy as np
import torch

EMPTY_RULE = "dice = iou = 1 when prediction and ground truth are both empty"
COUNT_NAMES = ("tp", "fp", "fn", "tn")


def confusion(prob: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-image counts, an (N, 4) int64 tensor of TP, FP, FN, TN, on the inputs' device."""
    pred = (prob >= threshold).flatten(1)
    truth = (target > 0).flatten(1)
    tp = (pred & truth).sum(1)
    fp = (pred & ~truth).sum(1)
    fn = (~pred & truth).sum(1)
    tn = pred.shape[1] - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], 1)


def _ratio(num: np.ndarray, den: np.ndarray, empty: float = np.nan) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, empty, np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_image(counts) -> dict[str, np.ndarray]:
    """Per-image metrics from an (N, 4) array of TP, FP, FN, TN."""
    c = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, np.int64)
    tp, fp, fn, tn = c.T
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, empty=1.0),
        "iou": _ratio(tp, tp + fp + fn, empty=1.0),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "gt_pixels": (tp + fn).astype(np.float64),
        "pred_pixels": (tp + fp).astype(np.float64),
    }


def pooled(counts) -> dict[str, float]:
    """Micro metrics: TP/FP/FN/TN summed over all images first."""
    c = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, np.int64)
    tp, fp, fn, tn = c.sum(0)
    return {
        "dice_micro": float(_ratio(2 * tp, 2 * tp + fp + fn, empty=1.0)),
        "iou_micro": float(_ratio(tp, tp + fp + fn, empty=1.0)),
        "precision_micro": float(_ratio(tp, tp + fp)),
        "recall_micro": float(_ratio(tp, tp + fn)),
        "specificity_micro": float(_ratio(tn, tn + fp)),
        "accuracy_micro": float(_ratio(tp + tn, tp + fp + fn + tn)),
    }


def summarize(counts) -> dict[str, float]:
    """Means over images (NaNs left out, and counted) plus pooled metrics."""
    values = per_image(counts)
    out: dict[str, float] = {"n_images": int(len(values["dice"]))}
    for name in ("dice", "iou", "precision", "recall", "specificity", "accuracy"):
        v = values[name]
        ok = ~np.isnan(v)
        out[name] = float(v[ok].mean()) if ok.any() else float("nan")
        if not ok.all():
            out[f"{name}_nan_count"] = int((~ok).sum())
    out.update(pooled(counts))
    out["empty_gt_images"] = int((values["gt_pixels"] == 0).sum())
    return out


# --- Per-volume metrics (volumetric datasets such as LGG) --------------------------------------
# A volume's counts are the sums over its slices, so its Dice pools TP/FP/FN over the volume
# (DESIGN.md) rather than averaging slice Dice, where empty slices would weigh as much as the
# tumour's.


def per_group(counts, groups) -> tuple[list[str], np.ndarray]:
    """(group names in first-seen order, (G, 4) int64 TP, FP, FN, TN summed over each group)."""
    c = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, np.int64)
    groups = list(groups)
    if len(groups) != len(c):
        raise ValueError(f"{len(groups)} groups for {len(c)} images")
    names = list(dict.fromkeys(groups))
    index = {name: i for i, name in enumerate(names)}
    out = np.zeros((len(names), 4), np.int64)
    np.add.at(out, [index[g] for g in groups], c)
    return names, out


def volume_summary(counts, groups) -> dict[str, float]:
    """Number of volumes and the mean and median over volumes of their pooled Dice and IoU."""
    names, volume_counts = per_group(counts, groups)
    values = per_image(volume_counts)
    return {
        "n_volumes": len(names),
        "volume_dice_mean": float(values["dice"].mean()),
        "volume_dice_median": float(np.median(values["dice"])),
        "volume_iou_mean": float(values["iou"].mean()),
        "volume_iou_median": float(np.median(values["iou"])),
    }
