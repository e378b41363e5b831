"""The TensorBoard tracker: event files in <run_dir>/tb."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

from segbench.runs.rundir import (
    TENSORBOARD,
)
from segbench.tracking.base import (
    FIGURES,
    RunInfo,
    flat_params,
    numbers,
    require,
)

log = logging.getLogger(__name__)


class TensorBoard:
    """Event files in <run_dir>/tb: per-epoch scalars, hyperparameters (the flat config with
    the best validation and test scores) and the test figures."""

    name = "tensorboard"

    def __init__(self, opts, info: RunInfo, record: dict):
        require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter  # optional extra (tensorboard)

        self.info = info
        # The events are a view of last.pt's history, rebuilt whole when a run (re)starts: an
        # epoch whose events a kill prevented is there, none is there twice. Earlier attempts'
        # files go first: TensorBoard reads files in name order, which is by the second they were
        # opened, so an old file read after a new one would purge what the new one wrote.
        folder = info.run / TENSORBOARD
        for old in folder.glob("events.out.tfevents.*"):
            old.unlink()
        self.writer = SummaryWriter(str(folder))
        self.record: dict = {}
        for row in info.history:
            self.log_epoch(row)

    def log_epoch(self, row: dict) -> None:
        for key, value in row.items():
            if key not in ("epoch", "seconds"):
                self.writer.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
        self.writer.flush()

    def log_test(self, result: dict, epoch: int) -> None:
        from torch.utils.tensorboard.summary import hparams  # optional extra (tensorboard)

        test = result["test"]
        for key in ("dice", "iou", "dice_micro", "iou_micro"):
            self.writer.add_scalar(f"test/{key}", test[key], epoch)
        scores = {"hparam/best_val_iou": float(result.get("val_best", {}).get("iou", math.nan)),
                  **numbers(test, "hparam/test_", ("dice", "iou"))}
        params = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                  for k, v in flat_params(self.info.config).items()}
        # The hparams summaries go into this run's own event file (add_hparams would start a
        # second run folder), with the scores as scalars the hparams plugin reads.
        writer = self.writer._get_file_writer()
        for summary in hparams(params, scores):
            writer.add_summary(summary)
        for key, value in scores.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()
        self.epoch = epoch

    def log_artifacts(self) -> None:
        for tag, name in FIGURES.items():
            path = self.info.run / name
            if path.is_file():
                self.writer.add_image(f"test/{tag}", _read_png(path), getattr(self, "epoch", 0),
                                      dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self, status: str = "finished") -> None:
        self.writer.close()


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
