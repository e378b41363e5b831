"""Helpers for the dataset tests: composed configs and small real-format datasets in tmp dirs
(the stand-ins of the real datasets are session fixtures in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from hydra import compose, initialize_config_dir

from segbench import config_dir
from segbench.commands.auto_options import resolve_auto_options


def compose_cfg(*overrides: str, config: str = "train"):
    """The composed config, as the CLI would build it (numeric group choices quoted; train's
    `auto` options resolved to the dataset's, as the train command does)."""
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(config, list(overrides))
    if config == "train":
        resolve_auto_options(cfg)
    return cfg


def folder_dataset(dest: Path, n: int = 8, size: int = 40, mask_values=(0, 255),
                   ext: str = ".png") -> Path:
    """images/ and masks/ with n pairs named case<i>: a bright square on noise."""
    (dest / "images").mkdir(parents=True)
    (dest / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        mask = np.full((size, size), mask_values[0], np.uint8)
        r = 4 + i % 5
        mask[r : size - r, r : size // 2 + r] = mask_values[-1]
        image = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
        image[mask > 0] += 120
        cv2.imwrite(str(dest / "images" / f"case{i}{ext}"), image)
        cv2.imwrite(str(dest / "masks" / f"case{i}.png"), mask)
    return dest


def lgg_patients(dest: Path, source: Path, patients: list[str]) -> Path:
    """A kaggle_3m folder holding (symlinks to) some patient folders of source/kaggle_3m."""
    base = dest / "kaggle_3m"
    base.mkdir(parents=True)
    for folder in sorted((Path(source) / "kaggle_3m").iterdir()):
        if folder.is_dir() and any(folder.name.startswith(p) for p in patients):
            (base / folder.name).symlink_to(folder)
    return dest


def symlink_lung(dest: Path, source: Path, names: list[str],
                 masks: list[str] | None = None) -> Path:
    """dest/2d_images and dest/2d_masks with symlinks to source's slices `names` (and the masks
    `masks`, default the same names): a lung CT copy to break without touching the source."""
    for part, chosen in (("2d_images", names), ("2d_masks", names if masks is None else masks)):
        (dest / part).mkdir(parents=True, exist_ok=True)
        for name in chosen:
            (dest / part / f"{name}.tif").symlink_to(Path(source) / part / f"{name}.tif")
    return dest
