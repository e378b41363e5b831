"""Segmentation metrics exactly as docs/metrics.md defines them (the one place they are written).

Evaluation loops call `confusion()` per batch (on the device, no host sync) and concatenate the
per-image counts; `per_image()` and `summarize()` turn the counts into numbers once per split,
`per_group()` and `volume_summary()` into per-volume ones. For AUROC and average precision the
loop adds each batch to `score_histogram()` on the device (bins of 1/SCORE_BINS); `auroc_ap()`
reads the curves off the summed histogram once. Surface distances (HD95, ASSD) are in
segbench.surface.
"""

from __future__ import annotations

import numpy as np
import torch

EMPTY_RULE = "dice = iou = 1 when prediction and ground truth are both empty"
COUNT_NAMES = ("tp", "fp", "fn", "tn")
SCORE_BINS = 1 << 20
AUROC_METHOD = ("exact on probabilities truncated to multiples of 2^-20 "
                "(per-class histograms; ties as scikit-learn)")


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
# (docs/metrics.md) rather than averaging slice Dice, where empty slices would weigh as much as the
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


def score_histogram(prob: torch.Tensor, target: torch.Tensor, bins: int = SCORE_BINS) -> torch.Tensor:
    """(2 * bins,) int64 counts on the inputs' device: background pixels per bin of probability
    [k / bins, (k + 1) / bins) in [0, bins), foreground pixels in [bins, 2 * bins) (p = 1 joins
    the top bin). Sum over batches, then `auroc_ap()`. bins must be a power of two."""
    # p * 2^k is exact in floating point, so the bin is exactly floor(p * bins).
    level = (prob.detach().flatten().float() * bins).floor_().clamp_(0, bins - 1)
    index = torch.where(target.flatten() > 0, level + bins, level).int()
    return torch.bincount(index, minlength=2 * bins)


def auroc_ap(histogram, bins: int = SCORE_BINS) -> dict[str, float]:
    """Pixel AUROC and average precision from a `score_histogram` (NaN without both classes)."""
    h = np.asarray(histogram.cpu() if isinstance(histogram, torch.Tensor) else histogram, np.int64)
    neg, pos = h.reshape(2, bins)
    seen = (neg + pos) > 0
    # Thresholds from the highest score down; one point per distinct (rounded) score.
    tps, fps = np.cumsum(pos[seen][::-1]), np.cumsum(neg[seen][::-1])
    n_pos, n_neg = (int(tps[-1]), int(fps[-1])) if len(tps) else (0, 0)
    if n_pos == 0:
        return {"auroc": float("nan"), "average_precision": float("nan")}
    recall = np.concatenate([[0.0], tps / n_pos])
    precision = tps / (tps + fps)
    ap = float(np.sum(np.diff(recall) * precision))
    if n_neg == 0:
        return {"auroc": float("nan"), "average_precision": ap}
    fpr = np.concatenate([[0.0], fps / n_neg])
    auroc = float(np.sum(np.diff(fpr) * (recall[1:] + recall[:-1]) / 2))
    return {"auroc": auroc, "average_precision": ap}


def summarize_surface(hd95: np.ndarray, assd: np.ndarray) -> dict[str, float]:
    """Means of the defined per-image surface distances and the count of undefined ones."""
    out: dict[str, float] = {}
    for name, v in (("hd95", hd95), ("assd", assd)):
        ok = ~np.isnan(v)
        out[name] = float(v[ok].mean()) if ok.any() else float("nan")
    out["surface_nan_count"] = int(np.isnan(hd95).sum())
    return out
