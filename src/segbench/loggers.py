"""Experiment trackers a run reports to, from the `logger` config group.

history.csv and train.log are always written (by the run directory and the log handler); a
tracker is an extra view of the same numbers. `build_loggers()` returns one object that forwards
every call to each configured tracker.
"""

from __future__ import annotations

from omegaconf import DictConfig

from segbench.rundir import TENSORBOARD, RunDir


class TensorBoard:
    """Event files in <run_dir>/tb: per-epoch scalars and the test metrics."""

    def __init__(self, run: RunDir, start_epoch: int):
        self.folder = run / TENSORBOARD
        # purge_step: a resumed run drops events of epochs it is about to repeat.
        self.purge_step = start_epoch
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.folder), purge_step=self.purge_step)
        return self._writer

    def replay(self, history: list[dict]) -> None:
        """A resumed run's epochs so far, from last.pt: they replace whatever an earlier attempt
        wrote for them (TensorBoard drops the events from the purge step on), so an epoch whose
        events a kill prevented is there too."""
        if history:
            self.purge_step = min(self.purge_step, int(history[0]["epoch"]))
            for row in history:
                self.log_epoch(row)

    def log_epoch(self, row: dict) -> None:
        for key, value in row.items():
            if key not in ("epoch", "seconds"):
                self.writer.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
        self.writer.flush()

    def log_test(self, test: dict, epoch: int) -> None:
        for key in ("dice", "iou", "dice_micro", "iou_micro"):
            self.writer.add_scalar(f"test/{key}", test[key], epoch)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class Loggers:
    """Every configured tracker behind one interface."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def log_epoch(self, row: dict) -> None:
        for t in self.trackers:
            t.log_epoch(row)

    def log_test(self, test: dict, epoch: int) -> None:
        for t in self.trackers:
            t.log_test(test, epoch)

    def replay(self, history: list[dict]) -> None:
        """On resume, before any new epoch: every epoch last.pt records, for each tracker to put
        back what a kill kept from it (a tracker's `replay(history)`; one without it shows what
        it was sent)."""
        for t in self.trackers:
            if hasattr(t, "replay"):
                t.replay(history)

    def flush(self) -> None:
        for t in self.trackers:
            t.flush()

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def build_loggers(cfg: DictConfig, run: RunDir, start_epoch: int) -> Loggers:
    trackers = []
    if cfg.logger.get("tensorboard"):
        trackers.append(TensorBoard(run, start_epoch))
    return Loggers(trackers)
