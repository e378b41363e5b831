"""The real-format loaders on the shared samples: counts, order, splits, shapes and value ranges."""

from __future__ import annotations

import logging
import re
import shutil
import tarfile

import cv2
import numpy as np
import pytest
import tifffile

from datasets_util import LGG, LUNG, compose_cfg, folder_dataset, kvasir_copy, lgg_patients
from segbench import SegbenchError
from segbench.data import build_datasets, list_splits
from segbench.data import lung_ct as lung_module
from segbench.data.lgg_mri import patient_of

LGG_SLICES = {"TCGA_CS_4941": 23, "TCGA_DU_5849": 38, "TCGA_FG_5962": 51, "TCGA_HT_7473": 32}


def lgg_cfg(*overrides, root=LGG):
    return compose_cfg("dataset=lgg_mri", f"dataset.root={root}", "resolution='64'", *overrides)


def lung_cfg(*overrides, root=LUNG):
    return compose_cfg("dataset=lung_ct", f"dataset.root={root}", "resolution='64'", *overrides)


def groups_of(samples):
    return {s.group for s in samples}


# --- LGG brain MRI -------------------------------------------------------------------------------

def test_lgg_counts_and_patient_split():
    splits = list_splits(lgg_cfg())
    assert sum(len(v) for v in splits.values()) == sum(LGG_SLICES.values()) == 144
    # 4 patients with the defaults (test 0.2, val 0.2): 2 train, 1 val, 1 test, none shared.
    assert [len(groups_of(splits[k])) for k in ("train", "val", "test")] == [2, 1, 1]
    for split in splits.values():
        for patient in groups_of(split):
            assert sum(s.group == patient for s in split) == LGG_SLICES[patient]  # whole patients


@pytest.mark.parametrize("seed", range(6))
def test_lgg_no_patient_in_two_splits(seed):
    splits = list_splits(lgg_cfg(f"dataset.split_seed={seed}"))
    train, val, test = (groups_of(splits[k]) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(LGG_SLICES)


def test_lgg_slices_in_numeric_order():
    splits = list_splits(lgg_cfg())
    for split in splits.values():
        for patient in groups_of(split):
            numbers = [int(re.search(r"_(\d+)$", s.id)[1]) for s in split if s.group == patient]
            assert numbers == list(range(1, LGG_SLICES[patient] + 1))  # 9, 10, 11 - not 1, 10, 11
            ids = [s.id for s in split if s.group == patient]
            assert ids.index(f"{ids[0][:-2]}_9") + 1 == ids.index(f"{ids[0][:-2]}_10")


def test_lgg_patient_is_folder_without_date():
    assert patient_of("TCGA_CS_4941_19960909") == "TCGA_CS_4941"
    assert patient_of("my_volume") == "my_volume"


def test_lgg_train_fraction_takes_whole_patients_and_keeps_val_and_test():
    full = list_splits(lgg_cfg("dataset.test_fraction=0.25", "dataset.val_fraction=0.34"))
    half = list_splits(lgg_cfg("dataset.test_fraction=0.25", "dataset.val_fraction=0.34",
                               "dataset.train_fraction=0.5"))
    assert len(groups_of(full["train"])) == 2 and len(groups_of(half["train"])) == 1
    patient = groups_of(half["train"]).pop()
    assert len(half["train"]) == LGG_SLICES[patient]
    assert {s.id for s in half["train"]} < {s.id for s in full["train"]}  # a subset, nested
    for split in ("val", "test"):
        assert [s.id for s in half[split]] == [s.id for s in full[split]]


def test_lgg_images_and_masks_decode(tmp_path):
    cfg = lgg_cfg()
    splits = list_splits(cfg)
    data = build_datasets(cfg, splits, tmp_path, augment=False)
    train = data["train"]
    assert train.images.shape == (len(splits["train"]), 64, 64, 3) and train.images.dtype == np.uint8
    assert set(np.unique(train.masks).tolist()) == {0, 1}
    image, mask, _ = train[0]
    assert tuple(image.shape) == (3, 64, 64) and tuple(mask.shape) == (1, 64, 64)
    # Most slices are empty, but some carry tumour.
    has_tumour = np.asarray(train.masks).reshape(len(train), -1).any(1)
    assert 0 < has_tumour.sum() < len(train)


def test_lgg_root_may_be_kaggle_3m_or_the_kaggle_copy(tmp_path):
    assert len(list_splits(lgg_cfg(root=LGG / "kaggle_3m"))["test"]) > 0
    nested = tmp_path / "lgg-mri-segmentation"
    nested.mkdir()
    (nested / "kaggle_3m").symlink_to(LGG / "kaggle_3m")
    assert sum(len(v) for v in list_splits(lgg_cfg(root=tmp_path)).values()) == 144


def test_lgg_too_few_patients_is_a_clear_error(tmp_path):
    root = lgg_patients(tmp_path, ["TCGA_CS", "TCGA_DU"])
    with pytest.raises(SegbenchError, match=r"2 patients: too few to split .*at least 3"):
        list_splits(lgg_cfg(root=root))


def test_lgg_three_patients_split_one_each(tmp_path):
    root = lgg_patients(tmp_path, ["TCGA_CS", "TCGA_DU", "TCGA_HT"])
    splits = list_splits(lgg_cfg(root=root))
    assert [len(groups_of(splits[k])) for k in ("train", "val", "test")] == [1, 1, 1]


# --- Lung CT -------------------------------------------------------------------------------------

def test_lung_counts_and_seeded_split():
    splits = list_splits(lung_cfg())
    assert {k: len(v) for k, v in splits.items()} == {"train": 15, "val": 4, "test": 5}
    again = list_splits(lung_cfg())
    assert [s.id for s in again["test"]] == [s.id for s in splits["test"]]
    other = list_splits(lung_cfg("dataset.split_seed=3"))
    assert [s.id for s in other["test"]] != [s.id for s in splits["test"]]
    # The test split does not move when validation or training fractions change.
    varied = list_splits(lung_cfg("dataset.val_fraction=0.5", "dataset.train_fraction=0.5"))
    assert [s.id for s in varied["test"]] == [s.id for s in splits["test"]]


def test_lung_train_fraction_sizes():
    full = list_splits(lung_cfg())
    for fraction, expected in ((0.5, 8), (0.2, 3), (1.0, 15)):
        part = list_splits(lung_cfg(f"dataset.train_fraction={fraction}"))
        assert len(part["train"]) == expected
        assert {s.id for s in part["train"]} <= {s.id for s in full["train"]}
        assert [s.id for s in part["val"]] == [s.id for s in full["val"]]
        assert [s.id for s in part["test"]] == [s.id for s in full["test"]]


def test_lung_hu_window_maps_to_unit_range():
    assert lung_module.to_unit_range(np.array([-2000, -1000, -300, 400, 3000]), -1000, 400).tolist() \
        == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_lung_windowed_images_are_not_saturated():
    cfg = lung_cfg()
    sample = list_splits(cfg)["train"][0]
    hu = tifffile.imread(sample.image)
    assert hu.dtype == np.int16 and hu.min() < -900 and hu.max() > 400  # the raw trap
    image, mask, values = lung_module.read(sample, cfg.dataset)
    assert image.shape == (512, 512, 1) and image.dtype == np.uint8
    assert values == {0, 255} and set(np.unique(mask).tolist()) == {0, 1}
    x = image[..., 0].astype(np.float32) / 255
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert len(np.unique(image)) > 150            # a full grey scale, not a few levels
    assert (image == 255).mean() < 0.05           # bone/metal clipped, the body is not
    lungs, body = x[mask == 1].mean(), x[(mask == 0) & (x > 0.5)].mean()
    assert lungs < 0.3 < 0.6 < body               # air-filled lungs dark, soft tissue bright
    assert len(np.unique(image[mask == 1])) > 50  # lung texture kept, not one dark level


def test_lung_channels_replicated_to_three(tmp_path):
    cfg = lung_cfg("dataset.channels=3")
    splits = list_splits(cfg)
    data = build_datasets(cfg, {"test": splits["test"]}, tmp_path, augment=False)
    images = np.asarray(data["test"].images)
    assert images.shape == (5, 64, 64, 3)
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()
    assert compose_cfg("dataset=lung_ct", "dataset.channels=3").model.in_channels == 3


def test_lung_bad_window_and_8bit_slices(tmp_path):
    cfg = lung_cfg("dataset.window=[400,-1000]")
    sample = list_splits(cfg)["test"][0]
    with pytest.raises(SegbenchError, match=r"low < high"):
        lung_module.read(sample, cfg.dataset)
    (tmp_path / "2d_images").mkdir()
    (tmp_path / "2d_masks").mkdir()
    for i in range(4):
        tifffile.imwrite(tmp_path / "2d_images" / f"s{i}.tif", np.zeros((16, 16), np.uint8))
        tifffile.imwrite(tmp_path / "2d_masks" / f"s{i}.tif", np.zeros((16, 16), np.uint8))
    cfg = lung_cfg(root=tmp_path)
    with pytest.raises(SegbenchError, match=r"8-bit pixels, not Hounsfield units.*dataset=folder"):
        lung_module.read(list_splits(cfg)["test"][0], cfg.dataset)


# --- Kvasir-Instrument ---------------------------------------------------------------------------

def test_kvasir_official_split_and_rgb_masks(tmp_path, caplog):
    root = kvasir_copy(tmp_path / "kvasir")
    cfg = compose_cfg("dataset=kvasir_instrument", f"dataset.root={root}", "resolution='64'")
    with caplog.at_level(logging.WARNING):
        splits = list_splits(cfg)
    # 18 masks on disk: 15 listed in train.txt, 3 in test.txt; the other 572 ids are absent.
    assert len(splits["test"]) == 3 and len(splits["train"]) + len(splits["val"]) == 15
    assert len(splits["val"]) == 3
    test_ids = set((root / "test.txt").read_text().split())
    assert {s.id for s in splits["test"]} <= test_ids
    assert not {s.id for s in splits["train"] + splits["val"]} & test_ids
    assert "572 of the 590 listed ids have no image/mask files" in caplog.text
    data = build_datasets(cfg, splits, tmp_path / "cache", augment=False)
    for name in ("train", "val", "test"):
        assert data[name].images.shape[1:] == (64, 64, 3)
        assert set(np.unique(data[name].masks).tolist()) == {0, 1}


def test_kvasir_publisher_folder_and_unextracted_tarballs(tmp_path):
    root = tmp_path / "root"
    kvasir_copy(root / "kvasir-instrument")  # the folder inside kvasir-instrument.zip
    cfg = compose_cfg("dataset=kvasir_instrument", f"dataset.root={root}")
    assert len(list_splits(cfg)["test"]) == 3
    folder = root / "kvasir-instrument"
    with tarfile.open(folder / "images.tar.gz", "w:gz") as tar:
        tar.add(folder / "images", arcname="images")
    shutil.rmtree(folder / "images")
    with pytest.raises(SegbenchError, match=r"images\.tar\.gz is not extracted.*segbench download"):
        list_splits(cfg)


# --- Folder (own data) ---------------------------------------------------------------------------

def test_folder_seeded_split_and_mixed_extensions(tmp_path):
    root = folder_dataset(tmp_path / "mine", n=10, ext=".jpg")
    cfg = compose_cfg("dataset=folder", f"dataset.root={root}", "resolution='64'")
    splits = list_splits(cfg)
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "val": 2, "test": 2}
    data = build_datasets(cfg, splits, tmp_path / "cache", augment=False)
    assert data["train"].images.shape == (6, 64, 64, 3)


def test_folder_split_files_mask_suffix_and_groups(tmp_path):
    root = tmp_path / "mine"
    folder_dataset(root, n=9)
    for path in (root / "masks").iterdir():
        path.rename(path.with_name(f"{path.stem}_mask.png"))
    for path in (root / "images").iterdir():  # case<i> -> p<i//3>_s<i>: 3 patients of 3 images
        i = int(path.stem[4:])
        path.rename(path.with_name(f"p{i // 3}_s{i}.png"))
        (root / "masks" / f"case{i}_mask.png").rename(root / "masks" / f"p{i // 3}_s{i}_mask.png")
    (root / "train.txt").write_text("p0_s0\np0_s1\np0_s2\np1_s3.png\np1_s4\np1_s5\n")
    (root / "test.txt").write_text("p2_s6\np2_s7\np2_s8\n")
    cfg = compose_cfg("dataset=folder", f"dataset.root={root}", "dataset.mask_suffix=_mask",
                      r"dataset.group_pattern='^(p\d+)_'", "dataset.val_fraction=0.5")
    splits = list_splits(cfg)
    assert [s.id for s in splits["test"]] == ["p2_s6", "p2_s7", "p2_s8"]
    assert {len(groups_of(splits["train"])), len(groups_of(splits["val"]))} == {1}
    assert groups_of(splits["train"]) | groups_of(splits["val"]) == {"p0", "p1"}
    (root / "train.txt").write_text("p0_s0\np0_s1\np0_s2\np1_s3\np1_s4\n")
    (root / "val.txt").write_text("p1_s5\n")  # its own validation split, cutting patient p1
    with pytest.raises(SegbenchError, match=r"train and val splits share .*p1"):
        list_splits(cfg)
    (root / "train.txt").write_text("p0_s0\np0_s1\np0_s2\n")
    (root / "val.txt").write_text("p1_s3\np1_s4\np1_s5\n")
    splits = list_splits(cfg)
    assert [s.id for s in splits["val"]] == ["p1_s3", "p1_s4", "p1_s5"]
    assert groups_of(splits["train"]) == {"p0"}


def test_folder_grey_images_replicated(tmp_path):
    root = folder_dataset(tmp_path / "mine", n=6)
    for path in (root / "images").iterdir():
        cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    cfg = compose_cfg("dataset=folder", f"dataset.root={root}", "resolution='64'")
    data = build_datasets(cfg, list_splits(cfg), None, augment=False)
    images = np.asarray(data["train"].images)
    assert images.shape[-1] == 3 and (images[..., 0] == images[..., 2]).all()
