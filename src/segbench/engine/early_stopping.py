"""What the loop watches on the validation split: the monitor, and early stopping on it.

One `Monitor` (a history column and a mode, `trainer.monitor` / `trainer.monitor_mode`) is read by
best-checkpoint selection, early stopping and the plateau schedule alike, so that a study selects
and stops on the quantity it reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from segbench import SegbenchError

# The validation metrics a run can monitor (history.csv columns) and the direction of "better".
MONITORS = {
    "val_iou": "max", "val_dice": "max", "val_iou_micro": "max", "val_dice_micro": "max",
    "val_volume_dice": "max", "val_loss": "min",
}
VOLUMETRIC = ("val_volume_dice",)


@dataclass(frozen=True)
class Monitor:
    metric: str
    mode: str  # max | min
    # Selection on a small, noisy validation split (trainer.monitor_smoothing, best_from_epoch):
    # the value read is an exponential moving average, smoothing * previous + (1 - smoothing) *
    # this epoch's (nnU-Net keeps one of its validation Dice); epochs before `start` neither
    # pick best.pt nor count for early stopping.
    smoothing: float = 0.0
    start: int = 1

    def smoothed(self, value: float, previous: float | None) -> float:
        if self.smoothing == 0 or previous is None or math.isnan(previous):
            return value
        if math.isnan(value):
            return previous
        return self.smoothing * previous + (1 - self.smoothing) * value

    def better(self, value: float, than: float | None, min_delta: float = 0.0) -> bool:
        return improves(value, than, self.mode, min_delta)


def improves(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `best` by more than `min_delta` in direction `mode` (None: anything
    that is a number does; NaN never does)."""
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def resolve_monitor(metric: str, mode: str, dataset_default: str, volumetric: bool,
                    dataset_name: str, task: str = "binary", smoothing: float = 0.0,
                    start: int = 1) -> Monitor:
    """The run's monitor: `trainer.monitor` (auto: the dataset's `monitor`; auto there: per-volume
    Dice for volumetric data, else per-image IoU; several classes: the mean foreground Dice),
    checked against what the data can give."""
    if metric == "auto":
        metric = dataset_default or "auto"
    if metric == "auto":
        metric = ("val_volume_dice" if volumetric else
                  "val_iou" if task == "binary" else "val_dice")
    if metric not in MONITORS:
        raise SegbenchError(f"trainer.monitor={metric}: not a validation metric; use auto or one "
                            f"of {', '.join(MONITORS)}")
    if metric in VOLUMETRIC and not volumetric:
        raise SegbenchError(f"trainer.monitor={metric} needs volumetric data (images grouped by "
                            f"patient/volume) and dataset {dataset_name} has none; use val_iou, "
                            "val_dice or their _micro forms (for dataset=folder, set "
                            "dataset.group_pattern to group images into volumes)")
    if mode == "auto":
        mode = MONITORS[metric]
    if mode not in ("max", "min"):
        raise SegbenchError(f"trainer.monitor_mode={mode}; use auto, max or min")
    return Monitor(metric, mode, float(smoothing), int(start))


class EarlyStopping:
    """Stop after `patience` epochs without an improvement of the monitor by more than min_delta."""

    def __init__(self, patience: int, min_delta: float = 0.0, mode: str = "max"):
        if patience < 1:
            raise ValueError("early stopping patience must be >= 1")
        self.patience, self.min_delta, self.mode = patience, min_delta, mode
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is a new best (by more than min_delta)."""
        if improves(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
