"""Segmentation metrics exactly as docs/metrics.md defines them (the one place they are written).

Evaluation loops call `confusion()` per batch (on the device, no host sync) and concatenate the
per-image counts; `per_image()` and `summarize()` turn the counts into numbers once per split,
`per_group()` and `volume_summary()` into per-volume ones. For AUROC and average precision the
loop adds each batch to `score_histogram()` on the device (bins of 1/SCORE_BINS); `auroc_ap()`
reads the curves off the summed histogram once. Surface distances (HD95, ASSD) are in
segbench.metrics.surface.
"""

from __future__ import annotations

import numpy as np
import torch

from segbench.task import BINARY, IGNORE, Task

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


def class_confusion(pred: torch.Tensor, target: torch.Tensor, classes: int,
                    ignore: int | None = None) -> torch.Tensor:
    """Per-image, per-class counts of a multiclass label map: an (N, C, 4) int64 tensor of TP, FP,
    FN, TN (one-vs-rest), on the inputs' device. `pred` and `target` are (N, ...) class indices;
    target pixels equal to `ignore` count in nothing.

    One bincount of `C * target + pred` per batch gives each image's C x C confusion matrix, so
    the cost does not grow with a Python loop over classes or images."""
    n = pred.shape[0]
    pred, target = pred.reshape(n, -1).long(), target.reshape(n, -1).long()
    valid = target < classes if ignore is None else target != ignore
    if ignore is None and not bool(valid.all()):
        raise ValueError(f"target holds a class index >= {classes}")
    index = (torch.arange(n, device=pred.device)[:, None] * classes
             + target.clamp(max=classes - 1)) * classes + pred
    # Ignored pixels go to one extra bin that is dropped: no masked copy of the whole batch.
    index = torch.where(valid, index, n * classes * classes)
    matrix = torch.bincount(index.flatten(), minlength=n * classes * classes + 1)[:-1]
    matrix = matrix.view(n, classes, classes)
    tp = matrix.diagonal(dim1=1, dim2=2)
    fp = matrix.sum(1) - tp      # predicted c, truth another class
    fn = matrix.sum(2) - tp      # truth c, predicted another class
    tn = valid.sum(1, keepdim=True) - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], 2)


def label_confusion(prob: torch.Tensor, target: torch.Tensor, threshold: float = 0.5,
                    ignore: int | None = None) -> torch.Tensor:
    """Per-image, per-channel counts of multilabel masks: (N, C, 4) int64 TP, FP, FN, TN. `prob`
    and `target` are (N, C, H, W); target pixels equal to `ignore` count in nothing."""
    pred = (prob >= threshold).flatten(2)
    target = target.flatten(2)
    valid = torch.ones_like(pred) if ignore is None else target != ignore
    truth = (target > 0) & valid
    pred = pred & valid
    tp = (pred & truth).sum(2)
    fp = (pred & ~truth).sum(2)
    fn = (~pred & truth).sum(2)
    tn = valid.sum(2) - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], 2)


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


def score_histogram(prob: torch.Tensor, target: torch.Tensor,
                    bins: int = SCORE_BINS) -> torch.Tensor:
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


# --- Several classes ---------------------------------------------------------------------------
# Every metric above, per class from its (N, 4) slice of an (N, C, 4) count array; the summary of
# a split is the mean over the foreground classes of each class's figure (docs/metrics.md). The
# empty rule holds per class: a class absent from both truth and prediction in an image scores
# Dice = IoU = 1 there; absent from the truth but predicted, it scores 0 (its false positives
# count).

CLASS_METRICS = ("dice", "iou", "precision", "recall", "specificity", "accuracy")
CLASS_RULE = ("per class one-vs-rest on the label map (multilabel: per channel); the summary is "
              "the mean over foreground classes of each class's figure; per class, dice = iou = 1 "
              "where the class is absent from both truth and prediction, 0 where it is predicted "
              "but absent from the truth; ignored pixels count in nothing")


def _counts(counts) -> np.ndarray:
    return np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, np.int64)


def per_image_classes(counts, names, foreground) -> dict[str, np.ndarray]:
    """Per-image metrics of each class (`dice_<name>`, ...) and their mean over the foreground
    classes (`dice`, ...), from (N, C, 4) counts."""
    c = _counts(counts)
    out: dict[str, np.ndarray] = {}
    per_class = [per_image(c[:, k]) for k in range(c.shape[1])]
    for k, name in enumerate(names):
        for metric in CLASS_METRICS + ("gt_pixels", "pred_pixels"):
            out[f"{metric}_{name}"] = per_class[k][metric]
    fg = list(foreground)
    for metric in CLASS_METRICS:
        stack = np.stack([per_class[k][metric] for k in fg], 1)
        ok = ~np.isnan(stack)
        n = ok.sum(1)  # NaN (e.g. precision with nothing predicted) is left out, as in summarize
        out[metric] = np.where(n > 0, np.where(ok, stack, 0.0).sum(1) / np.maximum(n, 1), np.nan)
    out["gt_pixels"] = sum(per_class[k]["gt_pixels"] for k in fg)
    out["pred_pixels"] = sum(per_class[k]["pred_pixels"] for k in fg)
    return out


def summarize_classes(counts, names, foreground) -> dict[str, float]:
    """A split's figures per class (`dice_<name>`, `dice_micro_<name>`, ...) and the summary over
    the foreground classes (`dice`, `dice_micro`, ...), from (N, C, 4) counts."""
    c = _counts(counts)
    out: dict[str, float] = {"n_images": int(c.shape[0])}
    per_class = {}
    for k, name in enumerate(names):
        summary = summarize(c[:, k])
        per_class[k] = summary
        for key, value in summary.items():
            if key != "n_images":
                out[f"{key}_{name}"] = value
    fg = list(foreground)
    keys = [k for k in per_class[fg[0]] if k != "n_images" and not k.endswith("_nan_count")
            and k != "empty_gt_images"] if fg else []
    for key in keys:
        values = np.array([per_class[k].get(key, np.nan) for k in fg], np.float64)
        ok = ~np.isnan(values)
        out[key] = float(values[ok].mean()) if ok.any() else float("nan")
    out["empty_gt_images"] = int(sum(per_class[k]["empty_gt_images"] for k in fg))
    return out


def volume_summary_classes(counts, groups, names, foreground) -> dict[str, float]:
    """Per-volume Dice and IoU of each class (pooled over each volume's slices) and their mean
    over the foreground classes, as `volume_summary` names them."""
    c = _counts(counts)
    out: dict[str, float] = {}
    means: dict[str, list[float]] = {}
    for k, name in enumerate(names):
        summary = volume_summary(c[:, k], groups)
        out["n_volumes"] = summary["n_volumes"]
        for key, value in summary.items():
            if key != "n_volumes":
                out[f"{key}_{name}"] = value
                if k in foreground:
                    means.setdefault(key, []).append(value)
    for key, values in means.items():
        out[key] = float(np.mean(values))
    return out


# --- One task's tensors ------------------------------------------------------------------------
# Masks of every task arrive as (N, 1, H, W) uint8 label maps (segbench.data.labels): {0, 1},
# class indices, or one bit per class (multilabel); IGNORE marks ignored pixels.


def probabilities(logits: torch.Tensor, task: Task = BINARY) -> torch.Tensor:
    """Sigmoid per channel (binary, multilabel) or softmax over the classes (multiclass)."""
    return torch.softmax(logits, 1) if task.kind == "multiclass" else torch.sigmoid(logits)


def unpack_labels(masks: torch.Tensor, task: Task) -> torch.Tensor:
    """(N, C, H, W) float targets of a multilabel batch: bit k of the label map is class k, and
    ignored pixels are IGNORE in every channel."""
    bits = torch.arange(task.channels, device=masks.device, dtype=torch.uint8).view(1, -1, 1, 1)
    labels = masks[:, :1]
    out = ((labels >> bits) & 1).float()
    return torch.where(labels == IGNORE, torch.full_like(out, IGNORE), out)


def class_argmax(probs: torch.Tensor) -> torch.Tensor:
    """(N, H, W) uint8 index of each pixel's largest channel (the first on a tie, as argmax).
    One comparison per class: torch's argmax over the channel dimension of an N x C x H x W
    tensor strides through memory and was 6x slower on the CPU (scripts/bench_eval_classes.py)."""
    best = probs[:, 0]
    index = torch.zeros(probs[:, 0].shape, dtype=torch.uint8, device=probs.device)
    for c in range(1, probs.shape[1]):
        index = torch.where(probs[:, c] > best, c, index)
        best = torch.maximum(best, probs[:, c])
    return index


def predicted_labels(probs: torch.Tensor, task: Task, threshold: float) -> torch.Tensor:
    """(N, H, W) predictions as the task stores masks: bool foreground (binary), class indices
    (multiclass, argmax) or one bit per class (multilabel)."""
    if task.kind == "multiclass":
        return class_argmax(probs)
    if task.kind == "multilabel":
        bits = (1 << torch.arange(task.channels, device=probs.device)).view(1, -1, 1, 1)
        return ((probs >= threshold).long() * bits).sum(1).to(torch.uint8)
    return probs[:, 0] >= threshold


def count_shape(task: Task) -> tuple[int, ...]:
    """The shape of one image's counts from `task_confusion`: (4,) binary, (C, 4) otherwise."""
    return (4,) if task.kind == "binary" else (task.channels, 4)


def task_confusion(probs: torch.Tensor, masks: torch.Tensor, task: Task = BINARY,
                   threshold: float = 0.5) -> torch.Tensor:
    """Per-image counts: (N, 4) for a binary task without ignored pixels (`confusion`, as before
    tasks existed), else (N, C, 4) (binary with ignore_index: C = 1)."""
    if task.kind == "multiclass":
        return class_confusion(class_argmax(probs), masks[:, 0], task.channels, ignore=IGNORE)
    if task.kind == "multilabel":
        return label_confusion(probs, unpack_labels(masks, task), threshold, ignore=IGNORE)
    if task.ignore_index is not None:
        return label_confusion(probs, masks, threshold, ignore=IGNORE)[:, 0]
    return confusion(probs, masks, threshold)


def task_summary(counts, task: Task = BINARY) -> dict[str, float]:
    """`summarize` of a binary task; per class and the mean over foreground classes otherwise."""
    c = _counts(counts)
    if c.ndim == 2:
        return summarize(c)
    return summarize_classes(c, task.names, task.foreground)


def task_per_image(counts, task: Task = BINARY) -> dict[str, np.ndarray]:
    c = _counts(counts)
    return per_image(c) if c.ndim == 2 else per_image_classes(c, task.names, task.foreground)

