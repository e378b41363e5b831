"""Helpers for the dataset tests: composed configs, and small real-format datasets in tmp dirs."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
from hydra import compose, initialize_config_dir

from conftest import SHARED_DATA
from segbench import config_dir

KVASIR = SHARED_DATA / "kvasir_instrument_sample"
LGG = SHARED_DATA / "lgg_sample"
LUNG = SHARED_DATA / "lung_ct_sample"


def compose_cfg(*overrides: str, config: str = "train"):
    """The composed config, as the CLI would build it (numeric group choices quoted)."""
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(config, list(overrides))


def kvasir_copy(dest: Path) -> Path:
    """The shared Kvasir-Instrument sample (masks + split files) with a JPEG frame of each mask's
    size written beside it: the instrument brighter than the tissue, plus noise."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(KVASIR / "masks", dest / "masks")
    for name in ("train.txt", "test.txt"):
        shutil.copy(KVASIR / name, dest / name)
    (dest / "images").mkdir()
    rng = np.random.default_rng(0)
    for mask_path in sorted((dest / "masks").glob("*.png")):
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 0
        image = np.full((*mask.shape, 3), (60, 70, 160), np.uint8)  # BGR reddish tissue
        image[mask] = (190, 190, 190)
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(dest / "images" / f"{mask_path.stem}.jpg"), image)
    return dest


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


def lgg_patients(dest: Path, patients: list[str]) -> Path:
    """A kaggle_3m folder holding (symlinks to) some of the shared sample's patient folders."""
    base = dest / "kaggle_3m"
    base.mkdir(parents=True)
    for folder in sorted((LGG / "kaggle_3m").iterdir()):
        if folder.is_dir() and any(folder.name.startswith(p) for p in patients):
            (base / folder.name).symlink_to(folder)
    return dest
