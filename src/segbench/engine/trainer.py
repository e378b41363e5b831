"""The one training loop every configuration runs through.

Read top to bottom like torchvision's reference scripts: `build()` makes the parts of a run from
its config, `train_one_epoch()` and `validate()` are one epoch each, and `fit()` loops over
epochs (schedule, early stopping, checkpoints: all three read one monitored validation metric,
`trainer.monitor`), then tests best.pt once.

Every epoch's batch order, augmentation and dropout are seeded from (seed, epoch) alone, and
last.pt holds everything else (weights, optimizer, schedule, scaler, early stopping and the
`TrainState`), so a run resumed from last.pt finishes with the same history as one never
interrupted.

On several processes (DDP, engine/distributed.py) the same loop runs in each; the hooks here are
few: the model is trained through its DDP wrapper, the ranks agree on stopping and on the running
loss, evaluation is sharded and gathered, and only rank 0 writes (`distributed.writer`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from segbench import SegbenchError, __version__, faults, metrics
from segbench.data import build_datasets, list_splits
from segbench.data.dataset import SeededShuffleSampler, ignore_stop_signals
from segbench.data.pinning import file_record, recorded_splits
from segbench.data.splits import split_document
from segbench.data.verify import quick_check
from segbench.engine import distributed
from segbench.engine.checkpoint import rng_state, set_rng_state
from segbench.engine.device import (
    autocast,
    autocast_dtype,
    derive_seed,
    resolve_device,
    seed_everything,
    set_determinism,
)
from segbench.engine.early_stopping import EarlyStopping, Monitor, resolve_monitor
from segbench.engine.evaluate import eval_loader, evaluate, metric_line, pixel_spacing
from segbench.inference import Runtime, Split, Subject, eval_batch_size, evaluate_split, input_shape
from segbench.loggers import Loggers, build_loggers
from segbench.losses import build_loss, set_epoch
from segbench.models import build_model
from segbench.models.info import inference_latency, model_facts
from segbench.optim import build_optimizer, build_scheduler
from segbench.progress import RunProgress
from segbench.rundir import RunDir
from segbench.settings import Train

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
    train_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for f in dataclasses.fields(self):
            if f.name in state:
                setattr(self, f.name, state[f.name])
        if "best_value" not in state and "best_iou" in state:  # checkpoints before trainer.monitor
            self.best_value = state["best_iou"]
        self.history = list(self.history)


@dataclass
class Parts:
    """Everything `build()` makes for a run."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    model: torch.nn.Module
    facts: dict
    splits: dict
    data: object
    sampler: SeededShuffleSampler
    train_loader: DataLoader
    val_loader: DataLoader
    val_volumes: torch.Tensor | None     # each validation item's volume number (volumetric data)
    monitor: Monitor
    eval_batch: int
    workers: int
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: object
    scaler: torch.amp.GradScaler
    early: EarlyStopping
    train_model: torch.nn.Module         # what batches go through: the model, or its DDP wrapper

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                "early_stopping": self.early.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.early.load_state_dict(state["early_stopping"])


def num_workers(spec, device: torch.device) -> int:
    if spec == "auto":
        import os

        return min(8, max(1, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 0
    return int(spec)


def build(cfg: DictConfig, s: Train, run: RunDir, resuming: bool) -> Parts:
    """The run's parts from its config. The model comes first: a configuration it cannot take
    fails before any data is read. A new run's split is written before any training, so it can
    be audited; a resumed run keeps the split it recorded."""
    t = s.trainer
    ctx = distributed.current()
    device = ctx.device or resolve_device(t.device)
    amp_dtype = autocast_dtype(device, t.precision)
    set_determinism(t.deterministic, device)
    seed_everything(s.seed)
    channels_last = t.channels_last is True or (t.channels_last == "auto" and device.type == "cuda")

    model = build_model(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    facts = model_facts(model, (int(cfg.model.get("in_channels", 3)), s.resolution.height,
                                s.resolution.width))

    record = {"dataset": cfg.dataset.name, "split_seed": int(cfg.dataset.get("split_seed", 0))}
    with distributed.rank_zero_first():  # rank 0 generates and caches the data, then the others read it
        if resuming:  # the split recorded when the run started, checked against the files now
            splits = recorded_splits(cfg, run.read_split(), where=f"run {run.path}")
        else:
            splits = list_splits(cfg, record)
        quick_check(cfg, splits)  # the cheap part of `segbench verify`: files there, one decodes
        data = build_datasets(cfg, splits, Path(cfg.paths.cache))
    if not resuming:
        run.write_split({**split_document(splits, record), **file_record(splits)})
    log.info("data: %s  train %d  val %d  test %d  at %dx%d", cfg.dataset.name, len(splits["train"]),
             len(splits["val"]), len(splits["test"]), s.resolution.height, s.resolution.width)

    workers = num_workers(t.num_workers, device)
    if len(data["train"]) < ctx.world_size:
        raise SegbenchError(f"{len(data['train'])} training images cannot be shared by "
                            f"{ctx.world_size} processes; use fewer devices")
    sampler = SeededShuffleSampler(len(data["train"]), ctx.rank, ctx.world_size)
    train_loader = DataLoader(data["train"], batch_size=t.batch_size, sampler=sampler,
                              num_workers=workers, pin_memory=device.type == "cuda",
                              persistent_workers=workers > 0, worker_init_fn=ignore_stop_signals,
                              drop_last=len(sampler) > t.batch_size)
    eval_batch = eval_batch_size(t)
    val_loader = eval_loader(data["val"], eval_batch, device, workers, shard=ctx.enabled)
    val_groups = [x.group for x in splits["val"]]
    val_volumes = None
    if all(g is not None for g in val_groups):
        number = {g: i for i, g in enumerate(dict.fromkeys(val_groups))}
        val_volumes = torch.tensor([number[g] for g in val_groups])
    monitor = resolve_monitor(t.monitor, t.monitor_mode, str(cfg.dataset.get("monitor", "auto")),
                              val_volumes is not None, cfg.dataset.name)

    loss_fn = build_loss(cfg.loss, {"train_masks": data["train"].masks}).to(device)
    model, train_model = distributed.wrap(model, t.sync_batchnorm)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    schedule = build_scheduler(cfg.scheduler, optimizer, max_epochs=t.max_epochs,
                               steps_per_epoch=distributed.steps_per_epoch(
                                   len(train_loader), t.accumulate_grad_batches),
                               monitor=monitor.metric, mode=monitor.mode)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    early = EarlyStopping(t.early_stopping.patience, t.early_stopping.min_delta, monitor.mode)
    log.info("model: %s (%s, %s)  %s parameters  device %s%s", cfg.model.name,
             cfg.model.get("encoder", "-"), cfg.activation.name, f"{facts['params']:,}", device,
             f"  autocast {amp_dtype}" if amp_dtype else "")
    if ctx.enabled or t.accumulate_grad_batches > 1:
        log.info("global batch %d = batch_size %d%s%s; %d optimizer steps per epoch",
                 distributed.global_batch(t.batch_size, t.accumulate_grad_batches), t.batch_size,
                 f" x {ctx.world_size} process(es) ({ctx.launcher}, {ctx.backend})" if ctx.enabled else "",
                 f" x {t.accumulate_grad_batches} accumulated" if t.accumulate_grad_batches > 1 else "",
                 distributed.steps_per_epoch(len(train_loader), t.accumulate_grad_batches))
    log.info("monitor: %s (%s) picks best.pt, stops early and drives the plateau schedule",
             monitor.metric, monitor.mode)
    return Parts(device, amp_dtype, channels_last, model, facts, splits, data, sampler,
                 train_loader, val_loader, val_volumes, monitor, eval_batch, workers, loss_fn,
                 optimizer, schedule, scaler, early, train_model)



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


def train_one_epoch(model, loader, loss_fn, optimizer, schedule, scaler, *, device, amp_dtype,
                    grad_clip, channels_last, epoch, progress, log_every, stop,
                    accumulate: int = 1) -> dict:
    """One epoch; the optimizer steps every `accumulate` batches (and after the last), on the
    mean loss of those batches. `model`: the module to train through (DDP's wrapper on several
    processes: it all-reduces the gradients of each optimizer step once); `progress`: the run's
    RunProgress, or None."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    seen = 0
    counts = []
    steps = len(loader)
    batches = progress.train(loader, epoch) if progress is not None else loader
    for step, (images, masks, _) in enumerate(batches, 1):
        first = (step - 1) % accumulate == 0
        last = step % accumulate == 0 or step == steps
        group = min(accumulate, steps - (step - 1) // accumulate * accumulate)  # batches of this optimizer step
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target = masks.to(device, non_blocking=True).float()
        if first:
            optimizer.zero_grad(set_to_none=True)
        with distributed.no_sync(model, skip=not last):
            with autocast(device, amp_dtype):
                logits = model(images)
            loss = loss_fn(logits.float(), target)
            scaler.scale(loss / group).backward()
        if last:
            if grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
            scaler.step(optimizer)
            scaler.update()
            schedule.step_batch()
        loss_sum += loss.detach() * len(images)
        seen += len(images)
        counts.append(metrics.confusion(torch.sigmoid(logits.detach().float()), target))
        # The one host sync of the loop, every `log_every` steps: running loss and NaN check
        # (over all processes, so that they stop together).
        if step % log_every == 0 or step == steps:
            total = distributed.all_sum(torch.stack([loss_sum, loss_sum.new_tensor(seen)])).tolist()
            running = total[0] / total[1]
            if not math.isfinite(running):
                raise TrainingDiverged(
                    f"the training loss became {running} in epoch {epoch} (by step {step}). "
                    "Lower optimizer.lr, set trainer.grad_clip=1.0, or use trainer.precision=fp32; "
                    "checkpoints/last.pt holds the last good epoch"
                )
            if progress is not None:
                progress.running_loss(running)
        faults.point("train_step")
        if distributed.any_rank(stop.requested):
            raise Interrupted(epoch - 1)
    summary = metrics.summarize(distributed.gather_cat(torch.cat(counts)))
    total = distributed.all_sum(torch.stack([loss_sum, loss_sum.new_tensor(seen)])).tolist()
    return {"loss": total[0] / total[1], "dice": summary["dice"], "iou": summary["iou"]}


def validate(parts: Parts, threshold: float, epoch: int, progress: RunProgress | None = None) -> dict:
    wrap = progress.evaluation("validation", len(parts.val_loader)) if progress is not None else None
    val = evaluate(parts.model, parts.val_loader, parts.device, threshold=threshold,
                   loss_fn=parts.loss_fn, amp_dtype=parts.amp_dtype,
                   channels_last=parts.channels_last, volumes=parts.val_volumes,
                   progress=wrap).summary()
    if not math.isfinite(val["loss"]):
        raise TrainingDiverged(f"the validation loss is {val['loss']} in epoch {epoch}; "
                               "lower optimizer.lr or set trainer.grad_clip=1.0")
    return val


def fit(cfg: DictConfig, s: Train, run: RunDir, resuming: bool) -> dict:
    """Train, validate and test one configuration in `run`; returns the metrics.json record."""
    started = time.time()
    t = s.trainer
    ctx = distributed.current()
    run = distributed.writer(run)  # rank 0 writes; other ranks read what it wrote
    config = OmegaConf.to_container(cfg, resolve=True)
    threshold, native = s.eval.threshold, s.eval.native_resolution
    pixel_spacing(cfg, native)  # a bad spacing fails before training, not at its end
    parts = build(cfg, s, run, resuming)

    state = TrainState()
    if resuming:
        saved = run.load_checkpoint("last", map_location=parts.device)
        distributed.check_resume(saved)
        parts.load_state_dict(saved)
        state.load_state_dict(saved)
        set_rng_state(saved["rng"])
        state.stopped_early = state.stopped_early or parts.early.should_stop
        run.write_history(state.history)  # last.pt is the record: a kill may have beaten the csv
        log.info("resuming %s after epoch %d", run.path, state.epoch)
    else:  # an interrupted first epoch is resumable too
        run.save_checkpoint("last", {**parts.state_dict(), **state.state_dict(), "rng": rng_state(),
                                     "config": config, "world_size": ctx.world_size})

    # Trackers get a resumed run's finished epochs (history.csv, rewritten from last.pt above)
    # again where a kill kept them from it.
    loggers = build_loggers(cfg, run, start_epoch=state.epoch + 1) if ctx.is_main else Loggers([])
    progress = RunProgress(  # only rank 0 shows a bar (the others' log lines are dropped)
        first_epoch=state.epoch + 1, max_epochs=t.max_epochs, train_steps=len(parts.train_loader),
        val_steps=len(parts.val_loader), test_steps=test_steps(parts, native),
        bar=ctx.is_main and (sys.stderr.isatty() if t.progress_bar == "auto" else bool(t.progress_bar)),
        interval_s=t.progress_interval_s, every_steps=t.progress_every_steps)
    try:
        with StopSignal() as stop:
            for epoch in range(state.epoch + 1, t.max_epochs + 1):
                if state.stopped_early:
                    break
                epoch_start = time.time()
                epoch_seed = derive_seed(s.seed, epoch)
                parts.sampler.set_seed(epoch_seed)
                torch.manual_seed(epoch_seed)  # dropout and anything else drawn from torch
                set_epoch(parts.loss_fn, epoch, t.max_epochs)  # losses with a weight schedule
                # The LR of the epoch's first step: per-epoch schedules hold it all epoch, and
                # per-step ones would otherwise report the LR after the last step (0 for poly).
                lr = parts.optimizer.param_groups[0]["lr"]
                train = train_one_epoch(
                    parts.train_model, parts.train_loader, parts.loss_fn, parts.optimizer,
                    parts.schedule, parts.scaler, device=parts.device, amp_dtype=parts.amp_dtype,
                    grad_clip=t.grad_clip, channels_last=parts.channels_last, epoch=epoch,
                    progress=progress, log_every=t.log_every_steps, stop=stop,
                    accumulate=t.accumulate_grad_batches)
                val = validate(parts, threshold, epoch, progress)
                row = {"epoch": epoch, "lr": lr, "train_loss": train["loss"], "train_dice": train["dice"],
                       "train_iou": train["iou"], "val_loss": val["loss"], "val_dice": val["dice"],
                       "val_iou": val["iou"], "val_dice_micro": val["dice_micro"],
                       "val_iou_micro": val["iou_micro"], "val_precision": val["precision"],
                       "val_recall": val["recall"]}
                if "volume_dice" in val:
                    row["val_volume_dice"] = val["volume_dice"]
                    row["val_volume_dice_median"] = val["volume_dice_median"]
                # One value, read alike by the schedule, early stopping and the best checkpoint.
                value = row[parts.monitor.metric]
                parts.schedule.step_epoch(row)
                parts.early.step(value, epoch)
                improved = parts.monitor.better(value, state.best_value)
                if improved:
                    state.best_value, state.best_epoch = value, epoch
                state.train_seconds += time.time() - epoch_start
                row["seconds"] = round(time.time() - epoch_start, 3)
                state.history.append(row)
                state.epoch = epoch
                state.stopped_early = parts.early.should_stop
                if improved:
                    run.save_checkpoint("best", {"epoch": epoch, "model": parts.model.state_dict(),
                                                 "val": val, "config": config})
                run.save_checkpoint("last", {**parts.state_dict(), **state.state_dict(),
                                             "rng": rng_state(), "config": config,
                                             "world_size": ctx.world_size})
                run.write_history(state.history)
                loggers.log_epoch(row)
                shown = "" if parts.monitor.metric in ("val_loss", "val_dice", "val_iou") else \
                    f"  {parts.monitor.metric} {value:.4f}"
                log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  val_dice %.4f  val_iou %.4f%s  "
                         "lr %.2e  %.1fs%s", epoch, t.max_epochs, train["loss"], val["loss"],
                         val["dice"], val["iou"], shown, lr, row["seconds"],
                         "  *best*" if improved else "")
                if state.stopped_early:
                    log.info("early stopping: %s has not improved by %g for %d epochs "
                             "(best %.4f at epoch %d)", parts.monitor.metric, parts.early.min_delta,
                             parts.early.patience, parts.early.best, parts.early.best_epoch)
                if distributed.any_rank(stop.requested):
                    raise Interrupted(epoch)
        loggers.flush()
        result = test_best(cfg, s, run, parts, state, progress)
    except BaseException as err:
        progress.close()
        loggers.close("interrupted" if isinstance(err, (Interrupted, KeyboardInterrupt)) else "failed")
        raise
    finally:
        end_workers(parts.train_loader)
    progress.close()
    if not ctx.is_main:  # rank 0 records the test
        return result
    result["wall_seconds"] = round(time.time() - started, 2)
    loggers.log_test(result, state.best_epoch)
    run.write_metrics(result)  # metrics.json marks the run finished: every record comes before it
    loggers.log_artifacts()  # the trackers' copies of the run's files, metrics.json among them
    loggers.close()
    log.info("test (best epoch %d): %s", state.best_epoch, metric_line(result["test"]))
    return result


def test_steps(parts: Parts, native: bool) -> int:
    """Batches of the final test (one image per batch when scored at native resolution)."""
    n = len(parts.data["test"])
    return n if native else math.ceil(n / parts.eval_batch)


def test_best(cfg: DictConfig, s: Train, run: RunDir, parts: Parts, state: TrainState,
              progress: RunProgress | None = None) -> dict:
    """Test once, with the checkpoint chosen on validation; the metrics.json record."""
    from segbench.viz import plot_curves

    ctx = distributed.current()
    if ctx.is_main:
        plot_curves(state.history, run / "curves.png", state.best_epoch,
                    title=f"{run.name()}: {cfg.model.name} ({cfg.model.get('encoder', '-')}), "
                          f"seed {s.seed}, best epoch {state.best_epoch}")
    distributed.barrier()  # best.pt, written by rank 0, is complete for every rank
    best = run.load_checkpoint("best", map_location=parts.device)
    parts.model.load_state_dict(best["model"])
    e = s.eval
    record = evaluate_split(
        Subject(parts.model, parts.device, parts.amp_dtype, parts.channels_last),
        Split(cfg, parts.splits["test"], "test", parts.data["test"]), e, run.path,
        Runtime(parts.eval_batch, parts.workers, shard=ctx.enabled,
                progress=progress.evaluation("test", test_steps(parts, e.native_resolution))
                if progress is not None else None))
    device_names = distributed.gather_objects(device_name(parts.device))
    if not ctx.is_main:
        return {}
    latency = (inference_latency(parts.model, input_shape(cfg), parts.device, parts.amp_dtype)
               if e.latency else None)
    return {
        "test": record.pop("test"),
        "val_best": best["val"],
        "best_epoch": state.best_epoch,
        "monitor": {"metric": parts.monitor.metric, "mode": parts.monitor.mode,
                    "best": state.best_value},
        "epochs_run": len(state.history),
        "stopped_early": state.stopped_early,
        **record,  # how the test was made (threshold, TTA, rules, units)
        "model": {"name": cfg.model.name, **parts.facts, "latency_ms": latency},
        "seed": s.seed,
        "split_sizes": {k: len(v) for k, v in parts.splits.items()},
        "train_seconds": round(state.train_seconds, 2),
        "device": str(parts.device),
        "device_name": device_name(parts.device),
        "world_size": ctx.world_size,
        "device_names": device_names,
        "global_batch_size": distributed.global_batch(s.trainer.batch_size,
                                                      s.trainer.accumulate_grad_batches),
        "precision": str(parts.amp_dtype).replace("torch.", "") if parts.amp_dtype else "fp32",
        "versions": versions(),
    }


def versions() -> dict:
    import albumentations
    import hydra
    import numpy
    import segmentation_models_pytorch

    return {"segbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "segmentation_models_pytorch": segmentation_models_pytorch.__version__,
            "albumentations": albumentations.__version__, "hydra": hydra.__version__,
            "numpy": numpy.__version__, "platform": platform.platform()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() if device.type == "cpu" else device.type
