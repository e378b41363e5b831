"""Experiment trackers a run reports to, from the `logger` config group.

history.csv, metrics.json and train.log are always written (by the run directory and the log
handler); a tracker is an extra view of the same numbers. `build_loggers()` returns one object
that forwards every call to each configured tracker (`logger=[tensorboard,mlflow]` picks several).

Every tracker gets the same things: the resolved config as flat parameters, one row of metrics
per epoch, the test metrics, the figures and metrics.json as artifacts, and the run directory
as a tag. A sweep is one experiment (MLflow) or group (W&B) named after its sweep directory, each
job a run named after its job directory (its varying overrides). The tracker's run id is kept
in the run directory (trackers.json), so a resumed run continues the same tracker run.

A tracker that fails in the middle of a run is dropped with a warning: the training goes on and
its numbers stay in history.csv and metrics.json.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from segbench import SegbenchError
from segbench.rundir import (
    CONFIG,
    CONFUSION,
    CURVES,
    HISTORY,
    METRICS,
    PER_CASE,
    PREDICTIONS,
    TENSORBOARD,
    RunDir,
)

log = logging.getLogger(__name__)

NAMES = ("tensorboard", "mlflow", "wandb", "csv")
# What each tracker needs installed, and the extra that installs it.
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "segbench[mlflow]"),
            "wandb": ("wandb", "segbench[wandb]")}
ARTIFACTS = (METRICS, CURVES, PREDICTIONS, CONFUSION, HISTORY, CONFIG, PER_CASE)
FIGURES = {"curves": CURVES, "predictions": PREDICTIONS, "confusion_matrix": CONFUSION}
# Numbers of a run's test summary that trackers show (the rest stay in metrics.json).
SUMMARY_KEYS = ("dice", "iou", "dice_micro", "iou_micro", "precision", "recall", "specificity",
                "accuracy", "hd95", "assd", "auroc", "average_precision")


def require(tracker: str):
    """The tracker's library, or a one-line SegbenchError naming what to install."""
    import importlib

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
    """A nested config as `a.b.c -> value`, list items by index (`augmentation.transforms.0.type`)."""
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
            if (keys is None or k in keys) and isinstance(v, (int, float)) and not isinstance(v, bool)}


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
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    path = run.path.resolve()
    root = outputs_root(path)
    experiment = str(path.parent.relative_to(root)) if path.parent.is_relative_to(root) else path.parent.name
    name, overrides = path.name, []
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized():
            hc = HydraConfig.get()
            overrides = [str(o) for o in hc.overrides.task]
            if hc.mode == RunMode.MULTIRUN:
                sweep = Path(hc.sweep.dir).resolve()
                if path.is_relative_to(sweep):
                    name = str(path.relative_to(sweep))
                    experiment = str(sweep.relative_to(root)) if sweep.is_relative_to(root) else sweep.name
    except ImportError:  # pragma: no cover - hydra is a core dependency
        pass
    history = [{k: _number(v) for k, v in row.items()} for row in run.read_history()]
    history = [row for row in history if int(row["epoch"]) < start_epoch]
    return RunInfo(run, experiment.replace(os.sep, "/") or "default", name.replace(os.sep, "/"),
                   config, overrides, start_epoch, history)


def _number(value):
    try:
        return float(value) if "." in str(value) or "e" in str(value).lower() else int(value)
    except (TypeError, ValueError):
        return value


# --------------------------------------------------------------------------------- trackers

class TensorBoard:
    """Event files in <run_dir>/tb: per-epoch scalars, hyperparameters (the flat config with
    the best validation and test scores) and the test figures."""

    name = "tensorboard"

    def __init__(self, opts, info: RunInfo, record: dict):
        require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.info = info
        # The events are a view of last.pt's history, rebuilt whole when a run (re)starts: an
        # epoch whose events a kill prevented is there, none is there twice. Earlier attempts'
        # files go first: TensorBoard reads files in name order, which is by the second they were
        # opened, so an old file read after a new one would purge what the new one wrote.
        folder = info.run / TENSORBOARD
        for old in folder.glob("events.out.tfevents.*"):
            old.unlink()
        self.writer = SummaryWriter(str(folder))
        self.record = {}
        for row in info.history:
            self.log_epoch(row)

    def log_epoch(self, row: dict) -> None:
        for key, value in row.items():
            if key not in ("epoch", "seconds"):
                self.writer.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
        self.writer.flush()

    def log_test(self, result: dict, epoch: int) -> None:
        from torch.utils.tensorboard.summary import hparams

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


def _read_png(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class MLflow:
    """An MLflow run: params, per-epoch metrics (step = epoch), test metrics, artifacts, tags.

    tracking_uri null: a SQLite store in the outputs folder, <outputs>/mlflow.db, with artifacts
    in <outputs>/mlartifacts: `mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`."""

    name = "mlflow"
    STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}

    def __init__(self, opts, info: RunInfo, record: dict):
        require("mlflow")
        from mlflow.tracking import MlflowClient

        self.info = info
        local = not opts.get("tracking_uri")
        root = outputs_root(info.run.path)
        uri = opts.get("tracking_uri") or record.get("tracking_uri") or \
            f"sqlite:///{(root / 'mlflow.db').as_posix()}"
        if local:
            root.mkdir(parents=True, exist_ok=True)
        elif uri.startswith(("http://", "https://")):
            # A team server that does not answer fails in seconds, not after minutes of retries.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.client = MlflowClient(tracking_uri=uri)
        run_id = record.get("run_id") if record.get("tracking_uri", uri) == uri else None
        try:
            if run_id and self._reopen(run_id):
                self.run_id = run_id
                done = int(record.get("last_epoch", 0))
            else:
                experiment = opts.get("experiment") or info.experiment
                exp_id = self._experiment(experiment, root / "mlartifacts" if local and
                                          uri == f"sqlite:///{(root / 'mlflow.db').as_posix()}" else None)
                run = self.client.create_run(exp_id, run_name=info.name, tags=info.tags)
                self.run_id = run.info.run_id
                done = 0
                self._log_params()
        except SegbenchError:
            raise
        except Exception as err:
            raise SegbenchError(f"logger=mlflow: cannot use the MLflow store {uri} ({_first_line(err)}); "
                                "check logger.mlflow.tracking_uri, or leave it null for the local store "
                                "in the outputs folder") from None
        self.record = {"run_id": self.run_id, "tracking_uri": uri, "last_epoch": done}
        for row in info.history:  # epochs a first attempt finished but never reached the tracker
            if int(row["epoch"]) > done:
                self.log_epoch(row)
        log.info("mlflow: run %s in %s (%s)", self.run_id, uri, "continued" if run_id == self.run_id
                 else "new")

    def _reopen(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except Exception:  # deleted, or another store: start a new run
            log.warning("mlflow: run %s recorded in trackers.json is gone; starting a new run", run_id)
            return False
        self.client.update_run(run_id, status="RUNNING")
        self._log_params(existing=set(self.client.get_run(run_id).data.params))
        return True

    def _experiment(self, name: str, artifacts: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(
                name, artifact_location=artifacts.resolve().as_uri() if artifacts else None)
        except Exception:  # another job of the sweep created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _log_params(self, existing: set[str] = frozenset()) -> None:
        from mlflow.entities import Param

        # A resumed run may have changed a resumable setting (trainer.max_epochs): MLflow keeps
        # the first value of a parameter, so only new keys are added.
        params = [Param(k[:250], _param_value(v)) for k, v in flat_params(self.info.config).items()
                  if k[:250] not in existing]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_epoch(self, row: dict) -> None:
        self._metrics(numbers({k: v for k, v in row.items() if k != "epoch"}), int(row["epoch"]))
        self.record["last_epoch"] = int(row["epoch"])

    def log_test(self, result: dict, epoch: int) -> None:
        self._metrics({**numbers(result["test"], "test_", SUMMARY_KEYS),
                       **numbers(result.get("val_best", {}), "best_val_", ("dice", "iou", "loss")),
                       "best_epoch": float(result.get("best_epoch", epoch))}, epoch)

    def log_artifacts(self) -> None:
        for name in ARTIFACTS:
            path = self.info.run / name
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def flush(self) -> None:
        pass

    def close(self, status: str = "finished") -> None:
        self.client.set_terminated(self.run_id, self.STATUS.get(status, "FAILED"))


def _param_value(value) -> str:
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= 500 else text[:497] + "..."  # old servers allow 500 characters


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def wandb_api_key() -> str | None:
    """W&B's API key from WANDB_API_KEY or the netrc file `wandb login` writes (NETRC honoured)."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return auth[2] if auth else None


class WandB:
    """A W&B run in <run_dir>/wandb: online when an API key is set, offline otherwise (upload
    later with `wandb sync <run_dir>/wandb/offline-run-*`). An online start that fails (no
    network) falls back to offline instead of failing the run."""

    name = "wandb"

    def __init__(self, opts, info: RunInfo, record: dict):
        wandb = require("wandb")
        self.info = info
        mode = opts.get("mode", "auto")
        if mode not in ("auto", "online", "offline"):
            raise SegbenchError(f"logger.wandb.mode={mode}; use auto, online or offline")
        if mode == "auto":
            mode = "online" if wandb_api_key() else "offline"
        if mode == "offline":  # W&B's own usage telemetry would still go out: offline is offline
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        run_id = record.get("run_id") or uuid.uuid4().hex[:12]
        kwargs = dict(project=opts.get("project") or "segbench", entity=opts.get("entity"),
                      group=opts.get("group") or info.experiment, name=info.name, id=run_id,
                      resume="allow", dir=str(info.run.path), config=info.config,
                      notes=f"segbench run directory: {info.tags['segbench.run_dir']}",
                      tags=list(opts.get("tags") or []), job_type="train")
        try:
            self.run = wandb.init(**kwargs, mode=mode, settings=self._settings(wandb, opts))
        except Exception as err:
            if mode != "online":
                raise SegbenchError(f"logger=wandb: cannot start an offline run ({_first_line(err)})") from None
            log.warning("wandb: cannot reach W&B (%s); logging offline to %s/wandb, upload later "
                        "with `wandb sync`", _first_line(err), info.run.path)
            mode = "offline"
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
            self.run = wandb.init(**kwargs, mode=mode, settings=self._settings(wandb, opts))
        self.run.config.update({"segbench.run_dir": info.tags["segbench.run_dir"]}, allow_val_change=True)
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")
        self.record = {"run_id": run_id, "mode": mode, "project": kwargs["project"],
                       "last_epoch": int(record.get("last_epoch", 0))}
        for row in info.history:
            if int(row["epoch"]) > self.record["last_epoch"]:
                self.log_epoch(row)
        log.info("wandb: run %s (%s)", run_id, mode)

    @staticmethod
    def _settings(wandb, opts):
        # No console capture (segbench's log is the log), no system-metrics sampling thread,
        # a bounded wait for the server.
        return wandb.Settings(console="off", silent=True, x_disable_stats=True,
                              init_timeout=float(opts.get("init_timeout", 30)))

    def log_epoch(self, row: dict) -> None:
        self.run.log({"epoch": int(row["epoch"]), **numbers({k: v for k, v in row.items() if k != "epoch"})})
        self.record["last_epoch"] = int(row["epoch"])

    def log_test(self, result: dict, epoch: int) -> None:
        self.run.summary.update({**numbers(result["test"], "test_", SUMMARY_KEYS),
                                 **numbers(result.get("val_best", {}), "best_val_", ("dice", "iou", "loss")),
                                 "best_epoch": result.get("best_epoch", epoch)})
        self.epoch = epoch

    def log_artifacts(self) -> None:
        import wandb

        epoch = getattr(self, "epoch", 0)
        images = {tag: wandb.Image(str(self.info.run / name)) for tag, name in FIGURES.items()
                  if (self.info.run / name).is_file()}
        if images:
            self.run.log({"epoch": epoch, **images})
        artifact = wandb.Artifact(f"results-{self.run.id}", type="results",
                                  metadata={"run_dir": self.info.tags["segbench.run_dir"]})
        for name in ARTIFACTS:
            if (self.info.run / name).is_file():
                artifact.add_file(str(self.info.run / name), name=name)
        self.run.log_artifact(artifact)

    def flush(self) -> None:
        pass

    def close(self, status: str = "finished") -> None:
        self.run.finish(exit_code={"finished": 0, "interrupted": 130}.get(status, 1))


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
        self.record = {}

    def log_epoch(self, row: dict) -> None:
        pass

    def log_test(self, result: dict, epoch: int) -> None:
        import io

        test = result["test"]
        row = {"finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), "experiment": self.info.experiment,
               "name": self.info.name, "run_dir": self.info.tags["segbench.run_dir"],
               "overrides": " ".join(self.info.overrides), "best_epoch": result.get("best_epoch", epoch),
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


TRACKERS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB, "csv": CsvIndex}


class Loggers:
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
                            _first_line(err))
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


def check_loggers(node) -> list[str]:
    """The selected trackers, each importable; a one-line SegbenchError otherwise."""
    names = selected(node)
    for name in names:
        if name in PACKAGES:
            require(name)
    return names


def build_loggers(cfg, run: RunDir, start_epoch: int) -> Loggers:
    """The configured trackers of a run that starts (or resumes) at `start_epoch`."""
    names = check_loggers(cfg.get("logger"))  # a missing extra fails before any tracker starts
    if not names:
        return Loggers([], run)
    info = run_info(cfg, run, start_epoch)
    records = run.read_trackers()
    trackers = []
    try:
        for name in names:
            opts = cfg.logger.get(name)
            opts = opts if hasattr(opts, "get") else {}
            trackers.append(TRACKERS[name](opts, info, records.get(name, {})))
    except BaseException:
        Loggers(trackers, run).close("failed")  # the trackers that started end their runs
        raise
    return Loggers(trackers, run)
