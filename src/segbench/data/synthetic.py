"""Synthetic endoscopy-like frames with instrument masks: the offline default dataset.

Each frame is textured tissue (reddish, with folds, vessels, pale patches and vignetting) with one
to three instrument shafts entering from the border: shaded cylinders with a specular stripe,
sometimes with open jaws at the tip. `dataset.task=multiclass` labels shaft (1) and tip (2: the
last fifth of the shaft and the jaws) apart: configs/experiment/quickstart_multiclass.yaml.
Specular spots on the tissue, blur and sensor noise make pixel-level thresholds fail; the shapes
make it learnable. `difficulty` pushes tool colours
toward the tissue's, adds pale tissue patches and noise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from segbench import SegbenchError
from segbench.data.source import Sample

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the rendering changes: it invalidates generated folders


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled with cubic interpolation."""
    coarse = rng.uniform(-1, 1, (max(2, size // scale), max(2, size // scale))).astype(np.float32)
    return np.clip(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), -1, 1)


def _tissue(rng: np.random.Generator, size: int, difficulty: float) -> np.ndarray:
    base = np.array([0.78, 0.36, 0.30]) + rng.normal(0, 0.05, 3)  # reddish mucosa (RGB)
    img: np.ndarray = np.ones((size, size, 3), np.float32) * base
    folds = _smooth_noise(rng, size, 12)
    img *= (1 + 0.25 * folds)[..., None]
    fine = _smooth_noise(rng, size, 3)
    img *= (1 + 0.08 * fine)[..., None]
    # Pale, desaturated patches (mucus, fat, glare): grey like the tools, so colour alone fails.
    pale = np.clip(_smooth_noise(rng, size, 16) * 2 - (1.4 - 0.8 * difficulty), 0, 1)
    grey = img.mean(-1, keepdims=True) * rng.uniform(0.9, 1.3)
    img = img * (1 - pale[..., None]) + grey * pale[..., None]
    # Vessels: thin dark-red curves.
    for _ in range(rng.integers(2, 6)):
        pts = np.cumsum(rng.normal(0, size / 10, (8, 2)), axis=0) + rng.uniform(0, size, 2)
        line = np.zeros((size, size), np.float32)
        cv2.polylines(line, [pts.astype(np.int32)], False, 1.0, thickness=max(1, size // 96))
        vessel = cv2.GaussianBlur(line, (0, 0), 0.8)[..., None]
        img = img * (1 - 0.35 * vessel) + np.array([0.45, 0.08, 0.10]) * 0.35 * vessel
    return img


def _instrument(rng, size, img, mask, difficulty):
    """Draw one shaft entering from the border; updates img and mask in place."""
    side = rng.integers(4)
    t = rng.uniform(0.15, 0.85) * size
    start = [(t, -2), (size + 1, t), (t, size + 1), (-2, t)][side]
    centre = np.array([size / 2, size / 2]) + rng.normal(0, size / 8, 2)
    direction = centre - np.array(start)
    direction /= np.linalg.norm(direction)
    direction = _rotate(direction, rng.normal(0, 0.35))
    length = rng.uniform(0.35, 0.8) * size
    end = np.array(start) + direction * length
    width = rng.uniform(0.06, 0.14) * size

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    px, py = xx - start[0], yy - start[1]
    along = px * direction[0] + py * direction[1]
    across = -px * direction[1] + py * direction[0]
    shaft = (along >= 0) & (along <= length) & (np.abs(across) <= width / 2)
    tip_r = np.hypot(xx - end[0], yy - end[1])
    shaft |= tip_r <= width / 2  # rounded end
    shape = shaft.copy()
    # The tip (class 2 of the multiclass mode): the last fifth of the shaft, its rounded end and
    # the jaws. Drawn from the geometry alone, so the binary frames are unchanged by it.
    tip = shaft & ((along >= 0.8 * length) | (tip_r <= width / 2))
    if rng.random() < 0.5:  # open jaws at the tip
        for sign in (-1, 1):
            jaw_dir = _rotate(direction, sign * rng.uniform(0.25, 0.5))
            jaw_len = rng.uniform(0.12, 0.2) * size
            qx, qy = xx - end[0], yy - end[1]
            ja = qx * jaw_dir[0] + qy * jaw_dir[1]
            jc = -qx * jaw_dir[1] + qy * jaw_dir[0]
            jaw = (ja >= 0) & (ja <= jaw_len) & (np.abs(jc) <= width / 4)
            shape |= jaw
            tip |= jaw

    # Metallic or dark plastic, tinted toward the tissue colour by `difficulty`.
    metal = rng.random() < 0.6
    base = np.array([0.62, 0.64, 0.68]) if metal else np.array([0.16, 0.17, 0.2])
    base = base * rng.uniform(0.8, 1.15)
    tissue_mean = img[shape].mean(0) if shape.any() else base
    tint = np.clip(rng.uniform(0.1, 0.45) * difficulty + 0.1, 0, 0.75)
    colour = (1 - tint) * base + tint * tissue_mean
    # Cylindrical shading across the shaft, and a specular stripe.
    u = np.clip(across / (width / 2), -1, 1)
    shade = 0.55 + 0.45 * np.sqrt(1 - u**2)
    stripe_pos = rng.uniform(-0.5, 0.5)
    stripe = np.exp(-(((u - stripe_pos) / 0.12) ** 2)) * rng.uniform(0.2, 0.6)
    tool = colour * shade[..., None] + stripe[..., None]
    # Soft shadow of the tool on the tissue next to it.
    shadow = cv2.GaussianBlur(shape.astype(np.float32), (0, 0), width / 3)
    img *= (1 - 0.35 * shadow * (~shape))[..., None]
    img[shape] = tool[shape]
    mask[shape] = 1
    mask[tip] = 2


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def render(rng: np.random.Generator, size: int, difficulty: float) -> tuple[np.ndarray, np.ndarray]:
    """One frame: (uint8 HxWx3 RGB image, uint8 HxW labels: 0 tissue, 1 shaft, 2 tip)."""
    img: np.ndarray = _tissue(rng, size, difficulty)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])):
        _instrument(rng, size, img, mask, difficulty)
    # Specular highlights anywhere (tissue and tools): tiny saturated white blobs.
    for _ in range(rng.integers(2, 8)):
        c = rng.uniform(0, size, 2)
        axes = rng.uniform(0.005, 0.02, 2) * size
        spot = np.zeros((size, size), np.float32)
        cv2.ellipse(spot, (int(c[0]), int(c[1])), (max(1, int(axes[0])), max(1, int(axes[1]))),
                    rng.uniform(0, 180), 0, 360, 1.0, -1)
        img = np.maximum(img, cv2.GaussianBlur(spot, (0, 0), 1.0)[..., None])
    # Endoscope vignetting, blur and sensor noise.
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    img *= (1 - rng.uniform(0.6, 1.0) * (xx**2 + yy**2))[..., None]
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.6 + difficulty))
    # OpenCV's stubs type its result as an integer or float array; a blurred float image is float
    img += rng.normal(0, 0.01 + 0.03 * difficulty, img.shape)  # type: ignore[arg-type]
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), mask


def generate(root: Path, *, seed: int, num_train: int, num_test: int, image_size: int,
             difficulty: float, labels: bool = False) -> Path:
    """`labels`: masks hold 0 (tissue), 1 (shaft), 2 (tip) instead of 0/255."""
    # Write the frames into a folder named by its parameters (reused when it exists).
    if not 0.0 <= difficulty <= 1.0:
        raise SegbenchError(f"dataset.difficulty must be in [0, 1], got {difficulty}")
    if num_train < 2 or num_test < 1:
        raise SegbenchError("dataset.num_train must be >= 2 and dataset.num_test >= 1")
    if image_size < 32:
        raise SegbenchError(f"dataset.image_size must be >= 32, got {image_size}")
    params: dict[str, object] = dict(seed=seed, num_train=num_train, num_test=num_test,
                                     image_size=image_size, difficulty=difficulty,
                                     version=GENERATOR_VERSION)
    if labels:  # binary folders keep their names (and caches) from before the multiclass mode
        params["labels"] = "tissue,shaft,tip"
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(root).expanduser() / key
    if (folder / "params.json").is_file():
        return folder
    tmp = folder.with_name(f"{key}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    log.info("generating %d synthetic frames (%dx%d) into %s", num_train + num_test,
             image_size, image_size, folder)
    # One child generator per frame: frame i is the same whatever the counts.
    rngs = np.random.SeedSequence(seed).spawn(num_train + num_test)
    for i, ss in enumerate(rngs):
        img, mask = render(np.random.default_rng(ss), image_size, difficulty)
        name = f"{'train' if i < num_train else 'test'}_{i:05d}.png"
        cv2.imwrite(str(tmp / "images" / name), img[..., ::-1])
        stored = mask if labels else (mask > 0).astype(np.uint8) * 255
        cv2.imwrite(str(tmp / "masks" / name), stored)
    (tmp / "params.json").write_text(json.dumps(params, indent=2))
    try:
        tmp.rename(folder)
    except OSError:  # another process generated it first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def list_splits(cfg) -> dict[str, list[Sample]]:
    folder = generate(Path(cfg.root), seed=cfg.seed, num_train=cfg.num_train,
                      num_test=cfg.num_test, image_size=cfg.image_size,
                      difficulty=float(cfg.difficulty),
                      labels=cfg.get("task", "binary") == "multiclass")
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for path in sorted((folder / "images").glob("*.png")):
        split = path.stem.split("_")[0]
        splits[split].append(Sample(path.stem, path, folder / "masks" / path.name))
    return splits
