"""The csv tracker: one row per finished run in <outputs>/runs.csv."""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from pathlib import Path

from segbench.tracking.base import (
    RunInfo,
    outputs_root,
)

log = logging.getLogger(__name__)


class CsvIndex:
    """One row per finished run in <outputs>/runs.csv (no dependency, opens in any spreadsheet):
    when, experiment, run name and directory, overrides, best validation and test scores. The
    per-epoch numbers are the run's own history.csv."""

    name = "csv"
    FIELDS = ("finished_at", "experiment", "name", "run_dir", "overrides", "best_epoch",
              "epochs_run", "best_val_iou", "test_dice", "test_iou", "test_dice_micro",
              "test_iou_micro", "test_precision", "test_recall", "test_hd95", "train_seconds")

    def __init__(self, opts, info: RunInfo, record: dict):
        self.info = info
        self.path = Path(opts.get("path") or outputs_root(info.run.path) / "runs.csv")
        self.record: dict = {}

    def log_epoch(self, row: dict) -> None:
        pass

    def log_test(self, result: dict, epoch: int) -> None:
        test = result["test"]
        row = {"finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
               "experiment": self.info.experiment,
               "name": self.info.name, "run_dir": self.info.tags["segbench.run_dir"],
               "overrides": " ".join(self.info.overrides),
               "best_epoch": result.get("best_epoch", epoch),
               "epochs_run": result.get("epochs_run"),
               "best_val_iou": result.get("val_best", {}).get("iou"),
               **{f"test_{k}": test.get(k) for k in ("dice", "iou", "dice_micro", "iou_micro",
                                                     "precision", "recall", "hd95")},
               "train_seconds": result.get("train_seconds")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.FIELDS, lineterminator="\n")
        try:  # the first run writes the header; O_EXCL decides who is first
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            writer.writeheader()
        except FileExistsError:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        writer.writerow(row)
        try:  # one write of one line: parallel jobs of a sweep append whole rows
            os.write(fd, text.getvalue().encode())
        finally:
            os.close(fd)

    def log_artifacts(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self, status: str = "finished") -> None:
        pass
