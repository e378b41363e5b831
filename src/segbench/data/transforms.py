"""Training augmentation from the `augmentation` config group, with albumentations.

A preset lists albumentations transforms by class name (`type`) with their arguments; image and
mask are transformed together, masks with nearest-neighbour interpolation so they stay binary.
"""

from __future__ import annotations

import albumentations as A
from omegaconf import DictConfig, OmegaConf

from segbench import SegbenchError


def _build_one(spec: dict):
    spec = dict(spec)
    name = spec.pop("type", None)
    if name is None:
        raise SegbenchError(f"augmentation entry {spec} has no `type` (an albumentations class name)")
    if "transforms" in spec:  # OneOf / SomeOf / Sequential hold transforms of their own
        spec["transforms"] = [_build_one(t) for t in spec["transforms"]]
    cls = getattr(A, name, None)
    if cls is None:
        raise SegbenchError(f"augmentation: albumentations has no transform {name!r}")
    try:
        return cls(**spec)
    except (TypeError, ValueError) as err:
        raise SegbenchError(f"augmentation: bad arguments for {name}: {err}") from None


def build_augmentation(cfg: DictConfig | dict | None) -> A.Compose | None:
    """An albumentations Compose for the training split, or None when the preset is empty."""
    if cfg is None:
        return None
    spec = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    transforms = [_build_one(t) for t in spec.get("transforms") or []]
    if not transforms:
        return None
    return A.Compose(transforms)
