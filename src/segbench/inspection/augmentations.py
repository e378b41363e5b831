"""What an augmentation preset does: a few training images and their masks under each transform of
the preset (each forced to apply, p = 1) and under the whole preset as training runs it (with its
own probabilities), seeded so the figure is reproducible. The library side of `segbench preview`;
the report draws it too for a study whose configurations differ in augmentation.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, cast

import albumentations as A
import cv2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from omegaconf import DictConfig, OmegaConf

from segbench import SegbenchError
from segbench.data import dataset_module, default_read, list_splits
from segbench.data.transforms import build_augmentation, build_transform
from segbench.runs.rundir import CONFIG
from segbench.viz import save_figure

CONTOUR = "#009E73"  # the ground-truth contour colour of the case galleries


def training_samples(cfg: DictConfig, n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """`n` training images (id, uint8 HxWxC image, uint8 HxW mask) spread over the training split,
    decoded as training decodes them and resized to `cfg.resolution`."""
    train = list_splits(cfg)["train"]
    if not train:
        raise SegbenchError(f"dataset {cfg.dataset.name} has no training images to preview")
    read = getattr(dataset_module(cfg.dataset), "read", default_read)
    height, width = int(cfg.resolution.height), int(cfg.resolution.width)
    out = []
    for k in np.linspace(0, len(train) - 1, min(n, len(train))).round().astype(int):
        sample = train[k]
        image, mask, _ = read(sample, cfg.dataset)
        image = cv2.resize(image, (width, height),
                           interpolation=cv2.INTER_AREA).reshape(height, width, -1)
        mask = cv2.resize((mask > 0).astype(np.uint8), (width, height),
                          interpolation=cv2.INTER_NEAREST)
        out.append((sample.id, image, mask))
    return out


def describe(spec: dict) -> str:
    """A transform's name and arguments, short: `Affine(rotate=[-15, 15], scale=[0.9, 1.1])`."""
    if "transforms" in spec:
        return f"{spec['type']}({' | '.join(t['type'] for t in spec['transforms'])})"
    args = ", ".join(f"{k}={v}" for k, v in spec.items() if k not in ("type", "p"))
    return f"{spec['type']}({args})" if args else spec["type"]


def rows_of(augmentation, size: tuple[int, int], seed: int) -> list[tuple[str, A.Compose]]:
    """(row label, albumentations Compose) per transform of the preset with p = 1 (an OneOf still
    draws one of its members), then the whole preset as configured."""
    # The augmentation node is a mapping (configs/augmentation/*.yaml).
    spec = (cast(dict[str, Any], OmegaConf.to_container(augmentation, resolve=True))
            if isinstance(augmentation, DictConfig) else dict(augmentation or {}))
    whole = build_augmentation(spec, size)  # checks the preset as training would
    if whole is None:
        raise SegbenchError(f"augmentation {spec.get('name', '')} has no transforms: nothing to "
                            "preview; pick a preset, e.g. augmentation=basic")
    rows = []
    for i, t in enumerate(spec["transforms"]):
        rows.append((describe(t) + " (p=1)",
                     A.Compose([build_transform({**t, "p": 1.0})], seed=seed + i)))
    rows.append(("whole preset, as trained",
                 A.Compose([build_transform(t) for t in spec["transforms"]],
                           seed=seed + len(rows))))
    return rows


def draw(samples, augmentation, path: Path, seed: int, title: str) -> int:
    """The preview figure: one row per transform, one column per image, each panel the
    augmented image with its augmented mask's contour. Returns the number of rows."""
    size = samples[0][1].shape[:2]
    rows: list[tuple[str, A.Compose | None]] = [("original", None),
                                                *rows_of(augmentation, size, seed)]
    cols = len(samples)
    fig = Figure(figsize=(2.0 * cols + 2.2, 2.0 * len(rows) + 1.0), layout="constrained")
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (label, transform) in enumerate(rows):
        for c, (image_id, image, mask) in enumerate(samples):
            if transform is not None:
                out = transform(image=image, mask=mask)
                image, mask = out["image"], out["mask"]
            ax = axes[r, c]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0,
                      vmax=255, interpolation="nearest")
            if mask.any() and not mask.all():
                ax.contour(mask.astype(np.float32), levels=[0.5], colors=[CONTOUR], linewidths=1.2)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(image_id, fontsize=8)
        axes[r, 0].set_ylabel("\n".join(textwrap.wrap(label, 24)), fontsize=8)
    fig.suptitle(title, fontsize=10)
    key = Line2D([], [], color=CONTOUR, lw=2, label="mask contour (augmented with the image)")
    fig.legend(handles=[key], loc="outside lower center", fontsize=8, frameon=False)
    save_figure(fig, path, dpi=100)
    return len(rows)


def preview(cfg: DictConfig, path: Path, n: int, seed: int) -> int:
    """`segbench preview`: the preset checked before any data is read, then drawn on `n`
    training images; returns the number of rows."""
    rows_of(cfg.augmentation, (int(cfg.resolution.height), int(cfg.resolution.width)), seed)
    samples = training_samples(cfg, n)
    name = cfg.augmentation.get("name", "?")
    h, w = samples[0][1].shape[:2]
    title = (f"augmentation={name} on {cfg.dataset.name} at {w}x{h}: each transform forced on "
             f"(p=1), then the whole preset; seed {seed}")
    return draw(samples, cfg.augmentation, path, seed, "\n".join(textwrap.wrap(title, 90)))


def study_previews(configs, folder: Path, n: int = 4, seed: int = 0
                   ) -> tuple[list[tuple[str, str]], list[str]]:
    """For a study whose configurations differ in augmentation: each preset's preview, from the
    data of its first run (its resolved config.yaml). Returns ([(preset, file name)], notes);
    a preset whose data cannot be read here is a note, not an error (a report needs only runs)."""
    presets = {}
    for c in configs:
        run = next((r for r in c.finished or c.runs if (r.path / CONFIG).is_file()), None)
        name = c.settings.get("augmentation.name")
        if run is not None and name and name not in presets:
            presets[name] = run
    if len(presets) < 2:
        return [], []
    drawn: list[tuple[str, str]] = []
    notes: list[str] = []
    folder.mkdir(parents=True, exist_ok=True)
    for name, run in presets.items():
        cfg = cast(DictConfig, OmegaConf.load(run.path / CONFIG))  # a run's config is a mapping
        file = folder / f"augmentation_{len(drawn)}.png"
        try:
            samples = training_samples(cfg, n)
            h, w = samples[0][1].shape[:2]
            draw(samples, cfg.augmentation, file, seed,
                 f"augmentation={name} at {w}x{h}: each transform forced on (p=1), then the whole "
                 f"preset; seed {seed}")
        except (SegbenchError, OSError) as err:
            notes.append(f"no augmentation preview of {name}: its run's data could not be read "
                         f"here ({err})")
            continue
        drawn.append((name, file.name))
    return drawn, notes
