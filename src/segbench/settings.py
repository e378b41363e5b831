"""Typed settings, checked where they enter: a wrong type or value is a one-line error that names
the key and a valid example, raised before anything runs or touches a run directory.

Each dataclass mirrors a config section (configs/trainer/default.yaml, the `eval:` block of
configs/train.yaml, a command's own options). Defaults live in the YAML files only: the
dataclasses declare types and constraints, never values. A constraint is a field's metadata
`check=(predicate, "what is allowed")`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from segbench import SegbenchError
from segbench.task import task_of


def _rule(predicate: Callable[[Any], bool], allowed: str) -> dict[str, Any]:
    """A field's metadata: `check=(predicate, "what is allowed")`."""
    return {"check": (predicate, allowed)}


def _positive(allowed: str = "an integer >= 1") -> dict[str, Any]:
    return _rule(lambda v: v >= 1, allowed)


def _non_negative(allowed: str = "a number >= 0") -> dict[str, Any]:
    return _rule(lambda v: v >= 0, allowed)


@dataclass(frozen=True)
class EarlyStopping:
    patience: int = field(metadata=_positive())
    min_delta: float = field(metadata=_non_negative())


@dataclass(frozen=True)
class Trainer:
    device: str
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    max_epochs: int = field(metadata=_positive())
    batch_size: int = field(metadata=_positive())
    eval_batch_size: int | None = field(
        metadata=_rule(lambda v: v is None or v >= 1, "null or an integer >= 1"))
    num_workers: Literal["auto"] | int = field(
        metadata=_rule(lambda v: v == "auto" or v >= 0, "auto or an integer >= 0"))
    grad_clip: float | None = field(
        metadata=_rule(lambda v: v is None or v > 0, "null or a number > 0"))
    monitor: str  # auto | a validation metric (engine.early_stopping.MONITORS)
    monitor_mode: Literal["auto", "max", "min"]
    monitor_smoothing: Literal["auto"] | float = field(
        metadata=_rule(lambda v: v == "auto" or 0 <= v < 1, "auto or a number in [0, 1), e.g. 0.9"))
    best_from_epoch: int = field(metadata=_positive())
    early_stopping: EarlyStopping
    resume: bool | str | None  # auto | true | false | a run directory
    deterministic: bool
    channels_last: Literal["auto"] | bool
    data_on_device: Literal["auto"] | bool
    data_on_device_budget: float = field(
        metadata=_rule(lambda v: 0 < v <= 1,
                       "a fraction of the device's memory in (0, 1], e.g. 0.25"))
    compile: Literal["auto"] | bool
    progress_bar: Literal["auto"] | bool
    progress_interval_s: float = field(metadata=_rule(lambda v: v > 0, "seconds > 0, e.g. 30"))
    progress_every_steps: int | None = field(
        metadata=_rule(lambda v: v is None or v >= 1, "null or an integer >= 1"))
    log_every_steps: int = field(metadata=_positive())
    devices: Literal["auto"] | int = field(
        metadata=_rule(lambda v: v == "auto" or v >= 1, "auto or an integer >= 1"))
    sync_batchnorm: bool
    accumulate_grad_batches: int = field(metadata=_positive())


@dataclass(frozen=True)
class Eval:
    threshold: float = field(
        metadata=_rule(lambda v: 0 <= v <= 1, "a probability in [0, 1] (a pixel is "
                       "foreground when sigmoid(logit) >= threshold)"))
    tta: bool
    num_predictions: int = field(metadata=_non_negative("an integer >= 0"))
    surface_metrics: bool
    surface_workers: Literal["auto"] | int = field(
        metadata=_rule(lambda v: v == "auto" or v >= 1, "auto or an integer >= 1"))
    native_resolution: bool
    latency: bool


@dataclass(frozen=True)
class Resolution:
    height: int = field(metadata=_rule(lambda v: v >= 8, "an integer >= 8 pixels"))
    width: int = field(metadata=_rule(lambda v: v >= 8, "an integer >= 8 pixels"))


@dataclass(frozen=True)
class Train:
    """What `segbench train` reads of its config before anything else (the groups' own options
    are checked by their registries when built)."""

    # NumPy (augmentation, sampling) takes seeds below 2**32 and segbench reduces larger ones
    # modulo 2**32: seed=4294967296 would run as seed 0 while the run recorded 4294967296.
    seed: int = field(
        metadata=_rule(lambda v: 0 <= v < 2**32, "an integer in 0..4294967295 (NumPy's seed "
                       "range; a larger seed would run as another one)"))
    trainer: Trainer
    eval: Eval
    resolution: Resolution
    # The composed config itself, as the factories of the registries (model, data, loss,
    # optimizer, schedule, trackers) read it: each checks its own options when it builds.
    config: Any = field(default=None, repr=False, compare=False, metadata={"untyped": True})

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the model's input."""
        return (int(self.config.model.get("in_channels", 3)), self.resolution.height,
                self.resolution.width)


# Sections whose keys are all declared: an extra key there is a typo.
STRICT = (EarlyStopping, Trainer, Eval)
# (type, predicate, "what is allowed") of one key of a config group.
GroupRule = tuple[Any, Callable[[Any], bool], str]
# Keys that options of a group share, checked when present (the rest of a group's options are
# checked against its factory's signature when it is built).
DATASET_RULES: dict[str, GroupRule] = {
    "val_fraction": (float, lambda v: 0 < v < 1, "a fraction in (0, 1)"),
    "test_fraction": (float, lambda v: 0 < v < 1, "a fraction in (0, 1)"),
    "train_fraction": (float, lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    "split_seed": (int, lambda v: v >= 0, "an integer >= 0"),
    "channels": (int, lambda v: v in (1, 3), "1 or 3"),
    "folds": (int | None, lambda v: v is None or v >= 2, "null or a number of folds >= 2"),
    "fold": (int | None, lambda v: v is None or v >= 0, "a fold index 0..folds-1"),
    "normalisation": (Literal["fixed", "per_image"], lambda v: v in ("fixed", "per_image"),
                      "fixed (the model's mean/std) or per_image (each image's own)"),
}
OPTIMIZER_RULES: dict[str, GroupRule] = {
    "lr": (float, lambda v: v > 0, "a learning rate > 0, e.g. optimizer.lr=1e-3"),
    "weight_decay": (float, lambda v: v >= 0, "a number >= 0"),
}
GROUP_RULES = {"dataset": DATASET_RULES, "optimizer": OPTIMIZER_RULES}


def typed(cls, node, prefix: str = "", strict: bool | None = None):
    """An instance of dataclass `cls` from a config node (DictConfig or dict): each declared
    field converted to its type and checked; SegbenchError naming `<prefix><key>` otherwise."""
    hints = typing.get_type_hints(cls)
    strict = cls in STRICT if strict is None else strict
    getter = (lambda k: node.get(k, _MISSING)) if node is not None else (lambda k: _MISSING)
    if strict and node is not None:
        extra = sorted(set(node.keys()) - {f.name for f in dataclasses.fields(cls)})
        if extra:
            section = prefix.rstrip('.') or 'this command'
            names = ', '.join(f.name for f in dataclasses.fields(cls))
            raise SegbenchError(f"{prefix}{extra[0]} is not a setting of {section}; "
                                f"its settings: {names}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("untyped"):
            continue
        key = f"{prefix}{f.name}"
        raw = getter(f.name)
        if raw is _MISSING:
            raise SegbenchError(f"{key} is missing from the config; set it, e.g. {key}=<value>")
        value = convert(raw, hints[f.name], key)
        check = f.metadata.get("check")
        if check is not None and not check[0](value):
            raise SegbenchError(f"{key}={_show(raw)}: use {check[1]}")
        values[f.name] = value
    return cls(**values)


class _Missing:
    pass


_MISSING = _Missing()


def _show(value) -> str:
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _describe(annotation) -> str:
    if dataclasses.is_dataclass(annotation):
        return "a group of settings"
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(_show(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    return {int: "an integer", float: "a number", bool: "true or false", str: "text",
            type(None): "null"}.get(annotation, str(annotation))


def convert(value: Any, annotation, key: str):
    """`value` as `annotation` (int, float, bool, str, None, Literal, unions of them, dataclass)."""
    if dataclasses.is_dataclass(annotation):
        if value is None or not hasattr(value, "keys"):
            raise SegbenchError(f"{key}={_show(value)}: {key} is a group of settings, not a value")
        return typed(annotation, value, f"{key}.")
    origin = typing.get_origin(annotation)
    union = typing.get_args(annotation) if origin in (Union, types.UnionType) else (annotation,)
    # Literals first: `auto` is a choice, not text.
    options = sorted(union, key=lambda a: typing.get_origin(a) is not Literal)
    for option in options:
        ok, out = _as(value, option)
        if ok:
            return out
    example = {int: "3", float: "0.5", bool: "true"}.get(options[-1], "")
    raise SegbenchError(f"{key}={_show(value)}: expected {_describe(annotation)}"
                        + (f", e.g. {key}={example}" if example else ""))


def _as(value, option) -> tuple[bool, Any]:
    if typing.get_origin(option) is Literal:
        return (value in typing.get_args(option) and not isinstance(value, bool)
                or isinstance(value, bool) and value in typing.get_args(option)
                and any(isinstance(a, bool) for a in typing.get_args(option))), value
    if option is type(None):
        return value is None, None
    if option is bool:
        return isinstance(value, bool), value
    if option is int:
        if isinstance(value, bool):
            return False, None
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, None
    if option is float:
        if isinstance(value, bool):
            return False, None
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as text
            try:
                return True, float(value)
            except ValueError:
                return False, None
        return False, None
    if option is str:
        return isinstance(value, str), value
    return False, None


def check_train(cfg) -> Train:
    """The typed settings of a training config, or a one-line SegbenchError."""
    settings = dataclasses.replace(typed(Train, cfg, strict=False), config=cfg)
    for group, rules in GROUP_RULES.items():
        node = cfg.get(group) or {}
        for key, (kind, predicate, allowed) in rules.items():
            if key in node:
                value = convert(node[key], kind, f"{group}.{key}")
                if not predicate(value):
                    raise SegbenchError(f"{group}.{key}={_show(node[key])}: use {allowed}")
    dataset = cfg.get("dataset") or {}
    task_of(dataset)  # the task's declaration, checked before anything is built
    folds, fold = dataset.get("folds"), dataset.get("fold")
    if folds is None and fold is not None:
        raise SegbenchError(f"dataset.fold={fold} without dataset.folds: set the number of folds "
                            f"too, e.g. dataset.folds=5 dataset.fold={fold}")
    if folds is not None and (fold is None or not 0 <= int(fold) < int(folds)):
        raise SegbenchError(f"dataset.fold={_show(fold)}: with dataset.folds={folds} use a fold "
                            f"in 0..{int(folds) - 1}, e.g. -m dataset.fold="
                            + ",".join(str(k) for k in range(int(folds))))
    return settings


def check_threshold(threshold) -> float:
    """The one rule every command applies to `eval.threshold` (sigmoid(logit) >= threshold)."""
    try:
        value = convert(threshold, float, "eval.threshold")
    except SegbenchError:
        value = math.nan
    if not 0 <= value <= 1:
        raise SegbenchError(f"eval.threshold={threshold}: a probability in [0, 1] is needed "
                            "(a pixel is foreground when sigmoid(logit) >= threshold)")
    return value
