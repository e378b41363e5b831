"""Optimizers and learning-rate schedules from the `optimizer` and `scheduler` config groups.

Schedules step per epoch except where `interval = "step"` (warm-up cosine, onecycle, poly), and
the plateau schedule reads the run's monitored validation metric (trainer.monitor). Every
schedule's state_dict holds plain values only, so it lives in last.pt and loads with
torch.load(weights_only=True).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

import torch
from omegaconf import DictConfig, OmegaConf

from segbench import AUTO_UNRESOLVED, SegbenchError
from segbench.registry import Registry

OPTIMIZERS = Registry("optimizer")
for _name, _cls in {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                    "radam": torch.optim.RAdam, "rmsprop": torch.optim.RMSprop,
                    "sgd": torch.optim.SGD}.items():
    OPTIMIZERS.register(_name, _cls)


def list_optimizers() -> list[str]:
    return OPTIMIZERS.names()


def _spec(cfg) -> dict:
    """A config entry as a plain dict (a DictConfig resolved)."""
    if isinstance(cfg, DictConfig):
        return cast(dict, OmegaConf.to_container(cfg, resolve=True))
    return dict(cfg)


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    spec = _spec(cfg)
    lr = spec.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        raise SegbenchError(f"optimizer.lr={lr}: a learning rate is a number > 0, e.g. "
                            "optimizer.lr=1e-3")
    if "betas" in spec:
        spec["betas"] = tuple(spec["betas"])
    return OPTIMIZERS.build(spec, params=params)


@dataclass
class Schedule:
    """A torch LR scheduler and when to step it: 'epoch' (after validation) or 'step'."""

    scheduler: (torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
                | None)
    interval: str = "epoch"
    monitor: str | None = None  # history column the scheduler reads (plateau)

    def step_batch(self) -> None:
        if self.scheduler is not None and self.interval == "step":
            self.scheduler.step()

    def step_epoch(self, metrics: dict) -> None:
        if self.scheduler is None or self.interval != "epoch":
            return
        if self.monitor:
            self.scheduler.step(metrics[self.monitor])
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


class WarmupCosine:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine from 1 to `floor`."""

    def __init__(self, warmup: int, total: int, floor: float):
        self.warmup, self.total, self.floor = warmup, max(total, 1), floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Poly:
    """LR multiplier: (1 - step / total)^power, from 1 down to `floor` at the last step."""

    def __init__(self, total: int, power: float, floor: float):
        self.total, self.power, self.floor = max(total, 1), power, floor

    def __call__(self, step: int) -> float:
        progress = min(1.0, step / self.total)
        return self.floor + (1 - self.floor) * (1 - progress) ** self.power


SCHEDULERS = Registry("scheduler")


def list_schedulers() -> list[str]:
    return SCHEDULERS.names()


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, *, max_epochs: int,
                    steps_per_epoch: int, monitor: str = "val_iou", mode: str = "max") -> Schedule:
    """The configured schedule. Each factory takes the optimizer, the run's length, the metric
    the run monitors (a history column; the plateau schedule reads it) and its config's options;
    its defaults live in configs/scheduler/<name>.yaml only."""
    spec = _spec(cfg)
    if spec.get("name") == "auto":
        raise SegbenchError(AUTO_UNRESOLVED.format(group="scheduler"))
    return SCHEDULERS.build(spec, optimizer=optimizer,
                            context={"max_epochs": max_epochs, "steps_per_epoch": steps_per_epoch,
                                     "monitor": monitor, "mode": mode})


@SCHEDULERS.register("none")
def constant(optimizer) -> Schedule:
    return Schedule(None)


@SCHEDULERS.register("plateau")
def plateau(optimizer, factor: float, patience: int, min_lr: float, monitor: str,
            mode: Literal["min", "max"]) -> Schedule:
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=factor,
                                                       patience=patience, min_lr=min_lr)
    return Schedule(sched, monitor=monitor)


@SCHEDULERS.register("cosine")
def cosine(optimizer, max_epochs: int, steps_per_epoch: int, warmup_epochs: float,
           min_lr: float) -> Schedule:
    lr = optimizer.param_groups[0]["lr"]
    fn = WarmupCosine(int(warmup_epochs * steps_per_epoch), max_epochs * steps_per_epoch,
                      min(1.0, min_lr / lr))
    return Schedule(torch.optim.lr_scheduler.LambdaLR(optimizer, fn), interval="step")


@SCHEDULERS.register("step")
def step(optimizer, step_size: int, gamma: float) -> Schedule:
    return Schedule(torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma))


@SCHEDULERS.register("poly")
def poly(optimizer, max_epochs: int, steps_per_epoch: int, power: float,
         min_lr: float) -> Schedule:
    if float(power) <= 0:
        raise SegbenchError(f"scheduler.power must be > 0, got {power}")
    lr = optimizer.param_groups[0]["lr"]
    fn = Poly(max_epochs * steps_per_epoch, float(power), min(1.0, min_lr / lr))
    return Schedule(torch.optim.lr_scheduler.LambdaLR(optimizer, fn), interval="step")


Anneal = Literal["cos", "linear"]  # OneCycleLR's anneal_strategy


# Ten parameters: the optimizer (every scheduler factory's), the run's length (context) and the
# seven options of configs/scheduler/onecycle.yaml, whose keys the registry checks against them.
@SCHEDULERS.register("onecycle")
def onecycle(optimizer, max_epochs: int, steps_per_epoch: int, pct_start: float,
             anneal_strategy: Anneal, div_factor: float, final_div_factor: float,
             cycle_momentum: bool, base_momentum: float, max_momentum: float) -> Schedule:
    pct = float(pct_start)
    if not 0 < pct < 1:
        raise SegbenchError(f"scheduler.pct_start must be in (0, 1), got {pct}")
    group = optimizer.param_groups[0]
    if cycle_momentum and "momentum" not in group and "betas" not in group:
        raise SegbenchError("scheduler.cycle_momentum=true needs an optimizer with momentum "
                            "or betas; set scheduler.cycle_momentum=false")
    try:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=group["lr"], total_steps=max_epochs * steps_per_epoch,
            pct_start=pct, anneal_strategy=cast(Anneal, str(anneal_strategy)),
            div_factor=float(div_factor),
            final_div_factor=float(final_div_factor), cycle_momentum=bool(cycle_momentum),
            base_momentum=float(base_momentum), max_momentum=float(max_momentum))
    except ValueError as err:
        raise SegbenchError(f"scheduler onecycle: {err}") from None
    return Schedule(sched, interval="step")
