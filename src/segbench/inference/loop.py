"""Evaluation shared by validation, the end-of-training test and `segbench eval`.

Per-image confusion counts (and, for a test, the pixel-score histogram of AUROC/AP and the
predicted masks) are accumulated on the device and copied to the host once per split. Surface
distances (HD95, ASSD) are computed after the loop, in parallel over images, on the test split
only, when `eval.surface_metrics` is true.

On several processes (engine/distributed.py) a loader with a `ShardSampler` gives each process a
share of the split; `evaluate()` then gathers the per-image counts by dataset index and sums the
histogram, per-volume counts and loss over the processes, so every process gets the split's
result (and rank 0 the kept maps and predicted masks), as one process would compute it.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from segbench import SegbenchError, metrics
from segbench.atomic import write_atomic
from segbench.losses import loss_target
from segbench.metrics import surface
from segbench.models.averaged import Ensemble
from segbench.runs import rundir
from segbench.runtime import distributed
from segbench.runtime.device import autocast
from segbench.task import BINARY, Task

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    counts: torch.Tensor                # (N, 4) TP, FP, FN, TN per image (several classes:
                                        # (N, C, 4), segbench.metrics.task_confusion), on the CPU
    loss: float | None = None
    kept: dict[int, np.ndarray] = field(default_factory=dict)  # index -> probability map
    scores: torch.Tensor | None = None  # metrics.score_histogram summed over the split
    predictions: list[np.ndarray] | None = None  # per image: bool predicted mask (H, W)
    volume_counts: torch.Tensor | None = None  # (V, 4) counts pooled per volume, on the CPU
    task: Task = BINARY

    def summary(self) -> dict[str, float]:
        out = metrics.task_summary(self.counts, self.task)
        if self.volume_counts is not None:
            dice = metrics.task_per_image(self.volume_counts, self.task)["dice"]
            out["volume_dice"] = float(dice.mean())
            out["volume_dice_median"] = float(np.median(dice))
        if self.scores is not None:
            out.update(metrics.auroc_ap(self.scores))
        if self.loss is not None:
            out["loss"] = self.loss
        return out


def predict_probs(model, images: torch.Tensor, amp_dtype=None, tta: bool = False,
                  logits: torch.Tensor | None = None) -> torch.Tensor:
    """Foreground probabilities; with tta the mean over identity, h-flip and v-flip. `logits`:
    the identity pass when the caller already ran it. An `Ensemble` averages its members'
    probabilities (each member with its own autocast dtype)."""
    task = model_task(model)
    if isinstance(model, Ensemble):
        probs = model.probabilities(images)
        if tta:
            for dim in (3, 2):
                probs += model.probabilities(images.flip(dim)).flip(dim)
            probs /= 3
        return probs
    device = images.device
    with autocast(device, amp_dtype):
        probs = metrics.probabilities((model(images) if logits is None else logits).float(), task)
        if tta:
            for dim in (3, 2):
                probs += metrics.probabilities(model(images.flip(dim)).float(), task).flip(dim)
            probs /= 3
    return probs


def model_task(model) -> Task:
    """What a model's logits mean (segbench.task): set by build_model; binary for a bare net."""
    return getattr(model, "task", BINARY)


@torch.no_grad()
def evaluate(model, loader: DataLoader, device: torch.device, *, threshold: float = 0.5,
             loss_fn=None, amp_dtype=None, tta: bool = False, keep: tuple[int, ...] = (),
             channels_last: bool = False, scores: bool = False,
             keep_predictions: bool = False, volumes: torch.Tensor | None = None,
             progress=None) -> EvalResult:
    """progress: wraps the batches (the run's progress bar or lines);
    scores: accumulate the pixel-score histogram (AUROC, AP); keep_predictions: return the
    thresholded masks (for surface distances); volumes: each dataset item's volume number, to pool
    the confusion counts per volume on the device (per-volume Dice, one sync per split). A loader
    whose sampler is a distributed.ShardSampler evaluates this process's share and returns the
    whole split's result, gathered from every process."""
    model.eval()
    task = model_task(model)
    counts, loss_sum, seen = [], torch.zeros((), device=device), 0
    indices = []
    volume_counts = None
    if volumes is not None:
        volumes = volumes.to(device)
        volume_counts = torch.zeros(int(volumes.max()) + 1, *metrics.count_shape(task),
                                    dtype=torch.long, device=device)
    scores = scores and task.kind == "binary"  # pixel AUROC/AP: one foreground class only
    histogram = torch.zeros(2 * metrics.SCORE_BINS, dtype=torch.long, device=device) if scores else None
    predictions = []
    kept: dict[int, np.ndarray] = {}
    keep_set = set(keep)
    for images, masks, index in (progress(loader) if progress is not None else loader):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        masks = masks.to(device, non_blocking=True)
        if loss_fn is not None:
            with autocast(device, amp_dtype):
                logits = model(images)
            loss_sum += loss_fn(logits.float(), loss_target(masks, task)) * len(images)
            probs = predict_probs(model, images, amp_dtype, tta, logits=logits)
        else:
            probs = predict_probs(model, images, amp_dtype, tta)
        seen += len(images)
        model_probs = probs
        if masks.shape[-2:] != probs.shape[-2:]:  # native-resolution masks: score at their size
            probs = torch.nn.functional.interpolate(probs, size=masks.shape[-2:], mode="bilinear",
                                                    align_corners=False)
        counts.append(metrics.task_confusion(probs, masks, task, threshold))
        if volume_counts is not None:
            volume_counts.index_add_(0, volumes[index.to(device)], counts[-1].long())
        if histogram is not None:
            histogram += metrics.score_histogram(probs, masks)
        if keep_predictions:
            predictions.append(metrics.predicted_labels(probs, task, threshold))
        if keep_set:
            for row, i in enumerate(index.tolist()):
                if i in keep_set:  # a probability map; several classes: the predicted labels
                    kept[i] = (model_probs[row, 0].float().cpu().numpy() if task.kind == "binary"
                               else metrics.predicted_labels(model_probs[row:row + 1], task,
                                                             threshold)[0].cpu().numpy())
        indices.append(index)
    masks_out = [p.numpy() for batch in predictions for p in batch.cpu()] if keep_predictions else None
    counts = (torch.cat(counts) if counts else
              torch.zeros((0, *metrics.count_shape(task)), dtype=torch.long, device=device))
    if isinstance(loader.sampler, distributed.ShardSampler):  # this process's share: gather the rest
        index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
        counts = distributed.gather_rows(counts, index, len(loader.dataset))
        totals = distributed.all_sum(torch.stack([loss_sum, loss_sum.new_tensor(seen)]))
        loss_sum, seen = totals[0], int(totals[1].item())
        histogram = distributed.all_sum(histogram) if histogram is not None else None
        volume_counts = distributed.all_sum(volume_counts) if volume_counts is not None else None
        shares = distributed.gather_objects((kept, dict(zip(index.tolist(), masks_out or []))))
        if shares is not None:  # rank 0: the kept maps and predicted masks of every share
            kept = {i: p for share, _ in shares for i, p in share.items()}
            by_index = {i: m for _, share in shares for i, m in share.items()}
            masks_out = [by_index[i] for i in range(len(loader.dataset))] if keep_predictions else None
        else:
            kept, masks_out = {}, None
    if len(counts) == 0:
        raise SegbenchError("evaluation got an empty split")
    return EvalResult(
        counts=counts.cpu(),
        loss=float(loss_sum.item() / seen) if loss_fn is not None else None,
        kept=kept,
        scores=histogram.cpu() if histogram is not None else None,
        predictions=masks_out,
        volume_counts=volume_counts.cpu() if volume_counts is not None else None,
        task=task,
    )


def eval_loader(dataset, batch_size: int, device: torch.device, num_workers: int = 0,
                shard: bool = False) -> DataLoader:
    """Batches of a split in order; with `shard`, this process's share of it (several processes)."""
    from segbench.data.dataset import ignore_stop_signals

    sampler = distributed.ShardSampler(len(dataset)) if shard else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler,
                      num_workers=num_workers, pin_memory=device.type == "cuda",
                      persistent_workers=False, worker_init_fn=ignore_stop_signals)


def write_per_case(path: Path, ids: list[str], counts: torch.Tensor, groups: list | None = None,
                   surface_values: dict[str, np.ndarray] | None = None) -> None:
    values = {**metrics.per_image(counts), **(surface_values or {})}
    c = counts.numpy()
    names = ["dice", "iou", "precision", "recall", "specificity", "accuracy",
             *(["hd95", "assd"] if surface_values else [])]
    f = io.StringIO()
    w = csv.writer(f)
    w.writerow(["image", *(["group"] if groups else []), *names, "gt_pixels", "pred_pixels",
                "tp", "fp", "fn", "tn"])
    for i, image_id in enumerate(ids):
        w.writerow([image_id, *([groups[i]] if groups else []),
                    *(f"{values[n][i]:.6f}" for n in names),
                    int(values["gt_pixels"][i]), int(values["pred_pixels"][i]), *c[i].tolist()])
    write_atomic(path, f.getvalue())


def write_per_volume(path: Path, counts: torch.Tensor, groups: list) -> None:
    """One row per volume (patient): its slice count and metrics of its pooled counts."""
    names, pooled = metrics.per_group(counts, groups)
    values = metrics.per_image(pooled)
    slices = Counter(groups)
    metric_names = ["dice", "iou", "precision", "recall", "specificity", "accuracy"]
    f = io.StringIO()
    w = csv.writer(f)
    w.writerow(["volume", "slices", *metric_names, "gt_pixels", "pred_pixels",
                "tp", "fp", "fn", "tn"])
    for i, name in enumerate(names):
        w.writerow([name, slices[name], *(f"{values[n][i]:.6f}" for n in metric_names),
                    int(values["gt_pixels"][i]), int(values["pred_pixels"][i]),
                    *pooled[i].tolist()])
    write_atomic(path, f.getvalue())


def test_split(model, dataset, device, *, out_dir: Path, threshold: float, tta: bool,
               batch_size: int, amp_dtype=None, num_predictions: int = 6, groups=None,
               channels_last: bool = False, num_workers: int = 0, surface_metrics: bool = False,
               pixel_spacing=None, surface_workers="auto", native_masks=None, progress=None,
               shard: bool = False) -> dict:
    """Evaluate a split once and write per_case.csv, predictions.png, confusion_matrix.png (and
    per_volume.csv when `groups` name each image's volume); returns the metrics (with HD95/ASSD
    when surface_metrics, in mm when pixel_spacing is set). With `native_masks` (the masks at
    their size on disk) every metric is computed at that size, probabilities resized to it.
    cases.npz keeps every case's predicted mask for the report's galleries.
    `progress`: wraps the loader (the training run's progress bar or lines). `shard`: several
    processes evaluate a share each; rank 0 writes and returns the metrics, the others return {}."""
    from segbench.data.dataset import NativeMaskDataset
    from segbench.inference.cases import save_cases
    from segbench.viz import plot_confusion, plot_predictions

    keep = tuple(np.linspace(0, len(dataset) - 1, min(num_predictions, len(dataset))).round().astype(int).tolist())
    scored, truths = dataset, dataset.masks
    if native_masks is not None:
        scored, truths, batch_size = NativeMaskDataset(dataset.images, native_masks, dataset.ids), native_masks, 1
    result = evaluate(model, eval_loader(scored, batch_size, device, num_workers, shard), device,
                      progress=progress,
                      threshold=threshold, amp_dtype=amp_dtype, tta=tta, keep=keep,
                      channels_last=channels_last, scores=True, keep_predictions=True)
    plain = None
    if tta:  # the same split without TTA: the gallery shows the cases TTA changed most
        plain = evaluate(model, eval_loader(scored, batch_size, device, num_workers, shard), device,
                         threshold=threshold, amp_dtype=amp_dtype, channels_last=channels_last,
                         keep_predictions=True)
    if not distributed.current().is_main:
        return {}
    if result.task != BINARY:
        return _test_classes(result, dataset, truths, out_dir, keep, groups, surface_metrics,
                             pixel_spacing, surface_workers, threshold, num_predictions)
    summary = result.summary()
    summary.update(zip(metrics.COUNT_NAMES, (int(v) for v in result.counts.sum(0).tolist()), strict=True))
    per_image_surface = None
    if surface_metrics:
        s = surface.surface_metrics(result.predictions, truths, pixel_spacing,
                                    workers=surface_workers)
        per_image_surface = {"hd95": s["hd95"], "assd": s["assd"]}
        summary.update(metrics.summarize_surface(s["hd95"], s["assd"]))
        summary["surface_seconds"] = round(s["seconds"], 3)
        log.info("surface metrics (HD95, ASSD in %s) of %d images: %.2fs in %d thread(s); "
                 "%d image(s) with an empty mask left out", "mm" if pixel_spacing else "pixels",
                 len(dataset), s["seconds"], s["workers"], summary["surface_nan_count"])
    write_per_case(out_dir / rundir.PER_CASE, dataset.ids, result.counts, groups, per_image_surface)
    plot_confusion(summary["tp"], summary["fp"], summary["fn"], summary["tn"],
                   out_dir / rundir.CONFUSION,
                   f"{len(dataset)} images, threshold {threshold}{', flip TTA' if tta else ''}")
    if groups:  # volumetric data: per-volume Dice beside the per-slice figures
        write_per_volume(out_dir / rundir.PER_VOLUME, result.counts, list(groups))
        summary.update(metrics.volume_summary(result.counts, groups))
    dice = metrics.per_image(result.counts)["dice"]
    images = [np.asarray(dataset.images[i]) for i in keep]
    masks = [np.asarray(dataset.masks[i]) for i in keep]
    probs = [result.kept[i] for i in keep]
    plot_predictions(images, masks, probs, [f"{dataset.ids[i]}\nDice {dice[i]:.3f}" for i in keep],
                     out_dir / rundir.PREDICTIONS, threshold)
    save_prediction_samples(out_dir / rundir.PREDICTION_SAMPLES, [dataset.ids[i] for i in keep], images,
                            masks, probs, dice[list(keep)], threshold)
    per_image = metrics.per_image(result.counts)  # the report's case galleries (cases.py)
    save_cases(out_dir / rundir.CASES, list(dataset.ids), result.counts.numpy(), per_image["dice"],
               per_image["iou"], per_image_surface["hd95"] if per_image_surface else None,
               result.predictions, dataset.images, truths, threshold, groups, num_predictions,
               plain=(plain.predictions, metrics.per_image(plain.counts)["dice"]) if plain else None)
    return summary


def _test_classes(result, dataset, truths, out_dir: Path, keep, groups, surface_metrics: bool,
                  pixel_spacing, surface_workers, threshold: float, num_predictions: int) -> dict:
    """test_split's records for several classes: metrics per class and their foreground mean,
    per_case.csv (and per_volume.csv) with a column per class, the prediction figure in class
    colours; cases.npz keeps the label maps the galleries colour, with the union of the
    foreground classes as each case's mask."""
    from segbench.inference.cases import save_cases
    from segbench.viz import plot_class_predictions

    task, counts = result.task, result.counts
    summary = result.summary()
    per_image_surface: dict[str, np.ndarray] = {}
    if surface_metrics:
        for k, name in zip(task.foreground, task.foreground_names, strict=True):
            s = surface.surface_metrics([task.class_mask(np.asarray(p), k) for p in result.predictions],
                                        [task.class_mask(np.asarray(t), k) for t in truths], pixel_spacing,
                                        workers=surface_workers)
            per_image_surface[f"hd95_{name}"], per_image_surface[f"assd_{name}"] = s["hd95"], s["assd"]
            summary.update({f"{key}_{name}": v for key, v in
                            metrics.summarize_surface(s["hd95"], s["assd"]).items()})
        for key in ("hd95", "assd"):  # the foreground classes' mean of each class's mean
            values = [summary[f"{key}_{n}"] for n in task.foreground_names]
            ok = [v for v in values if not np.isnan(v)]
            summary[key] = float(np.mean(ok)) if ok else float("nan")
    per_image = metrics.task_per_image(counts, task)
    write_class_table(out_dir / rundir.PER_CASE, "image", dataset.ids, per_image, task,
                      groups, per_image_surface)
    if groups:
        names, pooled = metrics.per_group(counts.numpy().reshape(len(counts), -1), groups)
        pooled = pooled.reshape(len(names), task.channels, 4)
        write_class_table(out_dir / rundir.PER_VOLUME, "volume", names,
                          metrics.task_per_image(pooled, task), task)
        summary.update(metrics.volume_summary_classes(counts.numpy(), groups, task.names,
                                                      task.foreground))
    images = [np.asarray(dataset.images[i]) for i in keep]
    plot_class_predictions(images, [np.asarray(truths[i]) for i in keep],
                           [result.kept[i] for i in keep],
                           [f"{dataset.ids[i]}\nDice {per_image['dice'][i]:.3f}" for i in keep],
                           out_dir / rundir.PREDICTIONS, task)
    union = [task.foreground_mask(np.asarray(p)) for p in result.predictions]
    union_truth = [task.foreground_mask(np.asarray(t)) for t in truths]
    union_counts = np.array([[(u & t).sum(), (u & ~t).sum(), (~u & t).sum(), (~u & ~t).sum()]
                             for u, t in zip(union, union_truth, strict=True)], np.int64)
    save_cases(out_dir / rundir.CASES, list(dataset.ids), union_counts, per_image["dice"],
               per_image["iou"], None, union, dataset.images, union_truth, threshold, groups,
               num_predictions, labels=(result.predictions, truths, task.spec()))
    return summary


def write_class_table(path: Path, key: str, ids, values: dict, task: Task, groups=None,
                      surface_values: dict | None = None) -> None:
    """per_case.csv / per_volume.csv of several classes: the foreground mean, then each class."""
    metric_names = ["dice", "iou", "precision", "recall"]
    columns = [*metric_names, *(f"{m}_{n}" for n in task.names for m in ("dice", "iou")),
               *(f"gt_pixels_{n}" for n in task.names), *(f"pred_pixels_{n}" for n in task.names)]
    extra = list(surface_values or {})
    f = io.StringIO()
    w = csv.writer(f)
    w.writerow([key, *(["group"] if groups else []), *columns, *extra])
    for i, name in enumerate(ids):
        w.writerow([name, *([groups[i]] if groups else []),
                    *(f"{values[c][i]:.6f}" if "pixels" not in c else int(values[c][i])
                      for c in columns),
                    *(f"{surface_values[c][i]:.6f}" for c in extra)])
    write_atomic(path, f.getvalue())


def save_prediction_samples(path: Path, ids, images, masks, probs, dice, threshold: float,
                            max_side: int = 256) -> None:
    """The drawn test images as small thumbnails with their ground truth, probabilities (uint8)
    and Dice, so that `segbench report` can compare runs on the same images without the data."""
    import cv2

    if not ids:
        return
    h, w = masks[0].shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 wants (width, height)

    def small(a, interp):
        out = cv2.resize(a, size, interpolation=interp) if scale < 1 else a
        return out.reshape(size[1], size[0], -1) if a.ndim == 3 else out

    arrays = dict(
        ids=np.array(ids), dice=np.asarray(dice, np.float32), threshold=threshold,
        images=np.stack([small(np.ascontiguousarray(i), cv2.INTER_AREA) for i in images]),
        masks=np.stack([small(np.ascontiguousarray(m, np.uint8), cv2.INTER_NEAREST) for m in masks]),
        probs=np.stack([small(np.round(p * 255).astype(np.uint8), cv2.INTER_AREA) for p in probs]))
    write_atomic(path, lambda f: np.savez_compressed(f, **arrays))


def metric_line(m: dict, prefix: str = "") -> str:
    keys = ("dice", "iou", "dice_micro", "iou_micro", "precision", "recall", "volume_dice_mean",
            "volume_dice_median", "auroc", "average_precision", "hd95", "assd")
    return "  ".join(f"{prefix}{k} {m[k]:.4f}" for k in keys if k in m)


def pixel_spacing(cfg: DictConfig, native: bool = False) -> list[float] | None:
    """(row, column) mm per pixel at the evaluated resolution, or None (distances in pixels).
    With `native` (eval.native_resolution) the images' own spacing.

    `dataset.pixel_spacing` (a number or [row, column] mm) is the spacing of the images on disk,
    which are `dataset.native_size` ([height, width]) pixels; resizing to `resolution` scales it.
    """
    spacing = cfg.dataset.get("pixel_spacing")
    if spacing is None:
        return None
    native_size = cfg.dataset.get("native_size")
    spacing = list(spacing) if not isinstance(spacing, (int, float)) else [spacing, spacing]
    if native_size is None or len(native_size) != 2 or len(spacing) != 2:
        raise SegbenchError(
            "dataset.pixel_spacing needs dataset.native_size=[height,width], the size of the "
            "images it describes (segbench rescales the spacing to the training resolution); "
            "give pixel_spacing as a number or [row_mm,column_mm], or set it to null for pixels")
    if min(float(v) for v in [*spacing, *native_size]) <= 0:
        raise SegbenchError(f"dataset.pixel_spacing {spacing} and native_size {list(native_size)} must be > 0")
    if native:
        return [float(sp) for sp in spacing]
    size = (int(cfg.resolution.height), int(cfg.resolution.width))
    return [float(sp) * float(n) / s for sp, n, s in zip(spacing, native_size, size, strict=True)]


def evaluation_record(threshold: float, tta: bool, surface_metrics: bool, spacing,
                      native_resolution: bool = False) -> dict:
    """How the numbers of a metrics.json were made, written beside them."""
    return {"threshold": threshold, "tta": tta, "empty_rule": metrics.EMPTY_RULE,
            "native_resolution": native_resolution,
            "surface_metrics": surface_metrics,
            "surface_unit": "mm" if spacing else "px", "pixel_spacing": spacing,
            "hd95_rule": surface.HD95_RULE, "assd_rule": surface.ASSD_RULE,
            "auroc_method": metrics.AUROC_METHOD}
