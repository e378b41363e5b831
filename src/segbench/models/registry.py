"""The model registry: `create_model(name, **kwargs)` returns a plain nn.Module that maps an
image batch to one logit map per class; `build_model(cfg)` adds the shared wrapper (scaling,
normalisation, padding to a size the network takes) and the activation swap."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from segbench import SegbenchError
from segbench.models.activations import swap_activations
from segbench.registry import Registry, check_options
from segbench.task import BINARY, task_of

# name -> factory of a plain nn.Module; meta "divisor": kwargs -> what height and width must be
# multiples of (None: any size).
MODELS = Registry("model")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def register(name: str, divisor: Callable[[dict], int | None] = lambda kw: None):
    return MODELS.register(name, divisor=divisor)


def list_models() -> list[str]:
    return MODELS.names()


def create_model(name: str, **kwargs) -> nn.Module:
    factory = MODELS.get(name)
    check_options(factory, kwargs, f"model {name}", "model")
    return factory(**kwargs)


def size_divisor(name: str, **kwargs) -> int | None:
    return MODELS.meta(name)["divisor"](kwargs)


# per_image normalisation: the smallest standard deviation divided by (in [0, 1] units, about 2.5
# grey levels of 8 bits), so that a blank or nearly uniform slice is not amplified into noise.
MIN_STD = 0.01
NORMALISATIONS = ("fixed", "per_image")


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Each image's channels to mean 0 and standard deviation 1 (over its pixels; the deviation
    floored at MIN_STD): for images without an absolute intensity scale, such as MRI."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    centred = x - mean
    std = centred.square().mean(dim=(2, 3), keepdim=True).sqrt().clamp_min(MIN_STD)
    return centred / std


class SegmentationModel(nn.Module):
    """uint8-range or [0, 1] image batch -> logits of the same height and width.

    Scales [0, 255] to [0, 1] when given integers, normalises (with the stored mean/std, or each
    image by its own statistics: `per_image`), pads to a multiple of `divisor` (reflection) and
    crops the logits back, so the network inside never sees a size it cannot take.
    """

    mean: torch.Tensor  # buffers (registered in __init__)
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean, std, divisor: int | None = None, task=BINARY,
                 per_image: bool = False):
        super().__init__()
        self.net = net
        self.divisor = divisor
        self.task = task  # what the logits mean: softmax or sigmoid probabilities (segbench.task)
        self.per_image = per_image  # dataset.normalisation=per_image: mean and std are 0 and 1
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            x = x.float() / 255.0
        if self.per_image:
            x = standardise(x)
        x = (x - self.mean) / self.std
        h, w = x.shape[-2:]
        pad_h = pad_w = 0
        if self.divisor:
            pad_h, pad_w = (-h) % self.divisor, (-w) % self.divisor
        if pad_h or pad_w:
            top, left = pad_h // 2, pad_w // 2
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (left, pad_w - left, top, pad_h - top), mode=mode)
            return self.net(x)[..., top : top + h, left : left + w]
        return self.net(x)


def normalisation(channels: int,
                  kind: str = "fixed") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The stored mean and std: ImageNet statistics for RGB (what pretrained encoders expect),
    mid-grey for other inputs; 0 and 1 where each image is standardised by its own (per_image)."""
    if kind not in NORMALISATIONS:
        raise SegbenchError(f"dataset.normalisation={kind}: use fixed (the model's mean/std) or "
                            "per_image (each image's own mean and std, e.g. for MRI)")
    if kind == "per_image":
        return (0.0,) * channels, (1.0,) * channels
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * channels, (0.25,) * channels


def check_resolution(name: str, divisor: int | None, height: int, width: int, pad: bool) -> None:
    if not divisor or pad or (height % divisor == 0 and width % divisor == 0):
        return
    def near(v):
        lo = v // divisor * divisor
        return [v] if v == lo else sorted({max(divisor, lo), lo + divisor})
    raise SegbenchError(
        f"model {name} needs height and width divisible by {divisor}; {height}x{width} is not. "
        f"Nearest valid heights {near(height)}, widths {near(width)}; or set "
        "model.pad_to_multiple=true to pad inputs and crop the output back"
    )


def output_channels(cfg: DictConfig) -> int:
    """The model's output channels: the task's (1 binary, one per class otherwise); a
    `model.classes` that disagrees with the task is a one-line error."""
    task = task_of(cfg.get("dataset") or {})
    given = cfg.model.get("classes", "auto")
    if given in (None, "auto") or int(given) == task.channels:
        return task.channels
    if task.kind == "binary":
        raise SegbenchError(
            f"model.classes={given}, but dataset.task is binary (one output channel); for several "
            "classes declare them: dataset.task=multiclass dataset.classes='{0: background, 1: a, "
            "2: b}' and leave model.classes=auto")
    raise SegbenchError(f"model.classes={given}, but dataset.task={task.kind} declares "
                        f"{task.channels} classes ({', '.join(task.names)}); "
                        "leave model.classes=auto")


def model_kwargs(cfg: DictConfig) -> dict:
    """The model factory's keyword arguments (the config's keys that are not segbench's own)."""
    kwargs = cast(dict, OmegaConf.to_container(cfg.model, resolve=True))  # a mapping of options
    for key in ("name", "_target_", "pad_to_multiple", "size_divisor"):
        kwargs.pop(key, None)
    if "classes" in kwargs:
        kwargs["classes"] = output_channels(cfg)
    return kwargs


def build_model(cfg: DictConfig, pretrained: bool = True) -> SegmentationModel:
    """The configured model, activation swapped, wrapped for any input size the config allows.

    pretrained=False skips loading pretrained encoder weights: for a model whose weights come from
    a checkpoint next (eval, export), which then needs neither the network nor the weights cache.
    """
    name = cfg.model.name
    kwargs = model_kwargs(cfg)
    if not pretrained and kwargs.get("encoder_weights") is not None:
        kwargs["encoder_weights"] = None
    target = cfg.model.get("_target_")
    if target:  # a user's own network (docs/extending.md): its config states its size divisor
        divisor = cfg.model.get("size_divisor")
        label, factory, _ = MODELS.resolve({"name": name, "_target_": target})
        check_options(factory, kwargs, f"model {label}", "model")
    else:
        divisor = size_divisor(name, **kwargs)
    check_resolution(name, divisor, int(cfg.resolution.height), int(cfg.resolution.width),
                     bool(cfg.model.get("pad_to_multiple", True)))
    try:
        net = factory(**kwargs) if target else create_model(name, **kwargs)
    except (TypeError, ValueError) as err:
        if not target:
            raise
        raise SegbenchError(f"model {label}: {err}") from None
    if not isinstance(net, nn.Module):  # what a model factory builds is a network, nothing else
        raise SegbenchError(f"model {label if target else name} built a {type(net).__name__}, "
                            "not a torch nn.Module; a model factory must return a network")
    if "activation" in cfg and cfg.activation is not None:
        swap_activations(net, cfg.activation)
    dataset = cfg.get("dataset") or {}
    kind = str(dataset.get("normalisation", "fixed"))
    mean, std = normalisation(int(kwargs.get("in_channels", 3)), kind)
    return SegmentationModel(net, mean, std, divisor, task_of(dataset),
                             per_image=kind == "per_image")


def load_trained(run, checkpoint: str = "best", device="cpu", config=None):
    """(model with a run's checkpoint weights on `device`, the checkpoint, the run's config).
    `run`: a RunDir (read_config, load_checkpoint; not imported: the run directory sits beside
    the models, not below them); `config`: the run's config, changed by the caller (e.g. another
    export size)."""
    config = config if config is not None else run.read_config()
    state = run.load_checkpoint(checkpoint, map_location=device)
    model = build_model(config, pretrained=False)  # the checkpoint holds every weight
    model.load_state_dict(state["model"])
    return model.to(device), state, config
