"""Evaluation shared by validation, the end-of-training test and `segbench eval`.

Per-image confusion counts are accumulated on the device and copied to the host once per split.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from segbench import SegbenchError, metrics
from segbench.engine.device import autocast, autocast_dtype, resolve_device

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    counts: torch.Tensor                # (N, 4) TP, FP, FN, TN per image, on the CPU
    loss: float | None = None
    kept: dict[int, np.ndarray] = field(default_factory=dict)  # index -> probability map

    def summary(self) -> dict[str, float]:
        out = metrics.summarize(self.counts)
        if self.loss is not None:
            out["loss"] = self.loss
        return out


def predict_probs(model, images: torch.Tensor, amp_dtype=None, tta: bool = False) -> torch.Tensor:
    """Foreground probabilities; with tta the mean over identity, h-flip and v-flip."""
    device = images.device
    with autocast(device, amp_dtype):
        probs = torch.sigmoid(model(images).float())
        if tta:
            for dim in (3, 2):
                probs += torch.sigmoid(model(images.flip(dim)).float()).flip(dim)
            probs /= 3
    return probs


@torch.no_grad()
def evaluate(model, loader: DataLoader, device: torch.device, *, threshold: float = 0.5,
             loss_fn=None, amp_dtype=None, tta: bool = False, keep: tuple[int, ...] = (),
             channels_last: bool = False) -> EvalResult:
    model.eval()
    counts, loss_sum, seen = [], torch.zeros((), device=device), 0
    kept: dict[int, np.ndarray] = {}
    keep_set = set(keep)
    for images, masks, index in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        masks = masks.to(device, non_blocking=True)
        if loss_fn is not None:
            with autocast(device, amp_dtype):
                logits = model(images)
            loss_sum += loss_fn(logits.float(), masks.float()) * len(images)
            probs = torch.sigmoid(logits.float())
            if tta:
                probs = predict_probs(model, images, amp_dtype, tta=True)
        else:
            probs = predict_probs(model, images, amp_dtype, tta)
        seen += len(images)
        counts.append(metrics.confusion(probs, masks, threshold))
        if keep_set:
            for row, i in enumerate(index.tolist()):
                if i in keep_set:
                    kept[i] = probs[row, 0].float().cpu().numpy()
    if not counts:
        raise SegbenchError("evaluation got an empty split")
    return EvalResult(
        counts=torch.cat(counts).cpu(),
        loss=float(loss_sum.item() / seen) if loss_fn is not None else None,
        kept=kept,
    )


def eval_loader(dataset, batch_size: int, device: torch.device, num_workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def write_per_case(path: Path, ids: list[str], counts: torch.Tensor, groups: list | None = None) -> None:
    values = metrics.per_image(counts)
    c = counts.numpy()
    names = ["dice", "iou", "precision", "recall", "specificity", "accuracy"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *(["group"] if groups else []), *names, "gt_pixels", "pred_pixels",
                    "tp", "fp", "fn", "tn"])
        for i, image_id in enumerate(ids):
            w.writerow([image_id, *([groups[i]] if groups else []),
                        *(f"{values[n][i]:.6f}" for n in names),
                        int(values["gt_pixels"][i]), int(values["pred_pixels"][i]), *c[i].tolist()])


def test_split(model, dataset, device, *, out_dir: Path, threshold: float, tta: bool,
               batch_size: int, amp_dtype=None, num_predictions: int = 6, groups=None,
               channels_last: bool = False, num_workers: int = 0) -> dict:
    """Evaluate a split once and write per_case.csv and predictions.png; returns the metrics."""
    from segbench.viz import plot_predictions

    keep = tuple(np.linspace(0, len(dataset) - 1, min(num_predictions, len(dataset))).round().astype(int).tolist())
    result = evaluate(model, eval_loader(dataset, batch_size, device, num_workers), device,
                      threshold=threshold, amp_dtype=amp_dtype, tta=tta, keep=keep,
                      channels_last=channels_last)
    write_per_case(out_dir / "per_case.csv", dataset.ids, result.counts, groups)
    summary = result.summary()
    dice = metrics.per_image(result.counts)["dice"]
    plot_predictions(
        [np.asarray(dataset.images[i]) for i in keep],
        [np.asarray(dataset.masks[i]) for i in keep],
        [result.kept[i] for i in keep],
        [f"{dataset.ids[i]}\nDice {dice[i]:.3f}" for i in keep],
        out_dir / "predictions.png", threshold)
    return summary


def metric_line(m: dict, prefix: str = "") -> str:
    keys = ("dice", "iou", "dice_micro", "iou_micro", "precision", "recall")
    return "  ".join(f"{prefix}{k} {m[k]:.4f}" for k in keys if k in m)


def eval_task(cfg: DictConfig) -> dict:
    """`segbench eval run_dir=<dir>`: the run's checkpoint on its recorded split, once more."""
    from hydra.core.hydra_config import HydraConfig

    from segbench.data import build_datasets, select_splits
    from segbench.data.splits import read_split_file
    from segbench.engine.checkpoint import load_checkpoint
    from segbench.models import build_model

    run_dir = Path(cfg.run_dir).expanduser()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    for needed in ("config.yaml", "split.json"):
        if not (run_dir / needed).is_file():
            raise SegbenchError(f"{run_dir} is not a segbench run directory: {needed} is missing")
    if cfg.checkpoint not in ("best", "last"):
        raise SegbenchError(f"checkpoint={cfg.checkpoint!r}; use best or last")
    if cfg.split not in ("test", "val"):
        raise SegbenchError(f"split={cfg.split!r}; use test or val")
    train_cfg = OmegaConf.load(run_dir / "config.yaml")
    if cfg.data_root:
        train_cfg.dataset.root = str(Path(cfg.data_root).expanduser())
    threshold = float(cfg.eval.threshold if cfg.eval.threshold is not None else train_cfg.eval.threshold)
    tta = bool(cfg.eval.tta if cfg.eval.tta is not None else train_cfg.eval.tta)
    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype(device, train_cfg.trainer.precision)

    state = load_checkpoint(run_dir / "checkpoints" / f"{cfg.checkpoint}.pt")
    splits = select_splits(train_cfg, read_split_file(run_dir / "split.json"), [cfg.split])
    data = build_datasets(train_cfg, splits, Path(train_cfg.paths.cache), augment=False)
    model = build_model(train_cfg, pretrained=False)  # the checkpoint holds every weight
    model.load_state_dict(state["model"])
    model.to(device)
    groups = [s.group for s in splits[cfg.split]]
    batch = int(cfg.batch_size or train_cfg.trainer.eval_batch_size or 2 * train_cfg.trainer.batch_size)
    summary = test_split(model, data[cfg.split], device, out_dir=out_dir, threshold=threshold,
                         tta=tta, batch_size=batch, amp_dtype=amp_dtype,
                         num_predictions=int(cfg.eval.num_predictions),
                         groups=groups if any(groups) else None)
    result = {"split": cfg.split, "checkpoint": cfg.checkpoint, "epoch": state.get("epoch"),
              "threshold": threshold, "tta": tta, "empty_rule": metrics.EMPTY_RULE,
              cfg.split: summary}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    log.info("%s %s (epoch %s): %s", cfg.split, cfg.checkpoint, state.get("epoch"), metric_line(summary))
    _compare_with_training(run_dir, cfg, summary, threshold, tta)
    log.info("wrote %s", out_dir)
    return result


def _compare_with_training(run_dir: Path, cfg, summary: dict, threshold: float, tta: bool) -> None:
    trained = run_dir / "metrics.json"
    if cfg.split != "test" or cfg.checkpoint != "best" or not trained.is_file():
        return
    recorded = json.loads(trained.read_text())
    if recorded.get("threshold") != threshold or recorded.get("tta") != tta:
        return
    diffs = {k: (recorded["test"][k], summary[k]) for k in ("dice", "iou", "dice_micro", "iou_micro")
             if abs(recorded["test"][k] - summary[k]) > 1e-9}
    if diffs:
        log.warning("differs from the test metrics recorded at training time: %s", diffs)
    else:
        log.info("matches the test metrics recorded at the end of training")
