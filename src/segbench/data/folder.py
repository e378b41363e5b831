"""Your own data: a folder of images and a folder of masks, matched by file name.

Layout:
  <root>/images/<name>.<png|jpg|jpeg|tif|tiff|bmp>
  <root>/masks/<name><mask_suffix>.<png|jpg|jpeg|tif|tiff|bmp>   (mask_suffix "" or e.g. "_mask")
  <root>/train.txt  <root>/test.txt  [<root>/val.txt]   optional split files, one name per line
With split files the test (and validation) split is theirs; without them a seeded
`dataset.test_fraction` of the images is held out for testing. Masks are binary: any value
> 0 is foreground. `dataset.group_pattern`, a regular expression whose first group picks the
patient or volume out of a name (e.g. '^(patient\\d+)_'), keeps each group's images in one
split and adds per-volume metrics (per_volume.csv).
"""

from __future__ import annotations

import re

from omegaconf import DictConfig

from segbench import SegbenchError
from segbench.data.files import (
    assign,
    files_by_stem,
    listing,
    pair,
    read_ids,
    require_root,
)
from segbench.data.source import Sample
from segbench.data.splits import carve_test
from segbench.task import task_of

LAYOUT = """  <root>/images/<name>.png (or .jpg .jpeg .tif .tiff .bmp)
  <root>/masks/<name>.png   (same name; dataset.mask_suffix=_mask for <name>_mask.png)
  <root>/train.txt <root>/test.txt [<root>/val.txt]   (optional split files)"""
GET = "Put your images and masks there, or set dataset.root=<your folder>"


def _grouper(pattern: str | None):
    if not pattern:
        return lambda name: None
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise SegbenchError(f"dataset.group_pattern={pattern!r} is not a regular expression: "
                            f"{err}") from None
    if regex.groups < 1:
        raise SegbenchError(f"dataset.group_pattern={pattern!r} needs a (group) that picks the "
                            "patient/volume out of a name, e.g. '^(patient\\d+)_'")

    def group(name: str) -> str:
        match = regex.search(name)
        if match is None or match.group(1) is None:
            raise SegbenchError(f"dataset.group_pattern={pattern!r} does not match the image "
                                f"name {name!r}; every name needs a group")
        return match.group(1)

    return group


def _masks(cfg: DictConfig, mask_dir):
    """{name: mask path}; for a multilabel task with one folder per class (masks/<class>/), the
    first class's files, after checking that every class folder holds the same names."""
    strip = cfg.get("mask_suffix") or ""
    task = task_of(cfg)
    if task.kind != "multilabel" or not (mask_dir / task.names[0]).is_dir():
        return files_by_stem(mask_dir, strip=strip)
    per_class = {}
    for name in task.names:
        folder = mask_dir / name
        if not folder.is_dir():
            raise SegbenchError(f"dataset folder: {folder}/ is missing: a multilabel task with "
                                f"classes {', '.join(task.names)} needs one mask folder per class")
        per_class[name] = files_by_stem(folder, strip=strip)
    first = per_class[task.names[0]]
    for name, files in per_class.items():
        missing = sorted(set(first) - set(files))
        if missing:
            raise SegbenchError(f"dataset folder: {mask_dir / name}/ has no mask for "
                                f"{listing(missing, 5)} (class {name}); every class folder needs "
                                "one mask per image, an empty one where the class is absent")
    return first


def has_split_files(cfg: DictConfig) -> bool:
    """Whether the folder names its own split (train.txt, test.txt): an external set is then its
    test split, else every pair (segbench.inference.evaluation.external_samples)."""
    root = require_root(cfg.root, "folder", LAYOUT, GET)
    return any((root / f"{s}.txt").is_file() for s in ("train", "val", "test"))


def list_splits(cfg: DictConfig) -> dict[str, list[Sample]]:
    root = require_root(cfg.root, "folder", LAYOUT, GET)
    image_dir = root / cfg.get("images_dir", "images")
    mask_dir = root / cfg.get("masks_dir", "masks")
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise SegbenchError(f"dataset folder: {folder}/ is missing. Expected layout:\n{LAYOUT}")
    where = f"folder ({root})"
    pairs = pair(files_by_stem(image_dir), _masks(cfg, mask_dir),
                 cfg.get("on_unpaired", "error"), where)
    if not pairs:
        raise SegbenchError(f"dataset folder: no image/mask pairs in {image_dir} and {mask_dir}. "
                            f"Expected layout:\n{LAYOUT}")
    group = _grouper(cfg.get("group_pattern"))

    def samples(items):
        return [Sample(i, image, mask, group(i)) for i, image, mask in items]

    split_files = {s: root / f"{s}.txt" for s in ("train", "val", "test")}
    present = [s for s, path in split_files.items() if path.is_file()]
    if not present:
        train, test = carve_test(samples(pairs), float(cfg.test_fraction), int(cfg.split_seed),
                                 "patients" if cfg.get("group_pattern") else "images")
        return {"train": train, "test": test}
    if "train" not in present or "test" not in present:
        raise SegbenchError(f"dataset folder: {root} has {listing(f'{s}.txt' for s in present)} "
                            "but split files come as train.txt and test.txt (val.txt optional); "
                            "add the missing one or remove them for a seeded split")
    assigned = assign(pairs, {s: read_ids(split_files[s]) for s in present}, where)
    return {split: samples(items) for split, items in assigned.items()}
