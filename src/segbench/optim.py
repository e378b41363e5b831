"""Optimizers and learning-rate schedules from the `optimizer` and `scheduler` config groups.

Schedules step per epoch except where `interval = "step"` (warm-up cosine, onecycle, poly), and
the plateau schedule reads validation IoU. Every schedule's state_dict holds plain values only,
so it lives in last.pt and loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from segbench import SegbenchError

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "radam": torch.optim.RAdam,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
}


def build_optimizer(cfg: DictConfig, params) -> torch.optim.Optimizer:
    spec = OmegaConf.to_container(cfg, resolve=True)
    name = spec.pop("name")
    if name not in OPTIMIZERS:
        raise SegbenchError(f"unknown optimizer {name!r}; available: {', '.join(sorted(OPTIMIZERS))}")
    if float(spec.get("lr", 0)) <= 0:
        raise SegbenchError(f"optimizer.lr must be > 0, got {spec.get('lr')}")
    if "betas" in spec:
        spec["betas"] = tuple(spec["betas"])
    try:
        return OPTIMIZERS[name](params, **spec)
    except (TypeError, ValueError) as err:
        raise SegbenchError(f"optimizer {name}: {err}") from None


@dataclass
class Schedule:
    """A torch LR scheduler and when to step it: 'epoch' (after validation) or 'step'."""

    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None
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


SCHEDULERS = ("cosine", "none", "onecycle", "plateau", "poly", "step")


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, *, max_epochs: int,
                    steps_per_epoch: int) -> Schedule:
    spec = OmegaConf.to_container(cfg, resolve=True)
    name = spec.pop("name")
    lr = optimizer.param_groups[0]["lr"]
    sched = torch.optim.lr_scheduler
    if name == "none":
        return Schedule(None)
    if name == "plateau":
        return Schedule(
            sched.ReduceLROnPlateau(optimizer, mode="max", factor=spec.get("factor", 0.5),
                                    patience=spec.get("patience", 3), min_lr=spec.get("min_lr", 0.0)),
            monitor="val_iou")
    if name == "cosine":
        warmup = int(spec.get("warmup_epochs", 0) * steps_per_epoch)
        floor = min(1.0, spec.get("min_lr", 0.0) / lr)
        fn = WarmupCosine(warmup, max_epochs * steps_per_epoch, floor)
        return Schedule(sched.LambdaLR(optimizer, fn), interval="step")
    if name == "step":
        return Schedule(sched.StepLR(optimizer, step_size=spec.get("step_size", 30),
                                     gamma=spec.get("gamma", 0.1)))
    total = max_epochs * steps_per_epoch
    if name == "poly":
        if float(spec.get("power", 0.9)) <= 0:
            raise SegbenchError(f"scheduler.power must be > 0, got {spec.get('power')}")
        floor = min(1.0, spec.get("min_lr", 0.0) / lr)
        return Schedule(sched.LambdaLR(optimizer, Poly(total, float(spec.get("power", 0.9)), floor)),
                        interval="step")
    if name == "onecycle":
        pct = float(spec.get("pct_start", 0.3))
        if not 0 < pct < 1:
            raise SegbenchError(f"scheduler.pct_start must be in (0, 1), got {pct}")
        cycle_momentum = bool(spec.get("cycle_momentum", False))
        group = optimizer.param_groups[0]
        if cycle_momentum and "momentum" not in group and "betas" not in group:
            raise SegbenchError("scheduler.cycle_momentum=true needs an optimizer with momentum "
                                "or betas; set scheduler.cycle_momentum=false")
        try:
            return Schedule(sched.OneCycleLR(
                optimizer, max_lr=lr, total_steps=total, pct_start=pct,
                anneal_strategy=str(spec.get("anneal_strategy", "cos")),
                div_factor=float(spec.get("div_factor", 25.0)),
                final_div_factor=float(spec.get("final_div_factor", 1.0e4)),
                cycle_momentum=cycle_momentum,
                base_momentum=float(spec.get("base_momentum", 0.85)),
                max_momentum=float(spec.get("max_momentum", 0.95))), interval="step")
        except ValueError as err:
            raise SegbenchError(f"scheduler onecycle: {err}") from None
    raise SegbenchError(f"unknown scheduler {name!r}; available: {', '.join(SCHEDULERS)}")
