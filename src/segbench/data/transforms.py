"""Training augmentation from the `augmentation` config group, with albumentations.

A preset lists albumentations transforms by class name (`type`) with their arguments; image and
mask are transformed together, masks with nearest-neighbour interpolation so they stay binary.
"""

from __future__ import annotations

from typing import cast

import albumentations as A
from omegaconf import DictConfig, OmegaConf

from segbench import AUTO_UNRESOLVED, SegbenchError


def _build_one(spec: dict):
    spec = dict(spec)
    name = spec.pop("type", None)
    if name is None:
        raise SegbenchError(f"augmentation entry {spec} has no `type` "
                            "(an albumentations class name)")
    if "transforms" in spec:  # OneOf / SomeOf / Sequential hold transforms of their own
        spec["transforms"] = [_build_one(t) for t in spec["transforms"]]
    cls = getattr(A, name, None)
    if cls is None:
        raise SegbenchError(f"augmentation: albumentations has no transform {name!r}")
    try:
        return cls(**spec)
    except (TypeError, ValueError) as err:
        raise SegbenchError(f"augmentation: bad arguments for {name}: {err}") from None


def build_transform(spec: dict):
    """One preset entry as an albumentations transform (the preview draws them one by one)."""
    return _build_one(spec)


# Transforms that swap height and width: on a non-square resolution they would change the size.
SQUARE_ONLY = {"Transpose", "RandomRotate90", "D4", "SquareSymmetry"}


def _types(specs) -> set[str]:
    out = set()
    for spec in specs or []:
        out.add(spec.get("type"))
        out |= _types(spec.get("transforms"))
    return out


def build_augmentation(cfg: DictConfig | dict | None,
                       size: tuple[int, int] | None = None) -> A.Compose | None:
    """An albumentations Compose for the training split, or None when the preset is empty.

    `size` (height, width) is the resolution the images are cached at: transforms that swap
    height and width need it square.
    """
    if cfg is None:
        return None
    # A preset is a mapping (name, transforms).
    spec = (cast(dict, OmegaConf.to_container(cfg, resolve=True)) if isinstance(cfg, DictConfig)
            else dict(cfg))
    if spec.get("name") == "auto" and "transforms" not in spec:
        raise SegbenchError(AUTO_UNRESOLVED.format(group="augmentation"))
    swapping = sorted(_types(spec.get("transforms")) & SQUARE_ONLY)
    if size is not None and size[0] != size[1] and swapping:
        raise SegbenchError(
            f"augmentation {spec.get('name', '')}: {', '.join(swapping)} swaps height and width, "
            f"which a {size[0]}x{size[1]} resolution cannot take; use a square resolution or "
            "another preset")
    transforms = [_build_one(t) for t in spec.get("transforms") or []]
    if not transforms:
        return None
    return A.Compose(transforms)
