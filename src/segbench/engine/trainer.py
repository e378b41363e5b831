"""The one training loop every configuration runs through.

Read top to bottom like torchvision's reference scripts: `build()` makes the parts of a run from
its typed settings (device, model, data, loaders, optimisation: one named step each),
`train_one_epoch()` and `validate()` are one epoch each, and `fit()` loops over epochs, each told
by `run_epoch()` in named steps: train, validate, update schedule and stopping (all three read one
monitored validation metric, `trainer.monitor`), save the checkpoints, record (history.csv,
trackers, log). Then `test_best()` tests best.pt once.

Every epoch's batch order, augmentation and dropout are seeded from (seed, epoch) alone, and
last.pt (`last_checkpoint()`, the one place its payload is built) holds everything else
(weights, optimizer, schedule, scaler, early stopping and the `TrainState`), so a run resumed
from last.pt finishes with the same history as one never interrupted.

On several processes (DDP, runtime/distributed.py) the same loop runs in each; the hooks here are
few: the model is trained through its DDP wrapper, the ranks agree on stopping and on the running
loss, evaluation is sharded and gathered, and only rank 0 writes (`distributed.writer`: the other
ranks get a view of the run directory that reads and writes nothing).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import albumentations
import hydra
import numpy
import segmentation_models_pytorch
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from segbench import SegbenchError, __version__, faults, metrics
from segbench.data import Data, build_datasets, list_splits
from segbench.data.dataset import SeededShuffleSampler, ignore_stop_signals
from segbench.data.pinning import file_record, recorded_splits
from segbench.data.resident import resident_batches
from segbench.data.source import Sample
from segbench.data.splits import split_document
from segbench.data.verify import quick_check
from segbench.engine.early_stopping import EarlyStopping, Monitor, resolve_monitor
from segbench.inference.evaluation import Runtime, Split, Subject, eval_batch_size, evaluate_split
from segbench.inference.loop import (
    Collect,
    eval_loader,
    evaluate,
    metric_line,
    model_task,
    pixel_spacing,
)
from segbench.losses import build_loss, loss_target, set_epoch
from segbench.models import build_model
from segbench.models.info import inference_latency, model_facts
from segbench.optim import Schedule, build_optimizer, build_scheduler
from segbench.progress import RunProgress
from segbench.runs.rundir import RunDir
from segbench.runtime import distributed
from segbench.runtime.device import (
    autocast,
    autocast_dtype,
    compile_model,
    derive_seed,
    resolve_device,
    rng_state,
    seed_everything,
    set_determinism,
    set_rng_state,
)
from segbench.settings import Train
from segbench.settings import Trainer as TrainerSettings
from segbench.task import BINARY, Task
from segbench.tracking import Trackers, build_trackers
from segbench.viz import plot_curves

log = logging.getLogger(__name__)


class TrainingDiverged(SegbenchError):
    pass


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped the loop; last.pt holds `epoch`, the last finished epoch."""

    def __init__(self, epoch: int):
        super().__init__(f"interrupted after epoch {epoch}")
        self.epoch = epoch


class StopSignal:
    """SIGINT/SIGTERM ask the loop to stop at the next step; a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s received: stopping after this step (again to stop at once)",
                    signal.Signals(signum).name)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class TrainState:
    """Where a run is: what last.pt holds besides the components' own state dicts."""

    epoch: int = 0                       # the last finished epoch
    best_value: float | None = None      # best value of the monitored metric so far, its epoch
    best_epoch: int = 0
    monitor_ema: float | None = None     # the smoothed monitor (trainer.monitor_smoothing)
    train_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False

    def finish_epoch(self, row: dict, started: float) -> None:
        """Count the epoch of history row `row`, begun at `started`, as finished."""
        seconds = time.time() - started
        self.train_seconds += seconds
        row["seconds"] = round(seconds, 3)
        self.history.append(row)
        self.epoch = row["epoch"]

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for f in dataclasses.fields(self):
            if f.name in state:
                setattr(self, f.name, state[f.name])
        if "best_value" not in state and "best_iou" in state:  # checkpoints before trainer.monitor
            self.best_value = state["best_iou"]
        self.history = list(self.history)


@dataclass(frozen=True)
class Compute:
    """Where and how batches are computed."""

    device: torch.device
    amp_dtype: torch.dtype | None      # autocast's dtype, or None (fp32)
    channels_last: bool


@dataclass
class RunData:
    """A run's splits, their datasets and the loaders of training and validation."""

    splits: dict[str, list[Sample]]      # split name -> samples (split.json)
    datasets: Data                       # split name -> dataset
    sampler: SeededShuffleSampler        # the training order, seeded per epoch
    train_loader: DataLoader
    val_loader: DataLoader
    val_volumes: torch.Tensor | None     # each validation item's volume number (volumetric data)
    eval_batch: int
    workers: int


@dataclass
class Optimisation:
    """What an optimizer step uses; its state is part of last.pt."""

    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule                   # step_batch(), step_epoch(row)
    scaler: torch.amp.GradScaler


@dataclass(frozen=True)
class StepSettings:
    """How train_one_epoch steps: gradient clipping, accumulation, how often it syncs the host."""

    grad_clip: float | None = None
    accumulate: int = 1                  # batches per optimizer step
    log_every: int = 50                  # steps between running-loss (and NaN) checks
    task: Task = BINARY                  # what masks and logits mean (segbench.task)

    @classmethod
    def of(cls, t: TrainerSettings, task: Task = BINARY) -> StepSettings:
        return cls(t.grad_clip, t.accumulate_grad_batches, t.log_every_steps, task)


@dataclass
class Parts:
    """Everything `build()` makes for a run."""

    compute: Compute
    model: torch.nn.Module
    train_model: torch.nn.Module         # what batches go through: the model, or its DDP wrapper
    facts: dict                          # parameters, size, FLOPs (models.info)
    data: RunData
    opt: Optimisation
    monitor: Monitor                     # the validation metric schedule, stopping and best.pt read
    early: EarlyStopping
    config: dict                         # the resolved config, saved in every checkpoint

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.optimizer.state_dict(),
                "scheduler": self.opt.schedule.state_dict(), "scaler": self.opt.scaler.state_dict(),
                "early_stopping": self.early.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.optimizer.load_state_dict(state["optimizer"])
        self.opt.schedule.load_state_dict(state["scheduler"])
        self.opt.scaler.load_state_dict(state["scaler"])
        self.early.load_state_dict(state["early_stopping"])

    def subject(self) -> Subject:
        """The model as evaluation runs it: on the run's device, autocast and memory format."""
        c = self.compute
        return Subject(self.model, c.device, c.amp_dtype, c.channels_last)


def num_workers(spec, device: torch.device) -> int:
    if spec == "auto":
        return min(8, max(1, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 0
    return int(spec)


# ----------------------------------------------------------------------------- build

def build(s: Train, run: RunDir, resuming: bool) -> Parts:
    """The run's parts from its settings. The model comes first: a configuration it cannot take
    fails before any data is read. The order of the steps is the order the seeded RNGs are drawn
    in (model initialisation, then data), so it is part of what makes a run repeatable."""
    compute = place(s)
    model, facts = make_model(s, compute)
    splits, datasets = load_data(s, run, resuming)
    data = make_loaders(s, compute, splits, datasets)
    monitor = resolve_monitor(s.trainer.monitor, s.trainer.monitor_mode,
                              str(s.config.dataset.get("monitor", "auto")),
                              data.val_volumes is not None, s.config.dataset.name,
                              model_task(model).kind,
                              *selection(s.trainer, s.config.dataset))
    model, train_model, opt = make_optimisation(s, compute, model, data, monitor)
    t = s.trainer
    early = EarlyStopping(t.early_stopping.patience, t.early_stopping.min_delta, monitor.mode)
    parts = Parts(compute=compute, model=model, train_model=train_model, facts=facts, data=data,
                  opt=opt, monitor=monitor, early=early,
                  config=cast(dict, OmegaConf.to_container(s.config, resolve=True)))
    log_parts(s, parts)
    return parts


def place(s: Train) -> Compute:
    """The device, its numeric settings and the run's seed."""
    t = s.trainer
    device = distributed.current().device or resolve_device(t.device)
    amp_dtype = autocast_dtype(device, t.precision)
    set_determinism(t.deterministic, device)
    seed_everything(s.seed)
    channels_last = t.channels_last is True or (t.channels_last == "auto" and device.type == "cuda")
    return Compute(device, amp_dtype, channels_last)


def make_model(s: Train, compute: Compute) -> tuple[torch.nn.Module, dict]:
    model = build_model(s.config).to(compute.device)
    if compute.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, model_facts(model, s.input_shape)


def load_data(s: Train, run: RunDir, resuming: bool) -> tuple[dict[str, list[Sample]], Data]:
    """The splits and their (cached) datasets. A new run's split is written before any
    training, so it can be audited; a resumed run keeps the split it recorded."""
    cfg = s.config
    record = {"dataset": cfg.dataset.name, "split_seed": int(cfg.dataset.get("split_seed", 0))}
    # Rank 0 generates and caches the data, then the others read it.
    with distributed.rank_zero_first():
        if resuming:  # the split recorded when the run started, checked against the files now
            splits = recorded_splits(cfg, run.read_split(), where=f"run {run.path}")
        else:
            splits = list_splits(cfg, record)
        quick_check(cfg, splits)  # the cheap part of `segbench verify`: files there, one decodes
        datasets = build_datasets(cfg, splits, Path(cfg.paths.cache))
    if not resuming:
        run.write_split({**split_document(splits, record), **file_record(splits)})
    log.info("data: %s  train %d  val %d  test %d  at %dx%d", cfg.dataset.name,
             len(splits["train"]), len(splits["val"]), len(splits["test"]), s.resolution.height,
             s.resolution.width)
    return splits, datasets


def make_loaders(s: Train, compute: Compute, splits: dict[str, list[Sample]],
                 datasets: Data) -> RunData:
    """The training loader (this process's share, in a per-epoch seeded order) and the
    validation loader (sharded on several processes)."""
    t, ctx = s.trainer, distributed.current()
    workers = num_workers(t.num_workers, compute.device)
    if len(datasets["train"]) < ctx.world_size:
        raise SegbenchError(f"{len(datasets['train'])} training images cannot be shared by "
                            f"{ctx.world_size} processes; use fewer devices")
    sampler = SeededShuffleSampler(len(datasets["train"]), ctx.rank, ctx.world_size)
    drop_last = len(sampler) > t.batch_size
    train_loader = resident_batches(datasets["train"], sampler, t.batch_size, drop_last,
                                    compute.device, t.data_on_device, t.data_on_device_budget)
    if train_loader is None:  # the DataLoader path: albumentations in worker processes
        train_loader = DataLoader(datasets["train"], batch_size=t.batch_size, sampler=sampler,
                                  num_workers=workers, pin_memory=compute.device.type == "cuda",
                                  persistent_workers=workers > 0,
                                  worker_init_fn=ignore_stop_signals, drop_last=drop_last)
    eval_batch = eval_batch_size(t)
    val_loader = eval_loader(datasets["val"], eval_batch, compute.device, workers,
                             shard=ctx.enabled)
    return RunData(splits=splits, datasets=datasets, sampler=sampler, train_loader=train_loader,
                   val_loader=val_loader, val_volumes=volume_numbers(splits["val"]),
                   eval_batch=eval_batch, workers=workers)


def volume_numbers(samples: list) -> torch.Tensor | None:
    """Each sample's volume number (0, 1, ... in order of appearance), or None where the
    samples are not grouped into volumes."""
    groups = [x.group for x in samples]
    if not all(g is not None for g in groups):
        return None
    number = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    return torch.tensor([number[g] for g in groups])


def make_optimisation(s: Train, compute: Compute, model: torch.nn.Module, data: RunData,
                      monitor: Monitor) -> tuple[torch.nn.Module, torch.nn.Module, Optimisation]:
    """The loss, the model wrapped for several processes, the optimizer, its schedule and the
    gradient scaler; returns (model, the module to train through, Optimisation)."""
    cfg, t = s.config, s.trainer
    loss_fn = build_loss(cfg.loss, {"train_masks": data.datasets["train"].masks,
                                    "task": model_task(model)}).to(compute.device)
    model, train_model = distributed.wrap(model, t.sync_batchnorm)
    train_model = compile_model(train_model, t.compile, compute.device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    schedule = build_scheduler(cfg.scheduler, optimizer, max_epochs=t.max_epochs,
                               steps_per_epoch=distributed.steps_per_epoch(
                                   len(data.train_loader), t.accumulate_grad_batches),
                               monitor=monitor.metric, mode=monitor.mode)
    scaler = torch.amp.GradScaler(compute.device.type, enabled=compute.amp_dtype == torch.float16)
    return model, train_model, Optimisation(loss_fn, optimizer, schedule, scaler)


def log_parts(s: Train, parts: Parts) -> None:
    cfg, t, ctx, compute = s.config, s.trainer, distributed.current(), parts.compute
    log.info("model: %s (%s, %s)  %s parameters  device %s%s", cfg.model.name,
             cfg.model.get("encoder", "-"), cfg.activation.name, f"{parts.facts['params']:,}",
             compute.device, f"  autocast {compute.amp_dtype}" if compute.amp_dtype else "")
    steps = distributed.steps_per_epoch(len(parts.data.train_loader), t.accumulate_grad_batches)
    if ctx.enabled or t.accumulate_grad_batches > 1:
        log.info("global batch %d = batch_size %d%s%s; %d optimizer steps per epoch",
                 distributed.global_batch(t.batch_size, t.accumulate_grad_batches), t.batch_size,
                 f" x {ctx.world_size} process(es) ({ctx.launcher}, {ctx.backend})"
                 if ctx.enabled else "",
                 f" x {t.accumulate_grad_batches} accumulated"
                 if t.accumulate_grad_batches > 1 else "",
                 steps)
    plateau = cfg.scheduler.get("name") == "plateau"
    log.info("monitor: %s (%s) picks best.pt%s stops early%s", parts.monitor.metric,
             parts.monitor.mode, "," if plateau else " and",
             " and drives the plateau schedule" if plateau else "")


def end_workers(loader: DataLoader) -> None:
    """End a DataLoader's persistent workers now. They end with the loader's iterator, which a
    reference cycle can keep alive until the interpreter exits; by then they ignore SIGTERM
    (ignore_stop_signals), so multiprocessing's exit handler would wait for them forever.
    PyTorch has no public call for this: its iterator's own shutdown is used."""
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    loader._iterator = None


# ----------------------------------------------------------------------------- one epoch

def train_one_epoch(model, loader, opt: Optimisation, compute: Compute, steps: StepSettings,
                    epoch: int, progress: RunProgress | None = None, stop: StopSignal | None = None
                    ) -> dict:
    """One epoch; the optimizer steps every `steps.accumulate` batches (and after the last), on
    the mean loss of those batches. `model`: the module to train through (DDP's wrapper on several
    processes: it all-reduces the gradients of each optimizer step once); `progress`: the run's
    RunProgress, or None; `stop`: the run's StopSignal, or None."""
    model.train()
    device, accumulate = compute.device, steps.accumulate
    loss_sum = torch.zeros((), device=device)
    seen = 0
    counts = []
    n = len(loader)
    batches = progress.train(loader, epoch) if progress is not None else loader
    for step, (images, masks, _) in enumerate(batches, 1):
        first = (step - 1) % accumulate == 0
        last = step % accumulate == 0 or step == n
        # The batches of this optimizer step (the last step of an epoch may have fewer).
        group = min(accumulate, n - (step - 1) // accumulate * accumulate)
        images = images.to(device, non_blocking=True)
        if compute.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        masks = masks.to(device, non_blocking=True)
        target = loss_target(masks, steps.task)
        if first:
            opt.optimizer.zero_grad(set_to_none=True)
        with distributed.no_sync(model, skip=not last):
            with autocast(device, compute.amp_dtype):
                logits = model(images)
            loss = opt.loss_fn(logits.float(), target)
            opt.scaler.scale(loss / group).backward()
        if last:
            optimizer_step(model, opt, steps.grad_clip)
        loss_sum += loss.detach() * len(images)
        seen += len(images)
        counts.append(metrics.task_confusion(metrics.probabilities(logits.detach().float(),
                                                                  steps.task), masks, steps.task))
        # The one host sync of the loop, every `log_every` steps: running loss and NaN check
        # (over all processes, so that they stop together).
        if step % steps.log_every == 0 or step == n:
            check_running_loss(running_loss(loss_sum, seen), epoch, step, progress)
        faults.point("train_step")
        if distributed.any_rank(stop is not None and stop.requested):
            raise Interrupted(epoch - 1)
    summary = metrics.task_summary(distributed.gather_cat(torch.cat(counts)), steps.task)
    return {"loss": running_loss(loss_sum, seen), "dice": summary["dice"], "iou": summary["iou"]}


def optimizer_step(model, opt: Optimisation, grad_clip: float | None) -> None:
    """Clip (on unscaled gradients), step the optimizer and the scaler, then the per-step
    schedule."""
    if grad_clip:
        opt.scaler.unscale_(opt.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.schedule.step_batch()


def running_loss(loss_sum: torch.Tensor, seen: int) -> float:
    """The mean training loss so far over every process's images (a host sync)."""
    total = distributed.all_sum(torch.stack([loss_sum, loss_sum.new_tensor(seen)])).tolist()
    return total[0] / total[1]


def check_running_loss(running: float, epoch: int, step: int, progress: RunProgress | None) -> None:
    if not math.isfinite(running):
        raise TrainingDiverged(
            f"the training loss became {running} in epoch {epoch} (by step {step}). "
            "Lower optimizer.lr, set trainer.grad_clip=1.0, or use trainer.precision=fp32; "
            "checkpoints/last.pt holds the last good epoch"
        )
    if progress is not None:
        progress.running_loss(running)


def validate(parts: Parts, threshold: float, epoch: int,
             progress: RunProgress | None = None) -> dict:
    loader = parts.data.val_loader
    wrap = progress.evaluation("validation", len(loader)) if progress is not None else None
    val = evaluate(parts.subject(), loader, threshold=threshold, loss_fn=parts.opt.loss_fn,
                   collect=Collect(volumes=parts.data.val_volumes), progress=wrap).summary()
    if not math.isfinite(val["loss"]):
        raise TrainingDiverged(f"the validation loss is {val['loss']} in epoch {epoch}; "
                               "lower optimizer.lr or set trainer.grad_clip=1.0")
    return val


# The metrics of an epoch that history.csv keeps, in its column order (after epoch and lr; the
# volume columns only on volumetric data; `seconds` last).
TRAIN_COLUMNS = ("loss", "dice", "iou")
VAL_COLUMNS = ("loss", "dice", "iou", "dice_micro", "iou_micro", "precision", "recall",
               "volume_dice", "volume_dice_median")


def history_row(epoch: int, lr: float, train: dict, val: dict,
                classes: tuple[str, ...] = ()) -> dict:
    """`classes`: the class names of a multi-class task, whose per-class validation Dice
    (`val_dice_<class>`) follows the summary columns."""
    return {"epoch": epoch, "lr": lr, **{f"train_{k}": train[k] for k in TRAIN_COLUMNS},
            **{f"val_{k}": val[k] for k in VAL_COLUMNS if k in val},
            **{f"val_dice_{c}": val[f"dice_{c}"] for c in classes if f"dice_{c}" in val}}


# ----------------------------------------------------------------------------- the loop

@dataclass
class Outputs:
    """Where a run's progress goes: its directory (rank 0 writes), its trackers, its display."""

    run: RunDir
    trackers: Trackers
    progress: RunProgress


def fit(s: Train, run: RunDir, resuming: bool) -> dict:
    """Train, validate and test one configuration in `run`; returns the metrics.json record."""
    started = time.time()
    run = distributed.writer(run)  # rank 0 writes; other ranks read what it wrote
    # A bad pixel spacing fails before training, not at its end.
    pixel_spacing(s.config, s.eval.native_resolution)
    parts = build(s, run, resuming)
    state = resume(run, parts) if resuming else start(run, parts)
    out = Outputs(run, open_trackers(s, run, state), open_progress(s, parts, state))
    try:
        with StopSignal() as stop:
            for epoch in range(state.epoch + 1, s.trainer.max_epochs + 1):
                if state.stopped_early:
                    break
                run_epoch(epoch, s, parts, state, out, stop)
        out.trackers.flush()
        result = test_best(s, run, parts, state, out.progress)
    except BaseException as err:
        out.progress.close()
        out.trackers.close("interrupted" if isinstance(err, (Interrupted, KeyboardInterrupt))
                          else "failed")
        raise
    finally:
        end_workers(parts.data.train_loader)
    out.progress.close()
    if not distributed.current().is_main:  # rank 0 records the test
        return result
    return record_test(result, out, state, started)


def start(run: RunDir, parts: Parts) -> TrainState:
    """A new run; its last.pt is written at once, so an interrupted first epoch resumes too."""
    state = TrainState()
    run.save_checkpoint("last", last_checkpoint(parts, state))
    return state


def resume(run: RunDir, parts: Parts) -> TrainState:
    """Every part and the TrainState as last.pt holds them, and the RNGs where they were."""
    saved = run.load_checkpoint("last", map_location=parts.compute.device)
    distributed.check_resume(saved)
    parts.load_state_dict(saved)
    state = TrainState()
    state.load_state_dict(saved)
    set_rng_state(saved["rng"])
    state.stopped_early = state.stopped_early or parts.early.should_stop
    run.write_history(state.history)  # last.pt is the record: a kill may have beaten the csv
    log.info("resuming %s after epoch %d", run.path, state.epoch)
    return state


def open_trackers(s: Train, run: RunDir, state: TrainState) -> Trackers:
    """Rank 0's trackers. They get a resumed run's finished epochs (history.csv, rewritten from
    last.pt) again where a kill kept them from it."""
    if not distributed.current().is_main:
        return Trackers([])
    return build_trackers(s.config, run, start_epoch=state.epoch + 1)


def open_progress(s: Train, parts: Parts, state: TrainState) -> RunProgress:
    """Only rank 0 shows a bar (the others' log lines are dropped)."""
    t = s.trainer
    bar = sys.stderr.isatty() if t.progress_bar == "auto" else bool(t.progress_bar)
    return RunProgress(
        first_epoch=state.epoch + 1, max_epochs=t.max_epochs,
        train_steps=len(parts.data.train_loader), val_steps=len(parts.data.val_loader),
        test_steps=test_steps(parts, s.eval.native_resolution),
        bar=distributed.current().is_main and bar,
        interval_s=t.progress_interval_s, every_steps=t.progress_every_steps)


def run_epoch(epoch: int, s: Train, parts: Parts, state: TrainState, out: Outputs,
              stop: StopSignal) -> None:
    """One epoch in named steps: train, validate, update schedule and stopping, save, record."""
    epoch_start = time.time()
    task = model_task(parts.model)
    lr = begin_epoch(epoch, s, parts)
    train = train_one_epoch(parts.train_model, parts.data.train_loader, parts.opt, parts.compute,
                            StepSettings.of(s.trainer, task), epoch, out.progress, stop)
    val = validate(parts, s.eval.threshold, epoch, out.progress)
    row = history_row(epoch, lr, train, val, task.names if task.kind != "binary" else ())
    improved = update_schedule_and_stopping(epoch, row, parts, state)
    state.finish_epoch(row, epoch_start)
    save_checkpoints(out.run, parts, state, val if improved else None)
    record_epoch(out, s, parts, state, improved)
    if distributed.any_rank(stop.requested):
        raise Interrupted(epoch)


def begin_epoch(epoch: int, s: Train, parts: Parts) -> float:
    """Seed the epoch from (seed, epoch) alone, set the loss's weight schedule; returns the LR of
    the epoch's first step: per-epoch schedules hold it all epoch, and per-step ones would
    otherwise report the LR after the last step (0 for poly)."""
    epoch_seed = derive_seed(s.seed, epoch)
    parts.data.sampler.set_seed(epoch_seed)
    torch.manual_seed(epoch_seed)  # dropout and anything else drawn from torch
    set_epoch(parts.opt.loss_fn, epoch, s.trainer.max_epochs)  # losses with a weight schedule
    return parts.opt.optimizer.param_groups[0]["lr"]


def selection(t, dataset) -> tuple[float, int]:
    """(smoothing, first epoch best.pt may come from): trainer.monitor_smoothing (auto: the
    dataset's `monitor_smoothing`, else 0) and trainer.best_from_epoch."""
    smoothing = t.monitor_smoothing
    if smoothing == "auto":
        smoothing = float(dataset.get("monitor_smoothing", 0.0) or 0.0)
    return float(smoothing), int(t.best_from_epoch)


def update_schedule_and_stopping(epoch: int, row: dict, parts: Parts, state: TrainState) -> bool:
    """One value, read alike by the schedule, early stopping and the best checkpoint (the
    monitor, smoothed where trainer.monitor_smoothing asks: history.csv's `val_monitor`);
    returns whether it improved on the best so far."""
    monitor = parts.monitor
    value = monitor.smoothed(row[monitor.metric], state.monitor_ema)
    state.monitor_ema = value
    if monitor.smoothing:
        row["val_monitor"] = value
    parts.opt.schedule.step_epoch({**row, monitor.metric: value})
    improved = False
    if epoch >= monitor.start:
        parts.early.step(value, epoch)
        improved = monitor.better(value, state.best_value)
    if improved:
        state.best_value, state.best_epoch = value, epoch
    state.stopped_early = parts.early.should_stop
    return improved


def last_checkpoint(parts: Parts, state: TrainState) -> dict:
    """last.pt: everything a resumed run needs to finish as if never interrupted."""
    return {**parts.state_dict(), **state.state_dict(), "rng": rng_state(), "config": parts.config,
            "world_size": distributed.current().world_size}


def save_checkpoints(run: RunDir, parts: Parts, state: TrainState, best_val: dict | None) -> None:
    """best.pt when the epoch improved (`best_val`: its validation metrics), then last.pt."""
    if best_val is not None:
        run.save_checkpoint("best", {"epoch": state.epoch, "model": parts.model.state_dict(),
                                     "val": best_val, "config": parts.config})
    run.save_checkpoint("last", last_checkpoint(parts, state))


def record_epoch(out: Outputs, s: Train, parts: Parts, state: TrainState, improved: bool) -> None:
    """history.csv, the trackers and the log lines of the epoch just finished."""
    row = state.history[-1]
    out.run.write_history(state.history)
    out.trackers.log_epoch(row)
    metric = parts.monitor.metric
    shown = "" if metric in ("val_loss", "val_dice", "val_iou") else f"  {metric} {row[metric]:.4f}"
    log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  val_dice %.4f  val_iou %.4f%s  "
             "lr %.2e  %.1fs%s", row["epoch"], s.trainer.max_epochs, row["train_loss"],
             row["val_loss"], row["val_dice"], row["val_iou"], shown, row["lr"], row["seconds"],
             "  *best*" if improved else "")
    if state.stopped_early:
        log.info("early stopping: %s has not improved by %g for %d epochs (best %.4f at epoch %d)",
                 metric, parts.early.min_delta, parts.early.patience, parts.early.best,
                 parts.early.best_epoch)


def record_test(result: dict, out: Outputs, state: TrainState, started: float) -> dict:
    """Rank 0's record of the finished run: trackers, then metrics.json, then the trackers'
    copies of the run's files."""
    result["wall_seconds"] = round(time.time() - started, 2)
    out.trackers.log_test(result, state.best_epoch)
    # metrics.json marks the run finished: every record comes before it.
    out.run.write_metrics(result)
    out.trackers.log_artifacts()  # the trackers' copies of the run's files, metrics.json among them
    out.trackers.close()
    log.info("test (best epoch %d): %s", state.best_epoch, metric_line(result["test"]))
    return result


# ----------------------------------------------------------------------------- the final test

def test_steps(parts: Parts, native: bool) -> int:
    """Batches of the final test (one image per batch when scored at native resolution)."""
    n = len(parts.data.datasets["test"])
    return n if native else math.ceil(n / parts.data.eval_batch)


def test_best(s: Train, run: RunDir, parts: Parts, state: TrainState,
              progress: RunProgress | None = None) -> dict:
    """Test once, with the checkpoint chosen on validation; the metrics.json record."""
    cfg, ctx, compute, data = s.config, distributed.current(), parts.compute, parts.data
    if ctx.is_main:
        plot_curves(state.history, run / "curves.png", state.best_epoch,
                    title=f"{run.name()}: {cfg.model.name} ({cfg.model.get('encoder', '-')}), "
                          f"seed {s.seed}, best epoch {state.best_epoch}")
    distributed.barrier()  # best.pt, written by rank 0, is complete for every rank
    best = run.load_checkpoint("best", map_location=compute.device)
    parts.model.load_state_dict(best["model"])
    e = s.eval
    record = evaluate_split(
        parts.subject(),
        Split(cfg, data.splits["test"], "test", data.datasets["test"]), e, run.path,
        Runtime(data.eval_batch, data.workers, shard=ctx.enabled,
                progress=progress.evaluation("test", test_steps(parts, e.native_resolution))
                if progress is not None else None))
    device_names = distributed.gather_objects(device_name(compute.device))
    if not ctx.is_main:
        return {}
    latency = (inference_latency(parts.model, s.input_shape, compute.device, compute.amp_dtype)
               if e.latency else None)
    return {
        "test": record.pop("test"),
        "val_best": best["val"],
        "best_epoch": state.best_epoch,
        "monitor": {"metric": parts.monitor.metric, "mode": parts.monitor.mode,
                    "best": state.best_value, "smoothing": parts.monitor.smoothing,
                    "best_from_epoch": parts.monitor.start},
        "epochs_run": len(state.history),
        "stopped_early": state.stopped_early,
        **record,  # how the test was made (threshold, TTA, rules, units)
        "model": {"name": cfg.model.name, **parts.facts, "latency_ms": latency},
        "seed": s.seed,
        "split_sizes": {k: len(v) for k, v in data.splits.items()},
        "train_seconds": round(state.train_seconds, 2),
        "device": str(compute.device),
        "device_name": device_name(compute.device),
        "world_size": ctx.world_size,
        "device_names": device_names,
        "global_batch_size": distributed.global_batch(s.trainer.batch_size,
                                                      s.trainer.accumulate_grad_batches),
        "precision": str(compute.amp_dtype).replace("torch.", "") if compute.amp_dtype else "fp32",
        "versions": versions(),
    }


def versions() -> dict:
    return {"segbench": __version__, "python": platform.python_version(),
            "torch": torch.__version__,
            "segmentation_models_pytorch": segmentation_models_pytorch.__version__,
            "albumentations": albumentations.__version__, "hydra": hydra.__version__,
            "numpy": numpy.__version__, "platform": platform.platform()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() if device.type == "cpu" else device.type
