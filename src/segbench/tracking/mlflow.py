"""The MLflow tracker."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Container
from pathlib import Path

from segbench import SegbenchError
from segbench.tracking.base import (
    ARTIFACTS,
    SUMMARY_KEYS,
    RunInfo,
    first_line,
    flat_params,
    numbers,
    outputs_root,
    require,
)

log = logging.getLogger(__name__)


class MLflow:
    """An MLflow run: params, per-epoch metrics (step = epoch), test metrics, artifacts, tags.

    tracking_uri null: a SQLite store in the outputs folder, <outputs>/mlflow.db, with artifacts
    in <outputs>/mlartifacts: `mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`."""

    name = "mlflow"
    STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}

    def __init__(self, opts, info: RunInfo, record: dict):
        require("mlflow")
        from mlflow.tracking import MlflowClient  # optional extra

        self.info = info
        local = not opts.get("tracking_uri")
        root = outputs_root(info.run.path)
        local_uri = f"sqlite:///{(root / 'mlflow.db').as_posix()}"
        uri = opts.get("tracking_uri") or record.get("tracking_uri") or local_uri
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
                exp_id = self._experiment(
                    experiment, root / "mlartifacts" if local and uri == local_uri else None)
                run = self.client.create_run(exp_id, run_name=info.name, tags=info.tags)
                self.run_id = run.info.run_id
                done = 0
                self._log_params()
        except SegbenchError:
            raise
        except Exception as err:
            raise SegbenchError(f"logger=mlflow: cannot use the MLflow store {uri} "
                                f"({first_line(err)}); check logger.mlflow.tracking_uri, or leave "
                                "it null for the local store in the outputs folder") from None
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
            log.warning("mlflow: run %s recorded in trackers.json is gone; starting a new run",
                        run_id)
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

    def _log_params(self, existing: Container[str] = frozenset()) -> None:
        from mlflow.entities import Param  # optional extra

        # A resumed run may have changed a resumable setting (trainer.max_epochs): MLflow keeps
        # the first value of a parameter, so only new keys are added.
        params = [Param(k[:250], _param_value(v)) for k, v in flat_params(self.info.config).items()
                  if k[:250] not in existing]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric  # optional extra

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id,
                              metrics=[Metric(k, v, now, step) for k, v in values.items()])

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
    text = ("null" if value is None else str(value).lower() if isinstance(value, bool)
            else str(value))
    return text if len(text) <= 500 else text[:497] + "..."  # old servers allow 500 characters
