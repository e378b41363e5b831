"""What the trackers share: the interface they implement (`Tracker`), their names and the
libraries they need, the run's identity (`RunInfo`) and the flat parameters and numbers they log."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from segbench import SegbenchError
from segbench.runs.rundir import (
    CONFIG,
    CONFUSION,
    CURVES,
    HISTORY,
    METRICS,
    PER_CASE,
    PREDICTIONS,
    RunDir,
)

log = logging.getLogger(__name__)

NAMES = ("tensorboard", "mlflow", "wandb", "csv")
# What each tracker needs installed, and the extra that installs it.
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"),
            "mlflow": ("mlflow", "segbench[mlflow]"), "wandb": ("wandb", "segbench[wandb]")}
ARTIFACTS = (METRICS, CURVES, PREDICTIONS, CONFUSION, HISTORY, CONFIG, PER_CASE)
FIGURES = {"curves": CURVES, "predictions": PREDICTIONS, "confusion_matrix": CONFUSION}
# Numbers of a run's test summary that trackers show (the rest stay in metrics.json).
SUMMARY_KEYS = ("dice", "iou", "dice_micro", "iou_micro", "precision", "recall", "specificity",
                "accuracy", "hd95", "assd", "auroc", "average_precision")


def require(tracker: str):
    """The tracker's library, or a one-line SegbenchError naming what to install."""
    module, extra = PACKAGES[tracker]
    # MLflow would otherwise add a handler of its own; its lines go through segbench's log.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SegbenchError(f"logger={tracker} needs {module}, which is not installed: "
                            f"pip install \"{extra}\" (or choose another logger, e.g. logger=none)"
                            ) from None


def flat_params(config, prefix: str = "") -> dict[str, object]:
    """A nested config as `a.b.c -> value`, list items by index
    (`augmentation.transforms.0.type`)."""
    out: dict[str, object] = {}
    items = config.items() if isinstance(config, dict) else enumerate(config)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list, tuple)) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = value
    return out


def numbers(d: dict, prefix: str = "", keys=None) -> dict[str, float]:
    """The finite-or-NaN numeric entries of `d` (bools and text left out), keys prefixed."""
    return {f"{prefix}{k}": float(v) for k, v in d.items()
            if (keys is None or k in keys) and isinstance(v, (int, float))
            and not isinstance(v, bool)}


def outputs_root(run_path: Path) -> Path:
    """The `outputs` folder a run lives in (its nearest ancestor of that name), else ./outputs."""
    path = run_path.resolve()
    for parent in path.parents:
        if parent.name == "outputs":
            return parent
    return Path.cwd().resolve() / "outputs"


@dataclass
class RunInfo:
    """Who a run is to the trackers."""

    run: RunDir
    experiment: str                 # the sweep directory (a sweep), the run's folder (one run)
    name: str                       # the job directory below the sweep, the run's folder name
    config: dict                    # the resolved config
    overrides: list[str] = field(default_factory=list)
    start_epoch: int = 1            # the first epoch this attempt trains
    history: list[dict] = field(default_factory=list)  # epochs finished before (a resumed run)

    @property
    def tags(self) -> dict[str, str]:
        return {"segbench.run_dir": str(self.run.path.resolve()),
                "segbench.experiment": self.experiment,
                "segbench.overrides": " ".join(self.overrides)[:5000]}


def run_info(cfg, run: RunDir, start_epoch: int) -> RunInfo:
    """Names from Hydra's runtime when a command runs (a sweep: its directory and the job's
    directory below it), from the run directory otherwise."""
    # A run's config is a mapping.
    config = (cast(dict, OmegaConf.to_container(cfg, resolve=True)) if not isinstance(cfg, dict)
              else cfg)
    path = run.path.resolve()
    root = outputs_root(path)
    experiment = (str(path.parent.relative_to(root)) if path.parent.is_relative_to(root)
                  else path.parent.name)
    name, overrides = path.name, []
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        overrides = [str(o) for o in hc.overrides.task]
        if hc.mode == RunMode.MULTIRUN:
            sweep = Path(hc.sweep.dir).resolve()
            if path.is_relative_to(sweep):
                name = str(path.relative_to(sweep))
                experiment = (str(sweep.relative_to(root)) if sweep.is_relative_to(root)
                              else sweep.name)
    history = [{k: _number(v) for k, v in row.items()} for row in run.read_history()]
    history = [row for row in history if int(row["epoch"]) < start_epoch]
    return RunInfo(run, experiment.replace(os.sep, "/") or "default", name.replace(os.sep, "/"),
                   config, overrides, start_epoch, history)


def _number(value):
    try:
        return float(value) if "." in str(value) or "e" in str(value).lower() else int(value)
    except (TypeError, ValueError):
        return value


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


class Tracker(Protocol):
    """What every tracker implements; `Trackers` (in this package's __init__) calls each in turn.

    A tracker is built as `Tracker(opts, info, record)`: `opts` its `logger.<name>` settings,
    `info` the run's `RunInfo`, `record` what it kept in trackers.json on an earlier attempt (its
    run id), so that a resumed run continues the same tracker run. `record` (an attribute) is
    what to keep there now. The methods are called in this order: `log_epoch` once per epoch
    (epochs before `info.start_epoch` are replayed from `info.history` by the tracker itself,
    where it needs them), `log_test` once after the test, `log_artifacts` once metrics.json is
    written, `flush` when a run stops early, `close` with the run's final status."""

    name: str
    record: dict

    def log_epoch(self, row: dict) -> None: ...

    def log_test(self, result: dict, epoch: int) -> None: ...

    def log_artifacts(self) -> None: ...

    def flush(self) -> None: ...

    def close(self, status: str = "finished") -> None: ...


# How a tracker is built: Tracker(opts, info, record) (see Tracker).
TrackerFactory = Callable[[Any, RunInfo, dict], Tracker]
