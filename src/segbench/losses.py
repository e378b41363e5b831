"""Losses on logits (N x 1 x H x W) against binary float targets, from the `loss` config group.

segmentation-models-pytorch's losses are used where they exist (Dice, Jaccard, focal, Tversky,
Lovasz); what is written here is what smp does not provide (weighted BCE from the data,
focal Tversky with a finite gradient at a perfect prediction, log-cosh Dice, the boundary and
shape-aware distance losses). Every loss takes raw logits: models never end in an activation.
Each configs/loss/<name>.yaml states its formula and parameters.

Some losses need facts of the training data or of the schedule:
- `build_loss(cfg, context)`: context entries (e.g. `train_masks`, the training masks as a uint8
  array) are offered to every loss factory; a factory takes what it needs and ignores the rest.
- `set_epoch(loss, epoch, max_epochs)`: called by the trainer before each epoch; reaches every
  sub-module with a `set_epoch` method (the boundary loss's weight schedule).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from segbench import SegbenchError
from segbench.distance import signed_distance
from segbench.registry import Registry

log = logging.getLogger(__name__)

LOSSES = Registry("loss")
register = LOSSES.register


def list_losses() -> list[str]:
    return LOSSES.names()


class Weighted(nn.Module):
    """A weighted sum of losses, e.g. 0.5 BCE + 0.5 Dice."""

    def __init__(self, terms: list[tuple[float, nn.Module]]):
        super().__init__()
        self.weights = [w for w, _ in terms]
        self.terms = nn.ModuleList(m for _, m in terms)

    def forward(self, logits, target):
        return sum(w * m(logits, target) for w, m in zip(self.weights, self.terms, strict=True))


@register("bce")
def bce():
    return nn.BCEWithLogitsLoss()


def foreground_share(masks) -> float:
    """Share of foreground pixels (value > 0) in an (N, H, W) mask array, read in chunks so that
    a memory-mapped array is never loaded whole."""
    masks = np.asarray(masks) if not hasattr(masks, "shape") else masks
    total = int(np.prod(masks.shape))
    if total == 0:
        return 0.0
    fg = sum(int(np.count_nonzero(masks[i:i + 64])) for i in range(0, len(masks), 64))
    return fg / total


@register("weighted_bce")
def weighted_bce(pos_weight, train_masks=None):
    if pos_weight in ("auto", None):
        if train_masks is None:
            raise SegbenchError("loss weighted_bce with pos_weight=auto needs the training masks; "
                                "set loss.pos_weight=<number> when building the loss by hand")
        share = foreground_share(train_masks)
        if not 0 < share < 1:
            raise SegbenchError(
                f"loss weighted_bce: the training masks are {share:.0%} foreground, so no "
                "positive weight balances them; set loss.pos_weight=<number> or use loss=bce")
        pos_weight = (1 - share) / share
        log.info("weighted_bce: training masks are %.2f%% foreground -> pos_weight %.3f",
                 100 * share, pos_weight)
    if not float(pos_weight) > 0:
        raise SegbenchError(f"loss.pos_weight must be > 0 or auto, got {pos_weight}")
    return nn.BCEWithLogitsLoss(pos_weight=torch.tensor([float(pos_weight)]))


@register("dice")
def dice(smooth: float):
    from segmentation_models_pytorch.losses import DiceLoss

    return DiceLoss(mode="binary", from_logits=True, smooth=float(smooth))


@register("bce_dice")
def bce_dice(bce_weight: float, dice_weight: float, smooth: float):
    return Weighted([(float(bce_weight), bce()), (float(dice_weight), dice(smooth=smooth))])


@register("jaccard")
def jaccard(smooth: float):
    from segmentation_models_pytorch.losses import JaccardLoss

    return JaccardLoss(mode="binary", from_logits=True, smooth=float(smooth))


@register("focal")
def focal(alpha: float | None, gamma: float):
    from segmentation_models_pytorch.losses import FocalLoss

    gamma = float(gamma)
    if not (gamma == 0 or gamma >= 1):
        # (1 - p_t)^gamma has an infinite derivative at p_t = 1 when 0 < gamma < 1.
        raise SegbenchError(f"loss.gamma={gamma}: use 0 or a value >= 1 (0 < gamma < 1 gives an "
                            "infinite gradient on confidently right pixels)")
    if alpha is not None and not 0 <= float(alpha) <= 1:
        raise SegbenchError(f"loss.alpha must be in [0, 1] or null, got {alpha}")
    return FocalLoss(mode="binary", alpha=None if alpha is None else float(alpha), gamma=gamma)


def _check_tversky(alpha, beta) -> tuple[float, float]:
    alpha, beta = float(alpha), float(beta)
    if alpha < 0 or beta < 0 or alpha + beta <= 0:
        raise SegbenchError(f"loss.alpha and loss.beta must be >= 0 and not both 0, got {alpha}, {beta}")
    return alpha, beta


@register("tversky")
def tversky(alpha: float, beta: float, smooth: float):
    from segmentation_models_pytorch.losses import TverskyLoss

    alpha, beta = _check_tversky(alpha, beta)
    return TverskyLoss(mode="binary", from_logits=True, alpha=alpha, beta=beta, smooth=float(smooth))


class FocalTversky(nn.Module):
    """(1 - TI)^(1/gamma) (Abraham & Khan 2019) on smp's Tversky loss 1 - TI.

    smp's own `gamma` raises 1 - TI to gamma directly, and its derivative is infinite where
    1 - TI = 0 (a perfect batch, or an all-empty batch that smp scores 0) when the exponent is
    below 1: that point is taken out of the power here, so the gradient stays finite (0).
    """

    def __init__(self, alpha: float, beta: float, gamma: float, smooth: float):
        super().__init__()
        from segmentation_models_pytorch.losses import TverskyLoss

        self.tversky = TverskyLoss(mode="binary", from_logits=True, alpha=alpha, beta=beta,
                                   smooth=smooth)
        self.exponent = 1.0 / gamma

    def forward(self, logits, target):
        loss = self.tversky(logits, target)
        positive = loss > 1e-12
        safe = torch.where(positive, loss, torch.ones_like(loss))
        return torch.where(positive, safe ** self.exponent, torch.zeros_like(loss))


@register("focal_tversky")
def focal_tversky(alpha: float, beta: float, gamma: float, smooth: float):
    alpha, beta = _check_tversky(alpha, beta)
    if not float(gamma) > 0:
        raise SegbenchError(f"loss.gamma must be > 0 (the paper uses 1..3), got {gamma}")
    return FocalTversky(alpha, beta, float(gamma), float(smooth))


class LogCosh(nn.Module):
    """log(cosh(loss)) of an inner loss (Jadon 2020: log-cosh Dice)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, logits, target):
        x = self.inner(logits, target)
        # log(cosh(x)) = |x| + log1p(exp(-2|x|)) - log 2, without overflow for large |x|.
        return x.abs() + torch.log1p(torch.exp(-2 * x.abs())) - math.log(2.0)


@register("log_cosh_dice")
def log_cosh_dice(smooth: float):
    return LogCosh(dice(smooth=smooth))


@register("lovasz")
def lovasz(per_image: bool):
    from segmentation_models_pytorch.losses import LovaszLoss

    return LovaszLoss(mode="binary", per_image=bool(per_image), from_logits=True)


def _diagonal(target: torch.Tensor) -> float:
    return math.hypot(target.shape[-2], target.shape[-1])


BOUNDARY_SCHEDULES = ("rebalance", "linear", "constant")


class BoundaryLoss(nn.Module):
    """(1 - w) * region loss + w * mean(phi_G * (sigmoid(logits) - g)) (Kervadec et al. 2019).

    phi_G is the signed distance map of the ground truth (segbench.distance.signed_distance).
    Kervadec's boundary term is mean(phi_G * s); subtracting the constant mean(phi_G * g) leaves
    its gradient unchanged and makes the term 0 at a perfect prediction and >= 0 elsewhere.
    The weight w follows the epoch (set_epoch): rebalance (the paper's: w rises by `step` per
    epoch from 0 up to max_weight), linear (0 at the first epoch to max_weight at the last) or
    constant (max_weight).
    """

    def __init__(self, region: nn.Module, schedule: str, step: float, max_weight: float,
                 normalize: bool):
        super().__init__()
        self.region = region
        self.schedule, self.step, self.max_weight = schedule, step, max_weight
        self.normalize = normalize
        self.weight = self.weight_at(1, 1)

    def weight_at(self, epoch: int, max_epochs: int) -> float:
        if self.schedule == "constant":
            return self.max_weight
        if self.schedule == "linear":
            return self.max_weight * (epoch - 1) / max(1, max_epochs - 1)
        return min(self.max_weight, self.step * (epoch - 1))

    def set_epoch(self, epoch: int, max_epochs: int) -> None:
        self.weight = self.weight_at(epoch, max_epochs)
        log.info("boundary loss: weight %.4f in epoch %d (schedule %s)", self.weight, epoch,
                 self.schedule)

    def boundary_term(self, logits, target):
        phi = signed_distance(target)
        if self.normalize:
            phi = phi / _diagonal(target)
        return (phi * (torch.sigmoid(logits) - target)).mean()

    def forward(self, logits, target):
        region = self.region(logits, target)
        if self.weight == 0:
            return region
        return (1 - self.weight) * region + self.weight * self.boundary_term(logits, target)


@register("boundary")
def boundary(region: dict, schedule: str, step: float, max_weight: float, normalize: bool,
             context: dict | None = None):
    if schedule not in BOUNDARY_SCHEDULES:
        raise SegbenchError(f"loss.schedule={schedule!r}; use one of {', '.join(BOUNDARY_SCHEDULES)}")
    if not 0 <= float(max_weight) <= 1 or float(step) < 0:
        raise SegbenchError(f"loss.max_weight must be in [0, 1] and loss.step >= 0, got "
                            f"{max_weight}, {step}")
    region = dict(region)
    if region.get("name") == "boundary":
        raise SegbenchError("loss.region cannot be the boundary loss itself; use dice, bce, ...")
    return BoundaryLoss(build_loss(region, context), schedule, float(step), float(max_weight),
                        bool(normalize))


class ShapeAware(nn.Module):
    """mean((1 + lambda * d) * BCE): cross-entropy weighted by each pixel's distance d to the
    ground-truth contour, so that errors far from the true shape cost more than errors on it."""

    def __init__(self, distance_weight: float, normalize: bool):
        super().__init__()
        self.distance_weight, self.normalize = distance_weight, normalize

    def forward(self, logits, target):
        d = signed_distance(target).abs()
        if self.normalize:
            d = d / _diagonal(target)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return ((1 + self.distance_weight * d) * ce).mean()


@register("shape_aware")
def shape_aware(distance_weight: float, normalize: bool):
    if float(distance_weight) < 0:
        raise SegbenchError(f"loss.distance_weight must be >= 0, got {distance_weight}")
    return ShapeAware(float(distance_weight), bool(normalize))


def build_loss(cfg, context: dict | None = None) -> nn.Module:
    """The configured loss. `context` carries facts of the training data some losses need: a
    factory gets the entries it names as parameters (and the whole context as `context`)."""
    spec = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    context = dict(context or {})
    return LOSSES.build(spec, context={**context, "context": context})


def set_epoch(loss: nn.Module, epoch: int, max_epochs: int) -> None:
    """Tell every part of a loss that follows a schedule which epoch starts (1-based)."""
    for module in loss.modules():
        if hasattr(module, "set_epoch"):
            module.set_epoch(epoch, max_epochs)


def finite(loss: torch.Tensor) -> bool:
    return bool(torch.isfinite(loss).all())
