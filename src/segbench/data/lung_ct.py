"""Lung CT (Kaggle kmader/finding-lungs-in-ct-data): 267 axial CT slices with lung masks.

Layout, the Kaggle archive unzipped into <root>:
  <root>/2d_images/<ID_XXXX_Z_YYYY>.tif   512x512 int16 Hounsfield units
  <root>/2d_masks/<ID_XXXX_Z_YYYY>.tif    512x512 uint8 {0,255}
The pixels are Hounsfield units (air about -1000, outside the scan down to -2000 or below,
bone and metal up to ~5500), not an 8-bit picture: `dataset.window: [lo, hi]` maps HU
linearly onto [0, 1] (clipped) before the uint8 cache, instead of scaling the whole range.
Grey slices go to the model as 1 channel or replicated to 3 (`dataset.channels`). The test
split is a seeded share of the images (dataset.test_fraction, dataset.split_seed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from segbench import SegbenchError
from segbench.data.files import files_by_stem, find_layout, pair, require_root
from segbench.data.io import read_array, read_mask
from segbench.data.source import Sample
from segbench.data.splits import carve_test

LAYOUT = """  <root>/2d_images/<name>.tif   (int16 Hounsfield units)
  <root>/2d_masks/<name>.tif    (same names)"""
GET = ("Get it from Kaggle (kmader/finding-lungs-in-ct-data): `segbench download "
       "dataset=lung_ct` uses the Kaggle API or prints the manual steps")


def locate(root) -> Path:
    root = require_root(root, "lung_ct", LAYOUT, GET)
    folder = find_layout(root, "2d_images", ("finding-lungs-in-ct-data",))
    if folder is None:
        zipped = find_layout(root, "2d_images.zip", ("finding-lungs-in-ct-data",))
        hint = (f" {zipped / '2d_images.zip'} is there: unzip it and 2d_masks.zip into {zipped}, "
                "or run `segbench download dataset=lung_ct` to do it." if zipped else "")
        raise SegbenchError(f"dataset lung_ct: no 2d_images/ folder under {root}.{hint} "
                            f"Expected layout:\n{LAYOUT}\n{GET}")
    if not (folder / "2d_masks").is_dir():
        raise SegbenchError(f"dataset lung_ct: {folder / '2d_masks'}/ is missing. Expected "
                            f"layout:\n{LAYOUT}\n{GET}")
    return folder


def list_splits(cfg: DictConfig) -> dict[str, list[Sample]]:
    folder = locate(cfg.root)
    pairs = pair(files_by_stem(folder / "2d_images", (".tif", ".tiff")),
                 files_by_stem(folder / "2d_masks", (".tif", ".tiff")),
                 cfg.get("on_unpaired", "error"), f"lung_ct ({folder})")
    samples = [Sample(i, image, mask) for i, image, mask in pairs]
    train, test = carve_test(samples, float(cfg.test_fraction), int(cfg.split_seed))
    return {"train": train, "test": test}


def window(cfg: DictConfig) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in cfg.window)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not lo < hi:
        raise SegbenchError(f"dataset.window={list(cfg.window)}: give [low, high] in Hounsfield "
                            "units with low < high, e.g. [-1000, 400] (lung)")
    return lo, hi


def to_unit_range(hu: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """HU -> [0, 1]: lo and below 0, hi and above 1, linear between."""
    return np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def read_image(path: Path, cfg: DictConfig) -> np.ndarray:
    """A CT slice in HU, windowed into uint8 HxWxchannels (also what `segbench predict` uses)."""
    hu = read_array(path)
    if hu.dtype == np.uint8:
        raise SegbenchError(
            f"{path} holds 8-bit pixels, not Hounsfield units: lung_ct windows raw CT "
            "values. For 8-bit slices use dataset=folder dataset.root=<their folder>")
    if hu.ndim == 3:
        if hu.shape[2] != 1:
            raise SegbenchError(f"{path}: a CT slice has one channel, this one has {hu.shape[2]}")
        hu = hu[..., 0]
    if hu.dtype.kind == "f" and not np.isfinite(hu).all():  # NaN would window to 0 silently
        bad = int((~np.isfinite(hu)).sum())
        raise SegbenchError(f"{path} holds {bad} NaN or infinite pixel(s) of {hu.size}: a CT slice "
                            "holds numbers in Hounsfield units; replace them (e.g. by -1024, air) "
                            "or leave the slice out")
    lo, hi = window(cfg)
    image = (to_unit_range(hu, lo, hi) * 255).round().astype(np.uint8)[..., None]
    channels = int(cfg.channels)
    if channels not in (1, 3):
        raise SegbenchError(f"dataset.channels={channels}: CT slices go to the model as 1 "
                            "channel or replicated to 3")
    return np.repeat(image, channels, axis=2) if channels == 3 else image


def read(sample: Sample, cfg: DictConfig):
    image = read_image(sample.image, cfg)
    mask, values = read_mask(sample.mask)
    if mask.shape != image.shape[:2]:
        raise SegbenchError(f"image {sample.image} is {image.shape[1]}x{image.shape[0]} but its "
                            f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]}: a mask must "
                            "match its image's size")
    return image, mask, values


def reader_tag(cfg: DictConfig) -> str:
    lo, hi = window(cfg)
    return f"window={lo:g},{hi:g}"
