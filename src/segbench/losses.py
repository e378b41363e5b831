"""Losses on logits against the task's targets, from the `loss` config group.

Targets (`loss_target`): binary, float N x 1 x H x W in {0, 1}; multiclass, long N x H x W class
indices (logits N x C x H x W, softmax); multilabel, float N x C x H x W (C sigmoid channels).
Pixels marked IGNORE (dataset.ignore_index) count in no loss. A loss with a multi-class form
takes the `task` (segbench.task.Task) from the context; one without is refused for a multiclass
or multilabel task, with one line.

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
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from segbench import SegbenchError
from segbench.metrics import unpack_labels
from segbench.metrics.distance import signed_distance
from segbench.registry import Registry, accepts
from segbench.task import IGNORE, Task

log = logging.getLogger(__name__)

# segmentation-models-pytorch's losses load inside their factories: importing smp takes seconds
# (it brings timm along), and a run of segbench's own models and losses (mcnet, unet; bce, ce,
# ...) or `eval`, which reads loss_target() from here, never needs it.

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


def loss_target(masks: torch.Tensor, task: Task | None) -> torch.Tensor:
    """The loss's target from a batch of uint8 label maps (N x 1 x H x W, segbench.data.labels):
    class indices (multiclass), one channel per class (multilabel: the bits unpacked; already
    N x C x H x W is taken as it is), else the float mask."""
    if task is not None and task.kind == "multiclass":
        return masks[:, 0].long()
    if task is not None and task.kind == "multilabel" and masks.shape[1] == 1:
        return unpack_labels(masks, task)
    return masks.float()


def _mode(task: Task | None) -> str:
    return "binary" if task is None else task.kind


def _ignore(task: Task | None) -> int | None:
    return IGNORE if task is not None and task.ignore_index is not None else None


def _classes(task: Task | None, include_background: bool) -> list[int] | None:
    """The channels a region loss averages: all, or the foreground of a multiclass task."""
    if task is None or task.kind != "multiclass" or include_background:
        return None
    return list(task.foreground)


class MaskedBCE(nn.Module):
    """BCE with logits, averaged over the pixels that are not IGNORE (multilabel, or binary
    with an ignore_index)."""

    def __init__(self, pos_weight: float | None = None):
        super().__init__()
        self.pos_weight = None if pos_weight is None else torch.tensor([float(pos_weight)])

    def forward(self, logits, target):
        valid = target != IGNORE
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, target * valid, reduction="none",
                                                  pos_weight=pos_weight)
        return (loss * valid).sum() / valid.sum().clamp(min=1)


def _no_form(name: str, kind: str, use: str) -> SegbenchError:
    return SegbenchError(f"loss {name} has no {kind} form; use {use}")


@register("bce")
def bce(task: Task | None = None):
    if _mode(task) == "multiclass":
        raise _no_form("bce", "multiclass",
                       "loss=ce (softmax cross-entropy) or loss=bce_dice (CE + Dice)")
    if _mode(task) == "multilabel" or _ignore(task) is not None:
        return MaskedBCE()
    return nn.BCEWithLogitsLoss()


@register("ce")
def ce(class_weights, label_smoothing: float, task: Task | None = None):
    if task is None or task.kind != "multiclass":
        raise SegbenchError("loss ce is the softmax cross-entropy of a multiclass task; for "
                            f"{_mode(task)} masks use loss=bce")
    weight = None
    if class_weights is not None:
        weights = [float(w) for w in class_weights]
        if len(weights) != task.channels or min(weights) < 0:
            raise SegbenchError(f"loss.class_weights: give {task.channels} weights >= 0, one per "
                                f"class in the order {', '.join(task.names)}")
        weight = torch.tensor(weights)
    if not 0 <= float(label_smoothing) < 1:
        raise SegbenchError(f"loss.label_smoothing must be in [0, 1), got {label_smoothing}")
    ignore = _ignore(task)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=float(label_smoothing),
                               ignore_index=ignore if ignore is not None else -100)


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
def dice(smooth: float, include_background: bool, task: Task | None = None):
    from segmentation_models_pytorch.losses import DiceLoss

    return DiceLoss(mode=_mode(task), classes=_classes(task, include_background),
                    from_logits=True, smooth=float(smooth), ignore_index=_ignore(task))


@register("bce_dice")
def bce_dice(bce_weight: float, dice_weight: float, smooth: float,
             include_background: bool, task: Task | None = None):
    # A multiclass task's cross-entropy term is the softmax CE: CE + Dice, nnU-Net's default.
    first = (ce(None, 0.0, task) if _mode(task) == "multiclass" else bce(task))
    return Weighted([(float(bce_weight), first),
                     (float(dice_weight), dice(smooth, include_background, task))])


@register("jaccard")
def jaccard(smooth: float, include_background: bool, task: Task | None = None):
    from segmentation_models_pytorch.losses import JaccardLoss

    return JaccardLoss(mode=_mode(task), classes=_classes(task, include_background),
                       from_logits=True, smooth=float(smooth), ignore_index=_ignore(task))


@register("focal")
def focal(alpha: float | None, gamma: float, task: Task | None = None):
    from segmentation_models_pytorch.losses import FocalLoss

    gamma = float(gamma)
    if not (gamma == 0 or gamma >= 1):
        # (1 - p_t)^gamma has an infinite derivative at p_t = 1 when 0 < gamma < 1.
        raise SegbenchError(f"loss.gamma={gamma}: use 0 or a value >= 1 (0 < gamma < 1 gives an "
                            "infinite gradient on confidently right pixels)")
    if alpha is not None and not 0 <= float(alpha) <= 1:
        raise SegbenchError(f"loss.alpha must be in [0, 1] or null, got {alpha}")
    # Multilabel: the binary form over every channel's pixels (smp's multilabel form cannot
    # index its ignore mask, and the binary one is that loss averaged over channels anyway).
    mode = "binary" if _mode(task) == "multilabel" else _mode(task)
    return FocalLoss(mode=mode, alpha=None if alpha is None else float(alpha), gamma=gamma,
                     ignore_index=_ignore(task))


def _check_tversky(alpha, beta) -> tuple[float, float]:
    alpha, beta = float(alpha), float(beta)
    if alpha < 0 or beta < 0 or alpha + beta <= 0:
        raise SegbenchError(f"loss.alpha and loss.beta must be >= 0 and not both 0, got "
                            f"{alpha}, {beta}")
    return alpha, beta


@register("tversky")
def tversky(alpha: float, beta: float, smooth: float, include_background: bool,
            task: Task | None = None):
    from segmentation_models_pytorch.losses import TverskyLoss

    alpha, beta = _check_tversky(alpha, beta)
    return TverskyLoss(mode=_mode(task), classes=_classes(task, include_background),
                       from_logits=True, alpha=alpha, beta=beta, smooth=float(smooth),
                       ignore_index=_ignore(task))


class FocalTversky(nn.Module):
    """(1 - TI)^(1/gamma) (Abraham & Khan 2019) on smp's Tversky loss 1 - TI.

    smp's own `gamma` raises 1 - TI to gamma directly, and its derivative is infinite where
    1 - TI = 0 (a perfect batch, or an all-empty batch that smp scores 0) when the exponent is
    below 1: that point is taken out of the power here, so the gradient stays finite (0).
    """

    def __init__(self, alpha: float, beta: float, gamma: float, smooth: float,
                 task: Task | None, include_background: bool):
        super().__init__()
        self.tversky = tversky(alpha, beta, smooth, include_background, task)
        self.exponent = 1.0 / gamma

    def forward(self, logits, target):
        loss = self.tversky(logits, target)
        positive = loss > 1e-12
        safe = torch.where(positive, loss, torch.ones_like(loss))
        return torch.where(positive, safe ** self.exponent, torch.zeros_like(loss))


@register("focal_tversky")
def focal_tversky(alpha: float, beta: float, gamma: float, smooth: float,
                  include_background: bool, task: Task | None = None):
    alpha, beta = _check_tversky(alpha, beta)
    if not float(gamma) > 0:
        raise SegbenchError(f"loss.gamma must be > 0 (the paper uses 1..3), got {gamma}")
    return FocalTversky(alpha, beta, float(gamma), float(smooth), task, include_background)


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
def log_cosh_dice(smooth: float, include_background: bool, task: Task | None = None):
    return LogCosh(dice(smooth, include_background, task))


@register("lovasz")
def lovasz(per_image: bool, task: Task | None = None):
    from segmentation_models_pytorch.losses import LovaszLoss

    # multiclass: Lovasz-softmax; binary and multilabel: the Lovasz hinge.
    return LovaszLoss(mode=_mode(task), per_image=bool(per_image), from_logits=True,
                      ignore_index=_ignore(task))


def _diagonal(target: torch.Tensor) -> float:
    return math.hypot(target.shape[-2], target.shape[-1])


BOUNDARY_SCHEDULES = ("rebalance", "linear", "constant")


class BoundaryLoss(nn.Module):
    """(1 - w) * region loss + w * mean(phi_G * (sigmoid(logits) - g)) (Kervadec et al. 2019).

    phi_G is the signed distance map of the ground truth
    (segbench.metrics.distance.signed_distance).
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
        raise SegbenchError(f"loss.schedule={schedule!r}; use one of "
                            f"{', '.join(BOUNDARY_SCHEDULES)}")
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
    spec = (cast(dict, OmegaConf.to_container(cfg, resolve=True)) if isinstance(cfg, DictConfig)
            else dict(cfg))
    context = dict(context or {})
    task = context.get("task")
    if task is not None and (task.kind != "binary" or task.ignore_index is not None):
        label, factory, _ = LOSSES.resolve(spec)
        if not accepts(factory, "task"):
            what = task.kind if task.kind != "binary" else "binary task with an ignore_index"
            raise SegbenchError(
                f"loss {label} has no {what} form; use one of "
                f"{', '.join(n for n in LOSSES.names() if accepts(LOSSES.get(n), 'task'))}")
    return LOSSES.build(spec, context={**context, "context": context})


def set_epoch(loss: nn.Module, epoch: int, max_epochs: int) -> None:
    """Tell every part of a loss that follows a schedule which epoch starts (1-based)."""
    for module in loss.modules():
        schedule = getattr(module, "set_epoch", None)  # (nn.Module types its attributes as tensors)
        if schedule is not None:
            schedule(epoch, max_epochs)


def finite(loss: torch.Tensor) -> bool:
    return bool(torch.isfinite(loss).all())
