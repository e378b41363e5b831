"""Losses on logits (N x 1 x H x W) against binary float targets, from the `loss` config group.

segmentation-models-pytorch's losses are used where they exist; what is written here is what
smp does not provide. Every loss takes raw logits: models never end in an activation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from segbench import SegbenchError

_LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def wrap(fn):
        _LOSSES[name] = fn
        return fn
    return wrap


def available_losses() -> list[str]:
    return sorted(_LOSSES)


class Weighted(nn.Module):
    """A weighted sum of losses, e.g. 0.5 BCE + 0.5 Dice."""

    def __init__(self, terms: list[tuple[float, nn.Module]]):
        super().__init__()
        self.weights = [w for w, _ in terms]
        self.terms = nn.ModuleList(m for _, m in terms)

    def forward(self, logits, target):
        return sum(w * m(logits, target) for w, m in zip(self.weights, self.terms, strict=True))


@register("bce")
def bce(**_):
    return nn.BCEWithLogitsLoss()


@register("dice")
def dice(smooth: float = 1.0, **_):
    from segmentation_models_pytorch.losses import DiceLoss

    return DiceLoss(mode="binary", from_logits=True, smooth=float(smooth))


@register("bce_dice")
def bce_dice(bce_weight: float = 0.5, dice_weight: float = 0.5, smooth: float = 1.0, **_):
    return Weighted([(float(bce_weight), bce()), (float(dice_weight), dice(smooth=smooth))])


def build_loss(cfg: DictConfig, context: dict | None = None) -> nn.Module:
    """The configured loss. `context` carries facts of the training data some losses need."""
    spec = OmegaConf.to_container(cfg, resolve=True)
    name = spec.pop("name")
    if name not in _LOSSES:
        raise SegbenchError(f"unknown loss {name!r}; available: {', '.join(available_losses())}")
    try:
        return _LOSSES[name](**spec, **(context or {}))
    except TypeError as err:
        raise SegbenchError(f"loss {name}: {err}") from None


def finite(loss: torch.Tensor) -> bool:
    return bool(torch.isfinite(loss).all())
