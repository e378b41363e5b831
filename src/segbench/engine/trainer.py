"""The one training loop every configuration runs through.

fit(): build data, model, loss, optimizer and schedule from the config; train an epoch, validate,
step the schedule, checkpoint (last.pt every epoch, best.pt on a new best validation IoU), stop
early when validation IoU stops improving; then test best.pt once and write the run's artifacts.

Every epoch's batch order, augmentation and dropout are seeded from (seed, epoch) alone, and
last.pt holds everything else (weights, optimizer, schedule, scaler, early stopping, history),
so a run resumed from last.pt finishes with the same history as one never interrupted.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from segbench import SegbenchError, __version__, metrics
from segbench.data import build_datasets, list_splits, native_masks
from segbench.data.dataset import SeededShuffleSampler
from segbench.data.splits import write_split_file
from segbench.data.verify import quick_check
from segbench.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from segbench.engine.device import (
    autocast,
    autocast_dtype,
    derive_seed,
    resolve_device,
    seed_everything,
    set_determinism,
)
from segbench.engine.early_stopping import EarlyStopping
from segbench.engine.evaluate import (
    check_threshold,
    eval_loader,
    evaluate,
    evaluation_record,
    metric_line,
    pixel_spacing,
    test_split,
)
from segbench.losses import build_loss, set_epoch
from segbench.models import build_model
from segbench.models.info import model_facts
from segbench.optim import build_optimizer, build_scheduler
from segbench.sweeps import register_resolvers

log = logging.getLogger(__name__)
register_resolvers()  # a parallel launcher's worker resolves job dirs after importing this

# Config keys a resumed run may change; anything else must match the interrupted run.
RESUMABLE_CHANGES = ("trainer.resume", "trainer.max_epochs", "trainer.device", "trainer.num_workers",
                     "trainer.progress_bar", "trainer.log_every_steps", "paths.",
                     "eval.surface_", "eval.native_resolution")


class TrainingDiverged(SegbenchError):
    pass


class Interrupted(Exception):
    pass


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


def train_task(cfg: DictConfig) -> dict | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if cfg.trainer.resume == "auto":
        # A sweep re-run skips its finished jobs and resumes its interrupted ones.
        cfg.trainer.resume = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        return fit(cfg, run_dir)
    except SegbenchError as err:
        _mark_failed(run_dir, err)
        raise


def _mark_failed(run_dir: Path, err: Exception) -> None:
    """Record the error in status.json when this process was running the run (not for refusals
    to touch another run's directory), so that `segbench report` can list the failure."""
    try:
        status = json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return
    if status.get("state") == "running" and status.get("pid") == os.getpid():
        _write_status(run_dir, "failed", error=str(err))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_changes(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not k.startswith(RESUMABLE_CHANGES)]


def _write_status(run_dir: Path, state: str, **info) -> None:
    (run_dir / "status.json").write_text(json.dumps({"state": state, **info}, indent=1))


def _write_history(path: Path, history: list[dict]) -> None:
    if not history:
        return
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def _versions() -> dict:
    import albumentations
    import hydra
    import numpy
    import segmentation_models_pytorch

    return {"segbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "segmentation_models_pytorch": segmentation_models_pytorch.__version__,
            "albumentations": albumentations.__version__, "hydra": hydra.__version__,
            "numpy": numpy.__version__, "platform": platform.platform()}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() if device.type == "cpu" else device.type


def _num_workers(spec, device: torch.device) -> int:
    if spec in (None, "auto"):
        return min(8, max(1, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 0
    if int(spec) < 0:
        raise SegbenchError(f"trainer.num_workers must be >= 0 or auto, got {spec}")
    return int(spec)


def train_one_epoch(model, loader, loss_fn, optimizer, schedule, scaler, *, device, amp_dtype,
                    grad_clip, channels_last, epoch, progress, log_every, stop) -> dict:
    model.train()
    loss_sum = torch.zeros((), device=device)
    seen = 0
    counts = []
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, dynamic_ncols=True)
    for step, (images, masks, _) in enumerate(bar, 1):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target = masks.to(device, non_blocking=True).float()
        with autocast(device, amp_dtype):
            logits = model(images)
        loss = loss_fn(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
        scaler.step(optimizer)
        scaler.update()
        schedule.step_batch()
        loss_sum += loss.detach() * len(images)
        seen += len(images)
        counts.append(metrics.confusion(torch.sigmoid(logits.detach().float()), target))
        # The one host sync of the loop, every `log_every` steps: running loss and NaN check.
        if step % log_every == 0 or step == len(loader):
            running = loss_sum.item() / seen
            if not math.isfinite(running):
                raise TrainingDiverged(
                    f"the training loss became {running} in epoch {epoch} (by step {step}). "
                    "Lower optimizer.lr, set trainer.grad_clip=1.0, or use trainer.precision=fp32; "
                    "checkpoints/last.pt holds the last good epoch"
                )
            bar.set_postfix(loss=f"{running:.4f}")
        if stop.requested:
            raise Interrupted
    summary = metrics.summarize(torch.cat(counts))
    return {"loss": loss_sum.item() / seen, "dice": summary["dice"], "iou": summary["iou"]}


def fit(cfg: DictConfig, run_dir: Path) -> dict | None:
    started = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    resume = cfg.trainer.resume
    if resume not in (True, False, None):
        raise SegbenchError(f"trainer.resume={resume!r}; use true, false or a run directory")
    if (run_dir / "metrics.json").is_file() and resume:
        log.info("skipping %s: this run already finished (metrics.json is there)", run_dir)
        return json.loads((run_dir / "metrics.json").read_text())
    if last_path.is_file() and not resume:
        raise SegbenchError(
            f"{run_dir} already holds a run (checkpoints/last.pt); continue it with "
            f"`segbench train trainer.resume={run_dir}` or choose another hydra.run.dir"
        )
    resuming = bool(resume) and last_path.is_file()
    if resume and not resuming:
        log.info("starting %s (no earlier attempt to resume there)", run_dir)

    config = OmegaConf.to_container(cfg, resolve=True)
    if resuming and (run_dir / "config.yaml").is_file():
        changes = _config_changes(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")), config)
        if changes:
            raise SegbenchError(
                "the config differs from the run being resumed, which would mix two experiments: "
                + "; ".join(changes[:8]) + ". Resume with the run's own overrides"
            )
    OmegaConf.save(config, run_dir / "config.yaml")
    _write_status(run_dir, "running", pid=os.getpid())

    t = cfg.trainer
    device = resolve_device(t.device)
    amp_dtype = autocast_dtype(device, t.precision)
    set_determinism(bool(t.deterministic), device)
    seed = int(cfg.seed)
    seed_everything(seed)
    channels_last = t.channels_last is True or (t.channels_last == "auto" and device.type == "cuda")
    max_epochs = int(t.max_epochs)
    if max_epochs < 1 or int(t.batch_size) < 1:
        raise SegbenchError("trainer.max_epochs and trainer.batch_size must be >= 1")
    native = bool(cfg.eval.get("native_resolution", False))
    threshold, spacing = check_threshold(cfg.eval.threshold), pixel_spacing(cfg, native)  # fail before training

    # The model first: a configuration it cannot take fails before any data is read.
    model = build_model(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    # Data: splits are written before any training so that they can be audited.
    splits = list_splits(cfg)
    quick_check(cfg, splits)  # the cheap part of `segbench verify`: files there, one decodes
    write_split_file(run_dir / "split.json", splits,
                     {"dataset": cfg.dataset.name, "split_seed": int(cfg.dataset.get("split_seed", 0))})
    data = build_datasets(cfg, splits, Path(cfg.paths.cache))
    log.info("data: %s  train %d  val %d  test %d  at %dx%d", cfg.dataset.name, len(splits["train"]),
             len(splits["val"]), len(splits["test"]), cfg.resolution.height, cfg.resolution.width)
    workers = _num_workers(t.num_workers, device)
    sampler = SeededShuffleSampler(len(data["train"]))
    train_loader = DataLoader(data["train"], batch_size=int(t.batch_size), sampler=sampler,
                              num_workers=workers, pin_memory=device.type == "cuda",
                              persistent_workers=workers > 0, drop_last=len(data["train"]) > int(t.batch_size))
    eval_batch = int(t.eval_batch_size or 2 * t.batch_size)
    val_loader = eval_loader(data["val"], eval_batch, device, workers)

    loss_fn = build_loss(cfg.loss, {"train_masks": data["train"].masks}).to(device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    schedule = build_scheduler(cfg.scheduler, optimizer, max_epochs=max_epochs,
                               steps_per_epoch=len(train_loader))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    early = EarlyStopping(int(t.early_stopping.patience), float(t.early_stopping.min_delta))
    facts = model_facts(model, (int(cfg.model.get("in_channels", 3)), int(cfg.resolution.height),
                                int(cfg.resolution.width)))
    log.info("model: %s (%s, %s)  %s parameters  device %s%s", cfg.model.name,
             cfg.model.get("encoder", "-"), cfg.activation.name, f"{facts['params']:,}", device,
             f"  autocast {amp_dtype}" if amp_dtype else "")

    history: list[dict] = []
    best_iou, best_epoch, start_epoch, train_seconds = -math.inf, 0, 1, 0.0
    if resuming:
        state = load_checkpoint(last_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        early.load_state_dict(state["early_stopping"])
        set_rng_state(state["rng"])
        history = list(state["history"])
        best_iou, best_epoch = state["best_iou"], state["best_epoch"]
        start_epoch, train_seconds = state["epoch"] + 1, state["train_seconds"]
        log.info("resuming %s after epoch %d", run_dir, state["epoch"])

    def snapshot(epoch: int) -> dict:
        return {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": schedule.state_dict(), "scaler": scaler.state_dict(),
                "early_stopping": early.state_dict(), "rng": rng_state(), "history": history,
                "best_iou": best_iou, "best_epoch": best_epoch, "train_seconds": train_seconds,
                "config": config}

    if not resuming:
        save_checkpoint(snapshot(0), last_path)  # an interrupted first epoch is resumable too

    writer = None
    if cfg.logger.get("tensorboard"):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_epoch)
    progress = sys.stderr.isatty() if t.progress_bar == "auto" else bool(t.progress_bar)
    stopped_early = early.should_stop and start_epoch > 1
    epoch = start_epoch - 1
    try:
        with StopSignal() as stop:
            for epoch in range(start_epoch, max_epochs + 1):
                if stopped_early:
                    break
                epoch_start = time.time()
                epoch_seed = derive_seed(seed, epoch)
                sampler.set_seed(epoch_seed)
                torch.manual_seed(epoch_seed)  # dropout and anything else drawn from torch
                set_epoch(loss_fn, epoch, max_epochs)  # losses with a weight schedule
                # The LR of the epoch's first step: per-epoch schedules hold it all epoch, and
                # per-step ones would otherwise report the LR after the last step (0 for poly).
                lr = optimizer.param_groups[0]["lr"]
                train = train_one_epoch(
                    model, train_loader, loss_fn, optimizer, schedule, scaler, device=device,
                    amp_dtype=amp_dtype, grad_clip=t.grad_clip, channels_last=channels_last,
                    epoch=epoch, progress=progress, log_every=max(1, int(t.log_every_steps)), stop=stop)
                val = evaluate(model, val_loader, device, threshold=threshold,
                               loss_fn=loss_fn, amp_dtype=amp_dtype, channels_last=channels_last).summary()
                if not math.isfinite(val["loss"]):
                    raise TrainingDiverged(f"the validation loss is {val['loss']} in epoch {epoch}; "
                                           "lower optimizer.lr or set trainer.grad_clip=1.0")
                row = {"epoch": epoch, "lr": lr, "train_loss": train["loss"], "train_dice": train["dice"],
                       "train_iou": train["iou"], "val_loss": val["loss"], "val_dice": val["dice"],
                       "val_iou": val["iou"], "val_dice_micro": val["dice_micro"],
                       "val_iou_micro": val["iou_micro"], "val_precision": val["precision"],
                       "val_recall": val["recall"]}
                schedule.step_epoch(row)
                early.step(val["iou"], epoch)
                improved = val["iou"] > best_iou
                if improved:
                    best_iou, best_epoch = val["iou"], epoch
                train_seconds += time.time() - epoch_start
                row["seconds"] = round(time.time() - epoch_start, 3)
                history.append(row)
                if improved:
                    save_checkpoint({"epoch": epoch, "model": model.state_dict(), "val": val,
                                     "config": config}, best_path)
                save_checkpoint(snapshot(epoch), last_path)
                _write_history(run_dir / "history.csv", history)
                if writer is not None:
                    for key, value in row.items():
                        if key not in ("epoch", "seconds"):
                            writer.add_scalar(key.replace("_", "/", 1), value, epoch)
                    writer.flush()
                log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  val_dice %.4f  val_iou %.4f  "
                         "lr %.2e  %.1fs%s", epoch, max_epochs, train["loss"], val["loss"], val["dice"],
                         val["iou"], lr, row["seconds"], "  *best*" if improved else "")
                if early.should_stop:
                    stopped_early = True
                    log.info("early stopping: validation IoU has not improved by %g for %d epochs "
                             "(best %.4f at epoch %d)", early.min_delta, early.patience, early.best,
                             early.best_epoch)
                    break
    except Interrupted:
        _write_status(run_dir, "interrupted", epoch=epoch - 1)
        log.warning("interrupted during epoch %d; checkpoints/last.pt holds epoch %d. Resume with:\n"
                    "  segbench train trainer.resume=%s", epoch, epoch - 1, run_dir)
        raise SystemExit(130) from None
    except TrainingDiverged as err:
        _write_status(run_dir, "failed", epoch=epoch, error=str(err))
        raise
    finally:
        if writer is not None:
            writer.flush()

    # Test once, with the checkpoint chosen on validation.
    from segbench.viz import plot_curves

    plot_curves(history, run_dir / "curves.png", best_epoch)
    best = load_checkpoint(best_path, map_location=device)
    model.load_state_dict(best["model"])
    test = test_split(model, data["test"], device, out_dir=run_dir,
                      threshold=threshold, tta=bool(cfg.eval.tta),
                      batch_size=eval_batch, amp_dtype=amp_dtype,
                      num_predictions=int(cfg.eval.num_predictions),
                      groups=[s.group for s in splits["test"]] if any(s.group for s in splits["test"]) else None,
                      channels_last=channels_last, num_workers=workers,
                      surface_metrics=bool(cfg.eval.get("surface_metrics", False)),
                      pixel_spacing=spacing, surface_workers=cfg.eval.get("surface_workers", "auto"),
                      native_masks=native_masks(cfg, splits["test"]) if native else None)
    result = {
        "test": test,
        "val_best": best["val"],
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        **evaluation_record(threshold, bool(cfg.eval.tta), bool(cfg.eval.get("surface_metrics", False)),
                            spacing, native),
        "model": {"name": cfg.model.name, **facts},
        "seed": seed,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.time() - started, 2),
        "device": str(device),
        "device_name": _device_name(device),
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "versions": _versions(),
    }
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    if writer is not None:
        for key in ("dice", "iou", "dice_micro", "iou_micro"):
            writer.add_scalar(f"test/{key}", test[key], best_epoch)
        writer.close()
    _write_status(run_dir, "finished", epoch=len(history))
    log.info("test (best epoch %d): %s", best_epoch, metric_line(test))
    log.info("run directory: %s", run_dir)
    return result
