"""The real-format loaders: counts, order, splits, shapes and value ranges, on the generated
stand-ins (segbench.data.fixtures) and, where it is beside the repository, on the real shared
sample too (the tests taking a *_source fixture; the shared ones are marked shared_data)."""

from __future__ import annotations

import csv
import logging
import re
import shutil
import tarfile

import cv2
import numpy as np
import pytest
import tifffile

from datasets_util import compose_cfg, folder_dataset, lgg_patients
from segbench import SegbenchError
from segbench.data import build_datasets, fixtures, list_splits
from segbench.data import lung_ct as lung_module
from segbench.data.lgg_mri import patient_of


def lgg_cfg(*overrides, root):
    return compose_cfg("dataset=lgg_mri", f"dataset.root={root}", "resolution='64'", *overrides)


def lung_cfg(*overrides, root):
    return compose_cfg("dataset=lung_ct", f"dataset.root={root}", "resolution='64'", *overrides)


def kvasir_cfg(*overrides, root):
    return compose_cfg("dataset=kvasir_instrument", f"dataset.root={root}", "resolution='64'",
                       *overrides)


def groups_of(samples):
    return {s.group for s in samples}


# --- LGG brain MRI -------------------------------------------------------------------------------

def test_lgg_counts_and_patient_split(lgg_source):
    slices = lgg_source.facts["slices"]
    splits = list_splits(lgg_cfg(root=lgg_source.root))
    assert sum(len(v) for v in splits.values()) == sum(slices.values())
    # 4 patients with the defaults (test 0.2, val 0.2): 2 train, 1 val, 1 test, none shared.
    assert [len(groups_of(splits[k])) for k in ("train", "val", "test")] == [2, 1, 1]
    for split in splits.values():
        for patient in groups_of(split):
            assert sum(s.group == patient for s in split) == slices[patient]  # whole patients


def test_lgg_stand_in_ids_and_folders(lgg_stand_in):
    """Every slice written is listed once, under its patient (the folder without its date)."""
    splits = list_splits(lgg_cfg(root=lgg_stand_in.root))
    samples = [s for split in splits.values() for s in split]
    assert sorted(s.id for s in samples) == list(lgg_stand_in.ids)
    for s in samples:
        assert s.id in lgg_stand_in.patients[s.group]
        assert s.image.parent.name.startswith(s.group) and s.mask.name == f"{s.id}_mask.tif"
    assert {patient.split("_")[1] for patient in lgg_stand_in.patients} == {"CS", "DU", "FG", "HT"}
    # data.csv beside the folders (the loader ignores it): one row per patient, by `Patient`.
    with open(lgg_stand_in.root / "kaggle_3m" / "data.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["Patient"] for r in rows] == sorted(lgg_stand_in.patients)
    assert all(None not in r and len(r) == len(fixtures.LGG_CSV_HEADER) for r in rows)


@pytest.mark.parametrize("seed", range(6))
def test_lgg_no_patient_in_two_splits(seed, lgg_stand_in):
    splits = list_splits(lgg_cfg(f"dataset.split_seed={seed}", root=lgg_stand_in.root))
    train, val, test = (groups_of(splits[k]) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(lgg_stand_in.patients)


def test_lgg_slices_in_numeric_order(lgg_source):
    slices = lgg_source.facts["slices"]
    assert max(slices.values()) >= 11  # the data has a slice 11, so 10 and 11 both follow 9
    splits = list_splits(lgg_cfg(root=lgg_source.root))
    for split in splits.values():
        for patient in groups_of(split):
            numbers = [int(re.search(r"_(\d+)$", s.id)[1]) for s in split if s.group == patient]
            assert numbers == list(range(1, slices[patient] + 1))  # 9, 10, 11 - not 1, 10, 11
            ids = [s.id for s in split if s.group == patient]
            assert ids.index(f"{ids[0][:-2]}_9") + 1 == ids.index(f"{ids[0][:-2]}_10")


def test_lgg_patient_is_folder_without_date():
    assert patient_of("TCGA_CS_4941_19960909") == "TCGA_CS_4941"
    assert patient_of("my_volume") == "my_volume"


def test_lgg_train_fraction_takes_whole_patients_and_keeps_val_and_test(lgg_stand_in):
    cfg = ("dataset.test_fraction=0.25", "dataset.val_fraction=0.34")
    full = list_splits(lgg_cfg(*cfg, root=lgg_stand_in.root))
    half = list_splits(lgg_cfg(*cfg, "dataset.train_fraction=0.5", root=lgg_stand_in.root))
    assert len(groups_of(full["train"])) == 2 and len(groups_of(half["train"])) == 1
    patient = groups_of(half["train"]).pop()
    assert [s.id for s in half["train"]] == list(lgg_stand_in.patients[patient])
    assert {s.id for s in half["train"]} < {s.id for s in full["train"]}  # a subset, nested
    for split in ("val", "test"):
        assert [s.id for s in half[split]] == [s.id for s in full[split]]


def test_lgg_images_and_masks_decode(tmp_path, lgg_source):
    cfg = lgg_cfg(root=lgg_source.root)
    splits = list_splits(cfg)
    data = build_datasets(cfg, splits, tmp_path, augment=False)
    train = data["train"]
    assert train.images.shape == (len(splits["train"]), 64, 64, 3)
    assert train.images.dtype == np.uint8
    assert set(np.unique(train.masks).tolist()) == {0, 1}
    image, mask, _ = train[0]
    assert tuple(image.shape) == (3, 64, 64) and tuple(mask.shape) == (1, 64, 64)
    # Most slices are empty, but some carry tumour.
    has_tumour = np.asarray(train.masks).reshape(len(train), -1).any(1)
    assert 0 < has_tumour.sum() < len(train)


def test_lgg_stand_in_masks_decode_where_written(tmp_path, lgg_stand_in):
    """At the files' own size, the slices with tumour are exactly those written with one, and
    the images are 3-channel uint8 (pre-contrast, FLAIR, post-contrast)."""
    cfg = lgg_cfg("resolution='256'", root=lgg_stand_in.root)
    splits = list_splits(cfg)
    samples = [s for split in splits.values() for s in split]
    data = build_datasets(cfg, splits, None, augment=False)
    masks = np.concatenate([np.asarray(data[k].masks) for k in splits])
    assert masks.shape == (len(lgg_stand_in.ids), 256, 256)
    written = [s.id in lgg_stand_in.foreground for s in samples]
    assert masks.reshape(len(samples), -1).any(1).tolist() == written
    assert 0 < sum(written) < len(written) / 2  # most slices have an empty mask
    image = tifffile.imread(samples[0].image)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert set(np.unique(tifffile.imread(samples[0].mask)).tolist()) <= {0, 255}


def test_lgg_root_may_be_kaggle_3m_or_the_kaggle_copy(tmp_path, lgg_stand_in):
    assert len(list_splits(lgg_cfg(root=lgg_stand_in.root / "kaggle_3m"))["test"]) > 0
    nested = tmp_path / "lgg-mri-segmentation"
    nested.mkdir()
    (nested / "kaggle_3m").symlink_to(lgg_stand_in.root / "kaggle_3m")
    listed = list_splits(lgg_cfg(root=tmp_path))
    assert sum(len(v) for v in listed.values()) == len(lgg_stand_in.ids)


def test_lgg_too_few_patients_is_a_clear_error(tmp_path, lgg_stand_in):
    root = lgg_patients(tmp_path, lgg_stand_in.root, ["TCGA_CS", "TCGA_DU"])
    with pytest.raises(SegbenchError, match=r"2 patients: too few to split .*at least 3"):
        list_splits(lgg_cfg(root=root))


def test_lgg_three_patients_split_one_each(tmp_path, lgg_stand_in):
    root = lgg_patients(tmp_path, lgg_stand_in.root, ["TCGA_CS", "TCGA_DU", "TCGA_HT"])
    splits = list_splits(lgg_cfg(root=root))
    assert [len(groups_of(splits[k])) for k in ("train", "val", "test")] == [1, 1, 1]


# --- Lung CT -------------------------------------------------------------------------------------

def test_lung_counts_and_seeded_split(lung_source):
    root = lung_source.root
    splits = list_splits(lung_cfg(root=root))
    assert len(lung_source.facts["ids"]) == 24
    assert sorted(s.id for v in splits.values() for s in v) == lung_source.facts["ids"]
    assert {k: len(v) for k, v in splits.items()} == {"train": 15, "val": 4, "test": 5}
    again = list_splits(lung_cfg(root=root))
    assert [s.id for s in again["test"]] == [s.id for s in splits["test"]]
    other = list_splits(lung_cfg("dataset.split_seed=3", root=root))
    assert [s.id for s in other["test"]] != [s.id for s in splits["test"]]
    # The test split does not move when validation or training fractions change.
    varied = list_splits(lung_cfg("dataset.val_fraction=0.5", "dataset.train_fraction=0.5",
                                  root=root))
    assert [s.id for s in varied["test"]] == [s.id for s in splits["test"]]


def test_lung_train_fraction_sizes(lung_stand_in):
    full = list_splits(lung_cfg(root=lung_stand_in.root))
    for fraction, expected in ((0.5, 8), (0.2, 3), (1.0, 15)):
        part = list_splits(lung_cfg(f"dataset.train_fraction={fraction}", root=lung_stand_in.root))
        assert len(part["train"]) == expected
        assert {s.id for s in part["train"]} <= {s.id for s in full["train"]}
        assert [s.id for s in part["val"]] == [s.id for s in full["val"]]
        assert [s.id for s in part["test"]] == [s.id for s in full["test"]]


def test_lung_hu_window_maps_to_unit_range():
    assert lung_module.to_unit_range(np.array([-2000, -1000, -300, 400, 3000]), -1000,
                                     400).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_lung_windowed_images_are_not_saturated(lung_source):
    cfg = lung_cfg(root=lung_source.root)
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


def test_lung_stand_in_files_are_hounsfield_slices(lung_stand_in):
    """The stand-in's formats, slice by slice: int16 HU within the real data's ranges (padding
    below -1500 in some slices, bone and calcification above 1000), uint8 {0, 255} masks of the
    same names with lungs in every slice, and lung_stats.csv rows that match the masks."""
    assert all(re.fullmatch(r"ID_\d{4}_Z_\d{4}", i) for i in lung_stand_in.ids)
    lows = []
    stats = (lung_stand_in.root / "lung_stats.csv").read_text().splitlines()
    assert stats[0].startswith("img_id,lung_area_px,") and len(stats) == len(lung_stand_in.ids) + 1
    for i, row in zip(lung_stand_in.ids, stats[1:], strict=True):
        hu = tifffile.imread(lung_stand_in.root / "2d_images" / f"{i}.tif")
        mask = tifffile.imread(lung_stand_in.root / "2d_masks" / f"{i}.tif")
        assert hu.shape == mask.shape == (512, 512) and hu.dtype == np.int16
        assert -2700 < hu.min() < -900 and 1000 < hu.max() < 6000
        assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) == {0, 255}
        assert row.split(",")[:2] == [f"{i}.tif", str(int((mask > 0).sum()))]
        lows.append(hu.min())
    assert min(lows) < -1500 < max(lows)  # some slices padded outside the scan circle, some not


def test_lung_channels_replicated_to_three(tmp_path, lung_stand_in):
    cfg = lung_cfg("dataset.channels=3", root=lung_stand_in.root)
    splits = list_splits(cfg)
    data = build_datasets(cfg, {"test": splits["test"]}, tmp_path, augment=False)
    images = np.asarray(data["test"].images)
    assert images.shape == (5, 64, 64, 3)
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()
    assert compose_cfg("dataset=lung_ct", "dataset.channels=3").model.in_channels == 3


def test_lung_bad_window_and_8bit_slices(tmp_path, lung_stand_in):
    cfg = lung_cfg("dataset.window=[400,-1000]", root=lung_stand_in.root)
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

def test_kvasir_official_split_and_rgb_masks(tmp_path, caplog, kvasir_source):
    facts, root = kvasir_source.facts, kvasir_source.root
    cfg = kvasir_cfg(root=root)
    with caplog.at_level(logging.WARNING):
        splits = list_splits(cfg)
    # The pairs on disk listed in train.txt go to train/val, those in test.txt to test.
    assert len(splits["test"]) == facts["test_files"]
    assert len(splits["train"]) + len(splits["val"]) == facts["train_files"]
    assert len(splits["val"]) == round(0.2 * facts["train_files"])
    test_ids = set((root / "test.txt").read_text().split())
    assert {s.id for s in splits["test"]} <= test_ids
    assert not {s.id for s in splits["train"] + splits["val"]} & test_ids
    missing = facts["listed"] - facts["files"]
    if missing:  # a partial copy (the shared sample) says so once
        assert (f"{missing} of the {facts['listed']} listed ids have no image/mask files"
                in caplog.text)
    else:
        assert "listed ids" not in caplog.text
    data = build_datasets(cfg, splits, tmp_path / "cache", augment=False)
    for name in ("train", "val", "test"):
        assert data[name].images.shape[1:] == (64, 64, 3)
        assert set(np.unique(data[name].masks).tolist()) == {0, 1}


def test_kvasir_stand_in_files_and_split_order(kvasir_stand_in):
    """Masks are RGB PNGs with three identical channels {0, 255} at the listed frame sizes,
    frames are JPEGs of the same size, and the test split keeps test.txt's order."""
    root, lists = kvasir_stand_in.root, kvasir_stand_in.split_files
    assert len(kvasir_stand_in.ids) == len(fixtures.KVASIR_SIZES)
    sizes = set(kvasir_stand_in.sizes.values())
    assert {(768, 576), (720, 576), (1920, 1072), (633, 531)} <= sizes
    for i, (width, height) in kvasir_stand_in.sizes.items():
        mask = cv2.imread(str(root / "masks" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (height, width, 3) and mask.dtype == np.uint8
        assert (mask[..., 0] == mask[..., 1]).all() and (mask[..., 1] == mask[..., 2]).all()
        assert set(np.unique(mask).tolist()) == {0, 255}
        frame = cv2.imread(str(root / "images" / f"{i}.jpg"), cv2.IMREAD_UNCHANGED)
        assert frame.shape == (height, width, 3)
        assert (root / "images" / f"{i}.jpg").read_bytes()[:2] == b"\xff\xd8"  # JPEG
    splits = list_splits(kvasir_cfg(root=root))
    assert [s.id for s in splits["test"]] == list(lists["test"])
    assert {s.id for s in splits["train"] + splits["val"]} == set(lists["train"])
    assert (root / "train.txt").read_text().splitlines() == list(lists["train"])


def test_kvasir_partial_copy_warns_with_the_count(tmp_path, caplog):
    """Ids listed without files (a partial copy) are left out with one warning counting them."""
    part = fixtures.write_kvasir_instrument(tmp_path / "part", sizes=[(720, 576)] * 4, n_test=1,
                                            listed_without_files=(5, 2))
    with caplog.at_level(logging.WARNING):
        splits = list_splits(kvasir_cfg(root=part.root))
    assert "7 of the 11 listed ids have no image/mask files" in caplog.text
    assert len(splits["test"]) == 1 and len(splits["train"]) + len(splits["val"]) == 3


def test_kvasir_publisher_folder_and_unextracted_tarballs(tmp_path, kvasir_stand_in):
    root = tmp_path / "root"
    # The folder inside kvasir-instrument.zip.
    shutil.copytree(kvasir_stand_in.root, root / "kvasir-instrument")
    cfg = compose_cfg("dataset=kvasir_instrument", f"dataset.root={root}")
    assert len(list_splits(cfg)["test"]) == len(kvasir_stand_in.split_files["test"])
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
