"""The Weights & Biases tracker."""

from __future__ import annotations

import logging
import netrc
import os
import uuid
from urllib.parse import urlparse

from segbench import SegbenchError
from segbench.tracking.base import (
    ARTIFACTS,
    FIGURES,
    SUMMARY_KEYS,
    RunInfo,
    first_line,
    numbers,
    require,
)

log = logging.getLogger(__name__)


def wandb_api_key() -> str | None:
    """W&B's API key from WANDB_API_KEY or the netrc file `wandb login` writes (NETRC honoured)."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
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
                raise SegbenchError("logger=wandb: cannot start an offline run "
                                    f"({first_line(err)})") from None
            log.warning("wandb: cannot reach W&B (%s); logging offline to %s/wandb, upload later "
                        "with `wandb sync`", first_line(err), info.run.path)
            mode = "offline"
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
            self.run = wandb.init(**kwargs, mode=mode, settings=self._settings(wandb, opts))
        self.run.config.update({"segbench.run_dir": info.tags["segbench.run_dir"]},
                               allow_val_change=True)
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
        values = numbers({k: v for k, v in row.items() if k != "epoch"})
        self.run.log({"epoch": int(row["epoch"]), **values})
        self.record["last_epoch"] = int(row["epoch"])

    def log_test(self, result: dict, epoch: int) -> None:
        self.run.summary.update({
            **numbers(result["test"], "test_", SUMMARY_KEYS),
            **numbers(result.get("val_best", {}), "best_val_", ("dice", "iou", "loss")),
            "best_epoch": result.get("best_epoch", epoch)})
        self.epoch = epoch

    def log_artifacts(self) -> None:
        import wandb  # optional extra

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
