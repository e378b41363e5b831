"""Progress of a run and of a sweep, on a terminal and off it.

On a terminal, one bar covers the whole run (training steps, validation and the final test) and
shows the running loss, images/s and the ETA of the run. Without a terminal (nohup, SLURM, CI)
a progress line is logged every `trainer.progress_interval_s` seconds (and, if set, every
`trainer.progress_every_steps` steps): epoch, step/steps, images/s, running loss, ETA.

In a sweep, `SweepProgress` (a Hydra callback, configs/train.yaml) logs "job k of n" with the
sweep's ETA when each job starts, and the run's own progress lines carry the same prefix.
"""

from __future__ import annotations

import logging
import math
import shlex
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger("segbench.progress")


def duration(seconds: float | None) -> str:
    """`42s`, `4m12s`, `2h05m`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class SweepState:
    """Where a sweep is, shared by the callback, the sweeper and the runs of this process."""

    job: int | None = None  # 1-based number of the running job
    total: int | None = None  # jobs in the sweep, when known
    offset: int = 0  # jobs an earlier attempt finished (a resumed search)
    durations: list[float] = field(default_factory=list)  # seconds of jobs that trained
    job_started: float = 0.0
    trained: bool = False  # whether the running job trains (a finished one is skipped)

    def reset(self) -> None:
        """Back to the state of a new SweepState (no sweep running)."""
        vars(self).update(vars(SweepState()))

    def active(self) -> bool:
        return self.job is not None

    def prefix(self) -> str:
        if not self.active():
            return ""
        return f"job {self.job} of {self.total}  " if self.total else f"job {self.job}  "

    def eta(self, run_left: float | None = None) -> float | None:
        """Seconds until the sweep ends: this job's remaining time (`run_left`) plus the mean
        duration of the jobs that trained, for each job after this one."""
        if not self.total or self.job is None:
            return None
        after = self.total - self.job
        if after == 0:
            return run_left
        if not self.durations:
            return None
        return (run_left or 0.0) + after * sum(self.durations) / len(self.durations)


SWEEP = SweepState()


class SweepProgress(Callback):
    """Hydra callback: "job k of n" and the sweep's ETA at the start of each job of a sweep."""

    def on_multirun_start(self, config, **kwargs) -> None:
        SWEEP.reset()
        SWEEP.total = sweep_size(config)

    def on_job_start(self, config, **kwargs) -> None:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        SWEEP.job = SWEEP.offset + int(config.hydra.job.num) + 1
        SWEEP.job_started = time.monotonic()
        SWEEP.trained = False
        # What tells this job from the others (the CLI leaves a sweep's constant overrides out
        # of override_dirname), and its seed.
        varying = [o for o in str(config.hydra.job.override_dirname).split("|") if o]
        seeds = [o for o in config.hydra.overrides.task if o.split("=", 1)[0] == "seed"]
        overrides = " ".join(varying + seeds)
        eta = None
        if SWEEP.total and SWEEP.durations:  # this job and the ones after it, at the mean so far
            eta = (SWEEP.total - SWEEP.job + 1) * sum(SWEEP.durations) / len(SWEEP.durations)
        log.info("%s%s%s", SWEEP.prefix().strip(), f": {overrides}" if overrides else "",
                 f"  (sweep ETA {duration(eta)})" if eta is not None else "")

    def on_job_end(self, config, job_return=None, **kwargs) -> None:
        if SWEEP.active() and SWEEP.trained:
            SWEEP.durations.append(time.monotonic() - SWEEP.job_started)

    def on_multirun_end(self, config, **kwargs) -> None:
        SWEEP.reset()
        if config.hydra.job.name == "train":  # where it went, and the next step, exactly
            folder = Path(str(config.hydra.sweep.dir))
            log.info("sweep finished: %s\nreport: segbench report %s", folder.absolute(),
                     shlex.quote(str(folder)))


def sweep_size(config) -> int | None:
    """Jobs in a sweep: the basic sweeper's cross product of its overrides and params, a
    search's n_trials; None when the sweeper does not say."""
    sweeper = OmegaConf.select(config, "hydra.sweeper", default=None)
    if sweeper is None:
        return None
    if "n_trials" in sweeper:
        return int(sweeper.n_trials)
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    try:
        params = sweeper.get("params") or {}
        lines = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
        parsed = OverridesParser.create().parse_overrides(lines)
        batches = BasicSweeper.split_arguments(parsed, None)
        return sum(len(b) for b in batches)
    except Exception:  # glob() and other sweeps that need the config tree: unknown
        return None


class RunProgress:
    """Progress of one run (see the module docstring). `bar`: a terminal bar instead of lines."""

    def __init__(self, *, first_epoch: int, max_epochs: int, train_steps: int, val_steps: int,
                 test_steps: int, bar: bool, interval_s: float, every_steps: int | None = None):
        self.first_epoch, self.max_epochs = first_epoch, max_epochs
        self.train_steps, self.val_steps, self.test_steps = train_steps, val_steps, test_steps
        self.interval_s, self.every_steps = interval_s, every_steps
        self.epoch, self.step, self.phase_name = first_epoch, 0, "train"
        self.phase_step = self.phase_steps = 0
        self.loss: float | None = None
        self.train_seconds = 0.0  # measured in this attempt: training steps ...
        self.train_done = 0
        self.eval_seconds = 0.0  # ... and validation/test steps
        self.eval_done = 0
        self.epoch_images = 0
        self.epoch_seconds = 0.0
        self.last_line = time.monotonic()
        SWEEP.trained = True
        self.bar: tqdm | None = None
        self._redirect: AbstractContextManager[None] | None = None
        if bar:
            epochs = max(0, max_epochs - first_epoch + 1)
            self.bar = tqdm(total=epochs * (train_steps + val_steps) + test_steps, leave=False,
                            dynamic_ncols=True, unit="step",
                            bar_format="{desc} {percentage:3.0f}%|{bar}|{postfix}")
            self._redirect = logging_redirect_tqdm()  # log lines print above the bar
            self._redirect.__enter__()

    # ------------------------------------------------------------------ estimates

    def _per_train_step(self) -> float | None:
        return self.train_seconds / self.train_done if self.train_done else None

    def _per_eval_step(self) -> float | None:
        if self.eval_done:
            return self.eval_seconds / self.eval_done
        per_train = self._per_train_step()
        return per_train / 3 if per_train else None  # no backward pass; a guess until measured

    def eta(self) -> float | None:
        """Seconds left in this run (training, validation and the test), from measured rates."""
        per_train, per_eval = self._per_train_step(), self._per_eval_step()
        if per_train is None or per_eval is None:
            return None
        epochs_after = self.max_epochs - self.epoch
        train_left = epochs_after * self.train_steps
        eval_left = epochs_after * self.val_steps + self.test_steps
        if self.phase_name == "train":
            train_left += self.train_steps - self.step
            eval_left += self.val_steps
        elif self.phase_name == "validation":
            eval_left += self.val_steps - self.phase_step
        else:
            eval_left = self.test_steps - self.phase_step
        return train_left * per_train + eval_left * per_eval

    def images_per_s(self) -> float | None:
        return self.epoch_images / self.epoch_seconds if self.epoch_seconds > 0 else None

    # ------------------------------------------------------------------ reporting

    def _fields(self) -> list[str]:
        where = (f"step {self.step}/{self.train_steps}" if self.phase_name == "train"
                 else f"{self.phase_name} {self.phase_step}/{self.phase_steps}")
        out = [where]
        rate = self.images_per_s()
        if rate is not None:
            out.append(f"{rate:.1f} img/s")
        if self.loss is not None:
            out.append(f"loss {self.loss:.4f}")
        eta = self.eta()
        out.append(f"ETA {duration(eta)}")
        sweep_eta = SWEEP.eta(eta) if SWEEP.active() else None
        if sweep_eta is not None:
            out.append(f"sweep ETA {duration(sweep_eta)}")
        return out

    def _head(self) -> str:
        """`[job k of n  ]epoch e/E`, or `test` in the final test."""
        if self.phase_name == "test":
            return f"{SWEEP.prefix()}test"
        return f"{SWEEP.prefix()}epoch {self.epoch}/{self.max_epochs}"

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.bar is not None:
            self.bar.set_description_str(self._head())
            self.bar.set_postfix_str(", ".join(self._fields()), refresh=False)
            self.bar.update(1)
            return
        due = now - self.last_line >= self.interval_s or force
        if self.every_steps and self.phase_name == "train" and self.step % self.every_steps == 0:
            due = True
        if due:
            self.last_line = now
            log.info("%s  %s", self._head(), "  ".join(self._fields()))

    # ------------------------------------------------------------------ hooks

    def train(self, loader, epoch: int):
        """The training loader of `epoch`, counting steps and images."""
        self.epoch, self.phase_name, self.step = epoch, "train", 0
        self.epoch_images, self.epoch_seconds = 0, 0.0
        start = time.monotonic()
        for batch in loader:
            yield batch
            now = time.monotonic()
            self.step += 1
            self.train_done += 1
            self.train_seconds += now - start
            self.epoch_seconds += now - start
            self.epoch_images += len(batch[0])
            self._report()
            start = time.monotonic()

    def running_loss(self, value: float) -> None:
        self.loss = value

    def evaluation(self, name: str, steps: int):
        """A wrapper for an evaluation loader (`validation` each epoch, `test` at the end)."""
        def wrap(loader):
            self.phase_name, self.phase_step, self.phase_steps = name, 0, steps
            start = time.monotonic()
            for batch in loader:
                yield batch
                now = time.monotonic()
                self.phase_step += 1
                self.eval_done += 1
                self.eval_seconds += now - start
                self._report()
                start = time.monotonic()
        return wrap

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            if self._redirect is not None:
                self._redirect.__exit__(None, None, None)
            self.bar = None


class ItemProgress:
    """Progress over a known number of items (`predict`'s images): the trainer's kind of bar on
    a terminal, else a line every `interval_s` seconds (the first batch's too, so a long job says
    at once how fast it goes): done/total, items/s, ETA. `bar=None`: a bar when stderr is a
    terminal."""

    def __init__(self, total: int, *, what: str = "images", label: str = "predict",
                 bar: bool | None = None, interval_s: float = 10.0):
        self.total, self.what, self.label, self.interval_s = total, what, label, interval_s
        self.done, self.started = 0, time.monotonic()
        self.last_line: float | None = None
        self.bar: tqdm | None = None
        self._redirect: AbstractContextManager[None] | None = None
        if sys.stderr.isatty() if bar is None else bar:
            self.bar = tqdm(total=total, leave=False, dynamic_ncols=True, unit=what[:-1] or what,
                            desc=label)
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def rate(self) -> float | None:
        seconds = time.monotonic() - self.started
        return self.done / seconds if self.done and seconds > 0 else None

    def line(self) -> str:
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate else None
        pct = 100 * self.done / self.total if self.total else 100.0
        unit = "img" if self.what == "images" else self.what
        return (f"{self.label}  {self.done}/{self.total} {self.what} ({pct:.0f}%)"
                + (f"  {rate:.1f} {unit}/s" if rate else "")
                + f"  ETA {duration(eta)}")

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if (self.last_line is None or now - self.last_line >= self.interval_s
                or self.done >= self.total):
            self.last_line = now
            log.info("%s", self.line())

    def close(self) -> float:
        """Closes the bar; returns the seconds taken."""
        if self.bar is not None:
            self.bar.close()
            if self._redirect is not None:
                self._redirect.__exit__(None, None, None)
            self.bar = None
        return time.monotonic() - self.started
