"""Evaluation shared by validation, the end-of-training test and `segbench eval`.

Per-image confusion counts (and, for a test, the pixel-score histogram of AUROC/AP and the
predicted masks) are accumulated on the device and copied to the host once per split. Surface
distances (HD95, ASSD) are computed after the loop, in parallel over images, on the test split
only, when `eval.surface_metrics` is true.

On several processes (runtime/distributed.py) a loader with a `ShardSampler` gives each process a
share of the split; `evaluate()` then gathers the per-image counts by dataset index and sums the
histogram, per-volume counts and loss over the processes, so every process gets the split's
result (and rank 0 the kept maps and predicted masks), as one process would compute it.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from segbench import SegbenchError, metrics
from segbench.atomic import write_atomic
from segbench.data.dataset import NativeMaskDataset, SegmentationDataset, ignore_stop_signals
from segbench.inference.cases import SplitCases, save_cases
from segbench.losses import loss_target
from segbench.metrics import surface
from segbench.models.averaged import Ensemble
from segbench.runs import rundir
from segbench.runtime import distributed
from segbench.runtime.device import autocast
from segbench.settings import Eval
from segbench.task import BINARY, Task
from segbench.viz import plot_class_predictions, plot_confusion, plot_predictions

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


@dataclass
class Subject:
    """The model under evaluation (one run's, or an `Ensemble`) on its device."""

    model: torch.nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False


@dataclass
class Runtime:
    """How the split is evaluated; none of it changes the numbers."""

    batch_size: int
    num_workers: int = 0
    progress: Callable | None = None  # wraps the batches (the training run's progress)
    shard: bool = False               # several processes, a share each (rank 0 gets the record)


@dataclass(frozen=True)
class Collect:
    """What `evaluate()` keeps besides the confusion counts (and the loss, given a loss)."""

    keep: tuple[int, ...] = ()           # dataset indices whose maps are kept (for figures)
    scores: bool = False                 # the pixel-score histogram (AUROC, AP; binary tasks)
    keep_predictions: bool = False       # every image's predicted mask (surface distances)
    volumes: torch.Tensor | None = None  # each item's volume number: counts pooled per volume


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


class _Tally:
    """`evaluate()`'s running sums over a split, kept on the device: per-image counts, the loss,
    the score histogram, per-volume counts, the kept maps and the predicted masks."""

    def __init__(self, task: Task, device: torch.device, collect: Collect, threshold: float):
        self.task, self.device, self.threshold = task, device, threshold
        self.batch_counts: list[torch.Tensor] = []
        self.indices: list[torch.Tensor] = []
        self.loss_sum, self.seen = torch.zeros((), device=device), 0
        self.volumes = None if collect.volumes is None else collect.volumes.to(device)
        self.volume_counts = None
        if self.volumes is not None:
            self.volume_counts = torch.zeros(int(self.volumes.max()) + 1,
                                             *metrics.count_shape(task), dtype=torch.long,
                                             device=device)
        scores = collect.scores and task.kind == "binary"  # pixel AUROC/AP: one class only
        self.histogram = (torch.zeros(2 * metrics.SCORE_BINS, dtype=torch.long, device=device)
                          if scores else None)
        self.keep_predictions = collect.keep_predictions
        self.predicted: list[torch.Tensor] = []
        self.keep_set = set(collect.keep)
        self.kept: dict[int, np.ndarray] = {}
        # After the loop (finish): the split's counts and predicted masks.
        self.counts = torch.zeros(0)
        self.masks: list[np.ndarray] | None = None

    def add(self, probs: torch.Tensor, masks: torch.Tensor, index: torch.Tensor,
            model_probs: torch.Tensor) -> None:
        """One batch: `probs` at the masks' size, `model_probs` at the model's (kept maps)."""
        counts = metrics.task_confusion(probs, masks, self.task, self.threshold)
        self.batch_counts.append(counts)
        if self.volumes is not None and self.volume_counts is not None:
            self.volume_counts.index_add_(0, self.volumes[index.to(self.device)], counts.long())
        if self.histogram is not None:
            self.histogram += metrics.score_histogram(probs, masks)
        if self.keep_predictions:
            self.predicted.append(metrics.predicted_labels(probs, self.task, self.threshold))
        if self.keep_set:
            for row, i in enumerate(index.tolist()):
                if i in self.keep_set:  # a probability map; several classes: the predicted labels
                    self.kept[i] = self._kept_map(model_probs, row)
        self.indices.append(index)

    def _kept_map(self, model_probs: torch.Tensor, row: int) -> np.ndarray:
        if self.task.kind == "binary":
            return model_probs[row, 0].float().cpu().numpy()
        labels = metrics.predicted_labels(model_probs[row:row + 1], self.task, self.threshold)
        return labels[0].cpu().numpy()

    def finish(self) -> None:
        """The split's counts (one tensor) and predicted masks (host arrays), after the loop."""
        if self.keep_predictions:
            self.masks = [p.numpy() for batch in self.predicted for p in batch.cpu()]
        self.counts = (torch.cat(self.batch_counts) if self.batch_counts else
                       torch.zeros((0, *metrics.count_shape(self.task)), dtype=torch.long,
                                   device=self.device))

    def gather(self, total: int) -> None:
        """This process evaluated its share of a `total`-item split: every sum becomes the
        split's, over all processes; rank 0 gets every share's kept maps and predicted masks."""
        index = torch.cat(self.indices) if self.indices else torch.zeros(0, dtype=torch.long)
        self.counts = distributed.gather_rows(self.counts, index, total)
        totals = distributed.all_sum(torch.stack([self.loss_sum,
                                                  self.loss_sum.new_tensor(self.seen)]))
        self.loss_sum, self.seen = totals[0], int(totals[1].item())
        if self.histogram is not None:
            self.histogram = distributed.all_sum(self.histogram)
        if self.volume_counts is not None:
            self.volume_counts = distributed.all_sum(self.volume_counts)
        masks = dict(zip(index.tolist(), self.masks or []))
        shares = distributed.gather_objects((self.kept, masks))
        if shares is None:  # not rank 0
            self.kept, self.masks = {}, None
            return
        self.kept = {i: p for share, _ in shares for i, p in share.items()}
        by_index = {i: m for _, share in shares for i, m in share.items()}
        self.masks = [by_index[i] for i in range(total)] if self.keep_predictions else None

    def result(self, with_loss: bool) -> EvalResult:
        return EvalResult(
            counts=self.counts.cpu(),
            loss=float(self.loss_sum.item() / self.seen) if with_loss else None,
            kept=self.kept,
            scores=self.histogram.cpu() if self.histogram is not None else None,
            predictions=self.masks,
            volume_counts=self.volume_counts.cpu() if self.volume_counts is not None else None,
            task=self.task,
        )


@torch.no_grad()
def evaluate(subject: Subject, loader: DataLoader, *, threshold: float = 0.5, tta: bool = False,
             loss_fn=None, collect: Collect | None = None, progress=None) -> EvalResult:
    """The split's confusion counts (and its mean loss, given `loss_fn`; with `collect`, the
    kept maps, score histogram, predicted masks or per-volume counts). `progress` wraps the
    batches (the run's progress bar or lines). A loader whose sampler is a
    distributed.ShardSampler evaluates this process's share and returns the whole split's
    result, gathered from every process."""
    model, device = subject.model, subject.device
    model.eval()
    task = model_task(model)
    tally = _Tally(task, device, collect or Collect(), threshold)
    for images, masks, index in (progress(loader) if progress is not None else loader):
        images = images.to(device, non_blocking=True)
        if subject.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        masks = masks.to(device, non_blocking=True)
        model_probs = _batch_probabilities(subject, images, masks, tta, loss_fn, tally)
        tally.seen += len(images)
        probs = model_probs
        if masks.shape[-2:] != probs.shape[-2:]:  # native-resolution masks: score at their size
            probs = torch.nn.functional.interpolate(probs, size=masks.shape[-2:], mode="bilinear",
                                                    align_corners=False)
        tally.add(probs, masks, index, model_probs)
    tally.finish()
    if isinstance(loader.sampler, distributed.ShardSampler):  # this process's share
        tally.gather(len(cast(Sized, loader.dataset)))
    if len(tally.counts) == 0:
        raise SegbenchError("evaluation got an empty split")
    return tally.result(with_loss=loss_fn is not None)


def _batch_probabilities(subject: Subject, images: torch.Tensor, masks: torch.Tensor, tta: bool,
                         loss_fn, tally: _Tally) -> torch.Tensor:
    """A batch's probabilities at the model's size; with `loss_fn`, its loss added to the tally
    (from the same forward pass)."""
    model, amp_dtype = subject.model, subject.amp_dtype
    if loss_fn is None:
        return predict_probs(model, images, amp_dtype, tta)
    with autocast(subject.device, amp_dtype):
        logits = model(images)
    tally.loss_sum += loss_fn(logits.float(), loss_target(masks, tally.task)) * len(images)
    return predict_probs(model, images, amp_dtype, tta, logits=logits)


def eval_loader(dataset, batch_size: int, device: torch.device, num_workers: int = 0,
                shard: bool = False) -> DataLoader:
    """Batches of a split in order; with `shard`, this process's share of it (several
    processes)."""
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


# A split's masks, indexable per image: the dataset's array, or a list of native-size masks.
Masks = np.ndarray | list[np.ndarray]


@dataclass
class _Test:
    """What `test_split`'s records are written from, besides the evaluation's result."""

    dataset: SegmentationDataset    # the split at the model's resolution: images, masks, ids
    truths: Masks                   # the masks scored against (native-resolution ones or these)
    keep: tuple[int, ...]           # the cases drawn in predictions.png
    settings: Eval
    out_dir: Path
    groups: list | None             # each image's volume, on volumetric data
    spacing: list[float] | None     # mm per pixel (None: distances in pixels)


def test_split(subject: Subject, dataset: SegmentationDataset, settings: Eval, out_dir: Path,
               runtime: Runtime, *,
               groups: list | None = None, spacing: list[float] | None = None,
               native_masks: list[np.ndarray] | None = None) -> dict:
    """Evaluate a split once and write per_case.csv, predictions.png, confusion_matrix.png (and
    per_volume.csv when `groups` name each image's volume); returns the metrics (with HD95/ASSD
    when settings.surface_metrics, in mm when `spacing` is set). With `native_masks` (the masks
    at their size on disk) every metric is computed at that size, probabilities resized to it.
    cases.npz keeps every case's predicted mask for the report's galleries. With
    `runtime.shard`, several processes evaluate a share each; rank 0 writes and returns the
    metrics, the others return {}."""
    keep = tuple(np.linspace(0, len(dataset) - 1, min(settings.num_predictions, len(dataset)))
                 .round().astype(int).tolist())
    scored: Dataset = dataset
    truths: Masks = dataset.masks
    batch_size = runtime.batch_size
    if native_masks is not None:
        scored, truths, batch_size = (NativeMaskDataset(dataset.images, native_masks, dataset.ids),
                                      native_masks, 1)

    def loader() -> DataLoader:
        return eval_loader(scored, batch_size, subject.device, runtime.num_workers, runtime.shard)

    result = evaluate(subject, loader(), threshold=settings.threshold, tta=settings.tta,
                      collect=Collect(keep=keep, scores=True, keep_predictions=True),
                      progress=runtime.progress)
    plain = None
    if settings.tta:  # the same split without TTA: the gallery shows the cases TTA changed most
        plain = evaluate(subject, loader(), threshold=settings.threshold,
                         collect=Collect(keep_predictions=True))
    if not distributed.current().is_main:
        return {}
    test = _Test(dataset, truths, keep, settings, out_dir, groups, spacing)
    if result.task != BINARY:
        return _test_classes(test, result)
    return _test_binary(test, result, plain)


def _predicted(result: EvalResult) -> list[np.ndarray]:
    """The predicted masks of test_split's evaluation (it keeps them: keep_predictions)."""
    assert result.predictions is not None
    return result.predictions


def _test_binary(test: _Test, result: EvalResult, plain: EvalResult | None) -> dict:
    """test_split's records for one foreground class: per_case.csv (per_volume.csv), the
    confusion matrix, the drawn cases (predictions.png, predictions.npz) and cases.npz."""
    dataset, settings, out_dir = test.dataset, test.settings, test.out_dir
    summary = result.summary()
    totals = [int(v) for v in result.counts.sum(0).tolist()]
    summary.update(zip(metrics.COUNT_NAMES, totals, strict=True))
    per_image_surface = None
    if settings.surface_metrics:
        per_image_surface = _binary_surface(test, result, summary)
    write_per_case(out_dir / rundir.PER_CASE, dataset.ids, result.counts, test.groups,
                   per_image_surface)
    tp, fp, fn, tn = totals
    plot_confusion(tp, fp, fn, tn, out_dir / rundir.CONFUSION,
                   f"{len(dataset)} images, threshold {settings.threshold}"
                   f"{', flip TTA' if settings.tta else ''}")
    if test.groups:  # volumetric data: per-volume Dice beside the per-slice figures
        write_per_volume(out_dir / rundir.PER_VOLUME, result.counts, list(test.groups))
        summary.update(metrics.volume_summary(result.counts, test.groups))
    _draw_binary_cases(test, result)
    per_image = metrics.per_image(result.counts)  # the report's case galleries (cases.py)
    cases = SplitCases(list(dataset.ids), result.counts.numpy(), per_image["dice"],
                       per_image["iou"], per_image_surface["hd95"] if per_image_surface else None,
                       _predicted(result), dataset.images, test.truths, settings.threshold,
                       test.groups)
    without_tta = (plain.predictions, metrics.per_image(plain.counts)["dice"]) if plain else None
    save_cases(out_dir / rundir.CASES, cases, settings.num_predictions, plain=without_tta)
    return summary


def _binary_surface(test: _Test, result: EvalResult, summary: dict) -> dict[str, np.ndarray]:
    """Every image's HD95 and ASSD; their summary added to `summary`."""
    s = surface.surface_metrics(_predicted(result), test.truths, test.spacing,
                                workers=test.settings.surface_workers)
    summary.update(metrics.summarize_surface(s["hd95"], s["assd"]))
    summary["surface_seconds"] = round(s["seconds"], 3)
    log.info("surface metrics (HD95, ASSD in %s) of %d images: %.2fs in %d thread(s); "
             "%d image(s) with an empty mask left out", "mm" if test.spacing else "pixels",
             len(test.dataset), s["seconds"], s["workers"], summary["surface_nan_count"])
    return {"hd95": s["hd95"], "assd": s["assd"]}


def _draw_binary_cases(test: _Test, result: EvalResult) -> None:
    """predictions.png and its thumbnails (predictions.npz) of the kept cases."""
    dataset, keep, threshold = test.dataset, test.keep, test.settings.threshold
    dice = metrics.per_image(result.counts)["dice"]
    images = [np.asarray(dataset.images[i]) for i in keep]
    masks = [np.asarray(dataset.masks[i]) for i in keep]
    probs = [result.kept[i] for i in keep]
    plot_predictions(images, masks, probs, [f"{dataset.ids[i]}\nDice {dice[i]:.3f}" for i in keep],
                     test.out_dir / rundir.PREDICTIONS, threshold)
    save_prediction_samples(test.out_dir / rundir.PREDICTION_SAMPLES,
                            [dataset.ids[i] for i in keep], images, masks, probs,
                            dice[list(keep)], threshold)


def _test_classes(test: _Test, result: EvalResult) -> dict:
    """test_split's records for several classes: metrics per class and their foreground mean,
    per_case.csv (and per_volume.csv) with a column per class, the prediction figure in class
    colours; cases.npz keeps the label maps the galleries colour, with the union of the
    foreground classes as each case's mask."""
    dataset, out_dir, groups = test.dataset, test.out_dir, test.groups
    task, counts = result.task, result.counts
    summary = result.summary()
    per_image_surface: dict[str, np.ndarray] = {}
    if test.settings.surface_metrics:
        per_image_surface = _class_surface(test, result, summary)
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
    keep = test.keep
    images = [np.asarray(dataset.images[i]) for i in keep]
    plot_class_predictions(images, [np.asarray(test.truths[i]) for i in keep],
                           [result.kept[i] for i in keep],
                           [f"{dataset.ids[i]}\nDice {per_image['dice'][i]:.3f}" for i in keep],
                           out_dir / rundir.PREDICTIONS, task)
    _save_class_cases(test, result, per_image)
    return summary


def _class_surface(test: _Test, result: EvalResult, summary: dict) -> dict[str, np.ndarray]:
    """Every image's HD95 and ASSD per foreground class; each class's summary, and the
    foreground classes' mean of each class's mean, added to `summary`."""
    task, out = result.task, {}
    for k, name in zip(task.foreground, task.foreground_names, strict=True):
        s = surface.surface_metrics([task.class_mask(np.asarray(p), k) for p in _predicted(result)],
                                    [task.class_mask(np.asarray(t), k) for t in test.truths],
                                    test.spacing, workers=test.settings.surface_workers)
        out[f"hd95_{name}"], out[f"assd_{name}"] = s["hd95"], s["assd"]
        summary.update({f"{key}_{name}": v for key, v in
                        metrics.summarize_surface(s["hd95"], s["assd"]).items()})
    for key in ("hd95", "assd"):  # the foreground classes' mean of each class's mean
        values = [summary[f"{key}_{n}"] for n in task.foreground_names]
        ok = [v for v in values if not np.isnan(v)]
        summary[key] = float(np.mean(ok)) if ok else float("nan")
    return out


def _save_class_cases(test: _Test, result: EvalResult, per_image: dict) -> None:
    """cases.npz of several classes: the union of the foreground classes as each case's mask
    (and its counts), the label maps kept for the galleries' colours."""
    task = result.task
    union = [task.foreground_mask(np.asarray(p)) for p in _predicted(result)]
    union_truth = [task.foreground_mask(np.asarray(t)) for t in test.truths]
    union_counts = np.array([[(u & t).sum(), (u & ~t).sum(), (~u & t).sum(), (~u & ~t).sum()]
                             for u, t in zip(union, union_truth, strict=True)], np.int64)
    cases = SplitCases(list(test.dataset.ids), union_counts, per_image["dice"], per_image["iou"],
                       None, union, test.dataset.images, union_truth, test.settings.threshold,
                       test.groups)
    save_cases(test.out_dir / rundir.CASES, cases, test.settings.num_predictions,
               labels=(result.predictions, test.truths, task.spec()))


def write_class_table(path: Path, key: str, ids, values: dict, task: Task, groups=None,
                      surface_values: dict | None = None) -> None:
    """per_case.csv / per_volume.csv of several classes: the foreground mean, then each class."""
    metric_names = ["dice", "iou", "precision", "recall"]
    columns = [*metric_names, *(f"{m}_{n}" for n in task.names for m in ("dice", "iou")),
               *(f"gt_pixels_{n}" for n in task.names), *(f"pred_pixels_{n}" for n in task.names)]
    surface_values = surface_values or {}
    extra = list(surface_values)
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
    if not ids:
        return
    h, w = masks[0].shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 wants (width, height)

    def small(a, interp):
        out = cv2.resize(a, size, interpolation=interp) if scale < 1 else a
        return out.reshape(size[1], size[0], -1) if a.ndim == 3 else out

    arrays: dict[str, np.ndarray | float] = dict(
        ids=np.array(ids), dice=np.asarray(dice, np.float32), threshold=threshold,
        images=np.stack([small(np.ascontiguousarray(i), cv2.INTER_AREA) for i in images]),
        masks=np.stack([small(np.ascontiguousarray(m, np.uint8), cv2.INTER_NEAREST)
                        for m in masks]),
        probs=np.stack([small(np.round(p * 255).astype(np.uint8), cv2.INTER_AREA) for p in probs]))
    # numpy's stub checks **kwds against allow_pickle (a bool) too: every array is refused
    write_atomic(path, lambda f: np.savez_compressed(f, **arrays))  # type: ignore[arg-type]


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
        raise SegbenchError(f"dataset.pixel_spacing {spacing} and native_size "
                            f"{list(native_size)} must be > 0")
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
