"""Experiment trackers a run reports to, from the `logger` config group.

history.csv, metrics.json and train.log are always written (by the run directory and the log
handler); a tracker is an extra view of the same numbers. `build_trackers()` returns one object
that forwards every call to each configured tracker (`logger=[tensorboard,mlflow]` picks several).

Every tracker gets the same things: the resolved config as flat parameters, one row of metrics
per epoch, the test metrics, the figures and metrics.json as artifacts, and the run directory
as a tag. A sweep is one experiment (MLflow) or group (W&B) named after its sweep directory, each
job a run named after its job directory (its varying overrides). The tracker's run id is kept
in the run directory (trackers.json), so a resumed run continues the same tracker run.

A tracker that fails in the middle of a run is dropped with a warning: the training goes on and
its numbers stay in history.csv and metrics.json.

One module per tracker (`tensorboard.py`, `mlflow.py`, `wandb.py`, `csv_index.py`); the
interface they share is `base.Tracker`.
"""

from __future__ import annotations

import logging

from segbench import SegbenchError
from segbench.runs.rundir import RunDir
from segbench.tracking.base import (
    NAMES,
    PACKAGES,
    TrackerFactory,
    first_line,
    require,
    run_info,
)
from segbench.tracking.csv_index import CsvIndex
from segbench.tracking.mlflow import MLflow
from segbench.tracking.tensorboard import TensorBoard
from segbench.tracking.wandb import WandB

log = logging.getLogger(__name__)

TRACKERS: dict[str, TrackerFactory] = {"tensorboard": TensorBoard, "mlflow": MLflow,
                                       "wandb": WandB, "csv": CsvIndex}


class Trackers:
    """Every configured tracker behind one interface. A tracker that raises is dropped with a
    warning (the run goes on); the run id and last logged epoch of each are kept in
    <run_dir>/trackers.json so that a resumed run continues the same tracker run."""

    def __init__(self, trackers: list, run: RunDir | None = None):
        self.trackers = trackers
        self.run = run
        self._save()

    def _call(self, method: str, *args, **kwargs) -> None:
        for t in list(self.trackers):
            try:
                getattr(t, method)(*args, **kwargs)
            except Exception as err:
                log.warning("%s: %s failed (%s); that tracker is off for the rest of this run, "
                            "history.csv and metrics.json have every number", t.name, method,
                            first_line(err))
                self.trackers.remove(t)

    def _save(self) -> None:
        records = {t.name: t.record for t in self.trackers if getattr(t, "record", None)}
        if self.run is not None and records:
            self.run.write_trackers({**self.run.read_trackers(), **records})

    def log_epoch(self, row: dict) -> None:
        self._call("log_epoch", row)
        self._save()

    def log_test(self, result: dict, epoch: int) -> None:
        """The test figures (the metrics.json record, before it is written: a run on record as
        finished has its numbers in every tracker)."""
        self._call("log_test", result, epoch)

    def log_artifacts(self) -> None:
        """The run's files (figures, metrics.json, ...), once metrics.json is written."""
        self._call("log_artifacts")

    def flush(self) -> None:
        self._call("flush")

    def close(self, status: str = "finished") -> None:
        self._call("close", status)
        self._save()


def selected(node) -> list[str]:
    """The trackers a `logger` node turns on: its keys that hold settings (a mapping) or true
    (the old `tensorboard: true` form)."""
    if node is None:
        return []
    names = [k for k, v in node.items() if v is not None and v is not False]
    unknown = [k for k in names if k not in TRACKERS]
    if unknown:
        raise SegbenchError(f"logger.{unknown[0]}: not a tracker; choose from {', '.join(NAMES)} "
                            "(several at once: logger=[tensorboard,mlflow])")
    return names


def check_trackers(node) -> list[str]:
    """The selected trackers, each importable; a one-line SegbenchError otherwise."""
    names = selected(node)
    for name in names:
        if name in PACKAGES:
            require(name)
    return names


def build_trackers(cfg, run: RunDir, start_epoch: int) -> Trackers:
    """The configured trackers of a run that starts (or resumes) at `start_epoch`."""
    names = check_trackers(cfg.get("logger"))  # a missing extra fails before any tracker starts
    if not names:
        return Trackers([], run)
    info = run_info(cfg, run, start_epoch)
    records = run.read_trackers()
    trackers = []
    try:
        for name in names:
            opts = cfg.logger.get(name)
            opts = opts if hasattr(opts, "get") else {}
            trackers.append(TRACKERS[name](opts, info, records.get(name, {})))
    except BaseException:
        Trackers(trackers, run).close("failed")  # the trackers that started end their runs
        raise
    return Trackers(trackers, run)
