"""LGG brain MRI (Buda et al. 2019, TCGA/TCIA; Kaggle mateuszbuda/lgg-mri-segmentation).

110 patients' axial slices (pre-contrast, FLAIR, post-contrast as the 3 channels) with
FLAIR abnormality masks. Layout, the Kaggle archive unzipped into <root>:
  <root>/kaggle_3m/<patient folder>/<patient folder>_<N>.tif        256x256x3 uint8
  <root>/kaggle_3m/<patient folder>/<patient folder>_<N>_mask.tif   256x256 uint8 {0,255}
The archive holds a second copy under lgg-mri-segmentation/kaggle_3m/; either one is found.

Slices are ordered by N numerically (10 after 9). A sample's group is its patient (the
folder name without its date, data.csv's `Patient`): test (dataset.test_fraction), validation
and train_fraction all take whole patients, and test metrics pool each patient's slices into
a volume Dice (per_volume.csv).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from omegaconf import DictConfig

from segbench import SegbenchError
from segbench.data.files import files_by_stem, find_layout, listing, pair, require_root
from segbench.data.source import Sample
from segbench.data.splits import carve_test

log = logging.getLogger(__name__)

LAYOUT = """  <root>/kaggle_3m/<patient folder>/<patient folder>_<N>.tif
  <root>/kaggle_3m/<patient folder>/<patient folder>_<N>_mask.tif"""
GET = ("Get it from Kaggle (mateuszbuda/lgg-mri-segmentation): `segbench download "
       "dataset=lgg_mri` uses the Kaggle API or prints the manual steps")
SLICE = re.compile(r"^(?P<volume>.+)_(?P<n>\d+)$")


def patient_of(folder_name: str) -> str:
    """TCGA_CS_4941_19960909 -> TCGA_CS_4941: one patient's scans stay in one split."""
    head, _, tail = folder_name.rpartition("_")
    return head if head and len(tail) == 8 and tail.isdigit() else folder_name


def locate(root) -> Path:
    """The kaggle_3m folder (the one holding the patient folders)."""
    root = require_root(root, "lgg_mri", LAYOUT, GET)
    base = find_layout(root, "kaggle_3m", ("lgg-mri-segmentation",))
    if base is not None:
        return base / "kaggle_3m"
    if any(p.is_dir() and p.name.startswith("TCGA_") for p in root.iterdir()):
        return root  # dataset.root points at kaggle_3m itself
    raise SegbenchError(f"dataset lgg_mri: no kaggle_3m/ folder of patient folders under {root}. "
                        f"Expected layout:\n{LAYOUT}\n{GET}")


def _slice_number(sample: Sample) -> int:
    match = SLICE.match(sample.id)
    assert match is not None, f"{sample.id} was listed as a slice"
    return int(match["n"])


def list_splits(cfg: DictConfig) -> dict[str, list[Sample]]:
    base = locate(cfg.root)
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    volume_of: dict[str, str] = {}
    odd = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        tifs = files_by_stem(folder, (".tif", ".tiff"))
        for stem, path in tifs.items():
            key = stem[: -len("_mask")] if stem.endswith("_mask") else stem
            if not SLICE.match(key):
                odd.append(path.name)
                continue
            (masks if stem.endswith("_mask") else images)[key] = path
            volume_of[key] = folder.name
    if odd:
        log.warning("lgg_mri: %d file(s) not named <patient folder>_<N>[_mask].tif ignored: %s",
                    len(odd), listing(odd, 5))
    samples = [Sample(i, image, mask, group=patient_of(volume_of[i]))
               for i, image, mask in pair(images, masks, cfg.get("on_unpaired", "error"),
                                          f"lgg_mri ({base})")]
    if not samples:
        raise SegbenchError(f"dataset lgg_mri: no slices under {base}. Expected layout:\n"
                            f"{LAYOUT}\n{GET}")
    samples.sort(key=lambda s: (volume_of[s.id], _slice_number(s)))
    train, test = carve_test(samples, float(cfg.test_fraction), int(cfg.split_seed), "patients")
    return {"train": train, "test": test}
