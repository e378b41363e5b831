"""Datasets: one module per source (listing its samples and splits), one shared pipeline after it.

A dataset module provides `list_splits(cfg) -> {"train": [...], "test": [...], ("val": [...])}`
of `Sample`s, and optionally `read(sample, cfg) -> (uint8 HxWxC image, uint8 HxW {0,1} mask,
mask values seen)`, `read_image(path, cfg) -> uint8 HxWxC` (the image part alone, for
`segbench predict`) and `reader_tag(cfg) -> str` (reader settings that change decoded pixels).
Everything after that (val carving, train_fraction, split.json, decode-once cache, augmentation)
is shared here.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import cast

from omegaconf import DictConfig

from segbench import SegbenchError
from segbench.data.cache import cached_arrays
from segbench.data.dataset import SegmentationDataset
from segbench.data.io import read_image, read_mask
from segbench.data.labels import check_binary, read_task_mask
from segbench.data.source import Sample
from segbench.data.splits import make_splits, split_settings
from segbench.data.transforms import build_augmentation
from segbench.registry import Registry
from segbench.task import BINARY, task_of

log = logging.getLogger(__name__)

# name -> the module that lists a dataset's samples (imported on first use).
DATASETS = Registry("dataset")
for _name in ("synthetic", "kvasir_instrument", "lgg_mri", "lung_ct", "folder"):
    DATASETS.register(_name, f"segbench.data.{_name}")
EXPECTED_MASK_VALUES = {0, 1, 255}


@dataclass
class Data:
    splits: dict[str, list[Sample]]
    datasets: dict[str, SegmentationDataset] = field(default_factory=dict)

    def __getitem__(self, split: str) -> SegmentationDataset:
        return self.datasets[split]


def list_datasets() -> list[str]:
    return DATASETS.names()


def dataset_module(dataset: DictConfig | str) -> ModuleType:
    """The module of a dataset config (its `name`, or a user's module named by `_target_`)."""
    if isinstance(dataset, str):
        return DATASETS.get(dataset)
    label, entry, _ = DATASETS.resolve({"name": dataset.get("name"),
                                        "_target_": dataset.get("_target_")})
    if not callable(getattr(entry, "list_splits", None)):  # a dataset is a module with list_splits
        raise SegbenchError(f"dataset {label} is not a dataset module: it has no list_splits(cfg) "
                            "(see docs/extending.md)")
    return cast(ModuleType, entry)  # the registry's entries are callables or modules


def default_read(sample: Sample, cfg: DictConfig):
    image = read_image(sample.image, int(cfg.channels))
    task = task_of(cfg)
    if task == BINARY:
        mask, values = read_mask(sample.mask)
        check_binary(values, sample.mask)
    else:
        mask, values = read_task_mask(sample.mask, task)
    if image.shape[:2] != mask.shape:
        raise SegbenchError(
            f"image {sample.image} is {image.shape[1]}x{image.shape[0]} but its mask {sample.mask} "
            f"is {mask.shape[1]}x{mask.shape[0]}: a mask must match its image's size"
        )
    return image, mask, values


def image_reader(cfg: DictConfig):
    """path -> uint8 HxWxC image as the run's dataset decodes it (CT windowing included)."""
    module = dataset_module(cfg.dataset)
    if hasattr(module, "read_image"):
        return lambda path: module.read_image(path, cfg.dataset)
    return lambda path: read_image(path, int(cfg.dataset.channels))


def native_masks(cfg: DictConfig, samples: list[Sample]) -> list:
    """The samples' masks as on disk (binary uint8, each at its own size), for evaluation at the
    native resolution."""
    read = getattr(dataset_module(cfg.dataset), "read", default_read)
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda s: read(s, cfg.dataset)[1], samples))


def list_splits(cfg: DictConfig, record: dict | None = None) -> dict[str, list[Sample]]:
    """train/val/test samples for the config's dataset (validation carved from training, or
    a cross-validation fold); `record` gets the fold assignment for split.json."""
    module = dataset_module(cfg.dataset)
    pools = module.list_splits(cfg.dataset)
    return make_splits(pools, **split_settings(cfg.dataset), record=record)


def select_splits(cfg: DictConfig, recorded: dict[str, list[str]], names: list[str]):
    """The recorded splits (split.json) of a run, checked against the data as it is now."""
    module = dataset_module(cfg.dataset)
    by_id = {s.id: s for pool in module.list_splits(cfg.dataset).values() for s in pool}
    out = {}
    for name in names:
        missing = [i for i in recorded[name] if i not in by_id]
        if missing:
            raise SegbenchError(
                f"{len(missing)} image(s) of the run's {name} split are not in the dataset any "
                f"more (first: {missing[:5]}); point data_root=<dir> at the data it was trained on"
            )
        out[name] = [by_id[i] for i in recorded[name]]
    return out


def build_datasets(cfg: DictConfig, splits: dict[str, list[Sample]], cache_root: Path | None,
                   augment: bool = True) -> Data:
    module = dataset_module(cfg.dataset)
    read = getattr(module, "read", default_read)
    tag = f"{cfg.dataset.name}|{cfg.dataset.channels}|" + (
        module.reader_tag(cfg.dataset) if hasattr(module, "reader_tag") else "")
    height, width = int(cfg.resolution.height), int(cfg.resolution.width)
    if min(height, width) < 8:
        raise SegbenchError(f"resolution {height}x{width} is too small: give resolution.height and "
                            "resolution.width of at least 8 pixels (e.g. resolution=64)")
    data = Data(splits)
    unexpected: set[int] = set()
    for name, samples in splits.items():
        images, masks, values = cached_arrays(
            samples, lambda s: read(s, cfg.dataset), height, width, int(cfg.dataset.channels),
            cache_root, tag)
        unexpected |= values - EXPECTED_MASK_VALUES
        transform = (build_augmentation(cfg.get("augmentation"), (height, width))
                     if augment and name == "train" else None)
        data.datasets[name] = SegmentationDataset(images, masks, [s.id for s in samples], transform)
    if unexpected and task_of(cfg.dataset) == BINARY:
        log.warning("masks hold values outside {0, 1, 255} (%s): binarized as value > 0",
                    sorted(unexpected)[:20])
    return data
