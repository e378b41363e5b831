"""Kvasir-Instrument (Jha et al., MMM 2021): 590 colonoscopy frames with instrument masks.

Layout, as the publisher's kvasir-instrument.zip unpacks once its two tarballs are extracted
(`segbench download dataset=kvasir_instrument` does both):
  <root>/images/<id>.jpg   <root>/masks/<id>.png   <root>/train.txt   <root>/test.txt
The masks are RGB PNGs with three identical channels (any channel > 0 is foreground) and the
frames range from about 571x532 to 1920x1072. The test split is the dataset's test.txt;
validation is carved from train.txt's ids (dataset.val_fraction, dataset.split_seed).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from segbench import SegbenchError
from segbench.data.files import assign, files_by_stem, find_layout, pair, read_ids, require_root
from segbench.data.source import Sample

LAYOUT = """  <root>/images/<id>.jpg
  <root>/masks/<id>.png
  <root>/train.txt  <root>/test.txt   (the dataset's split: one id per line)"""
GET = ("Get it with `segbench download dataset=kvasir_instrument` (or point dataset.root at "
       "an unpacked copy)")
NESTED = ("kvasir-instrument",)  # the folder inside the publisher's zip


def has_split_files(cfg: DictConfig) -> bool:
    """The dataset's own test.txt is its test split (also as an external set)."""
    return True


def locate(root) -> Path:
    """The folder holding images/, masks/, train.txt and test.txt."""
    root = require_root(root, "kvasir_instrument", LAYOUT, GET)
    folder = find_layout(root, "train.txt", NESTED) or find_layout(root, "images.tar.gz", NESTED)
    if folder is None:
        raise SegbenchError(f"dataset kvasir_instrument: no train.txt under {root}. Expected "
                            f"layout:\n{LAYOUT}\n{GET}")
    for part in ("images", "masks"):
        if (folder / part).is_dir():
            continue
        if (folder / f"{part}.tar.gz").is_file():
            raise SegbenchError(
                f"dataset kvasir_instrument: {folder / part}.tar.gz is not extracted. Run "
                f"`segbench download dataset=kvasir_instrument dataset.root={root}` (it extracts "
                f"what is there) or `tar -xzf {folder / part}.tar.gz -C {folder}`")
        raise SegbenchError(f"dataset kvasir_instrument: {folder / part}/ is missing. Expected "
                            f"layout:\n{LAYOUT}\n{GET}")
    for split in ("train", "test"):
        if not (folder / f"{split}.txt").is_file():
            raise SegbenchError(f"dataset kvasir_instrument: {folder / split}.txt is missing; it "
                                f"comes with the dataset. Expected layout:\n{LAYOUT}\n{GET}")
    return folder


def list_splits(cfg: DictConfig) -> dict[str, list[Sample]]:
    folder = locate(cfg.root)
    where = f"kvasir_instrument ({folder})"
    pairs = pair(files_by_stem(folder / "images"), files_by_stem(folder / "masks"),
                 cfg.get("on_unpaired", "error"), where)
    lists = {split: read_ids(folder / f"{split}.txt") for split in ("train", "test")}
    return {split: [Sample(i, image, mask) for i, image, mask in items]
            for split, items in assign(pairs, lists, where).items()}
