"""Bad input gets a SegbenchError naming the problem and the fix (or one warning where the data
can still be used)."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from datasets_util import compose_cfg, folder_dataset, symlink_lung
from segbench import SegbenchError
from segbench.data import build_datasets, list_splits
from segbench.data.files import UnpairedFiles
from segbench.data.verify import quick_check


def folder_cfg(root, *overrides):
    return compose_cfg("dataset=folder", f"dataset.root={root}", "resolution='64'", *overrides)


@pytest.mark.parametrize("name", ["kvasir_instrument", "lgg_mri", "lung_ct"])
def test_missing_root_names_layout_and_download(tmp_path, name):
    cfg = compose_cfg(f"dataset={name}", f"dataset.root={tmp_path / 'nowhere'}")
    with pytest.raises(SegbenchError) as err:
        list_splits(cfg)
    message = str(err.value)
    assert "does not exist" in message and "Expected layout" in message
    assert f"segbench download dataset={name}" in message


def test_default_root_is_under_segbench_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_DATA", str(tmp_path))
    assert compose_cfg("dataset=lgg_mri").dataset.root == f"{tmp_path}/lgg_mri"
    monkeypatch.delenv("SEGBENCH_DATA")
    assert compose_cfg("dataset=lung_ct").dataset.root == "data/lung_ct"


def test_folder_missing_root_and_masks_folder(tmp_path):
    with pytest.raises(SegbenchError, match=r"does not exist.*Expected layout:\n.*images/"):
        list_splits(folder_cfg(tmp_path / "nowhere"))
    (tmp_path / "images").mkdir()
    with pytest.raises(SegbenchError, match=r"masks/ is missing"):
        list_splits(folder_cfg(tmp_path))


def test_unpaired_files_are_an_error_listing_them(tmp_path):
    root = folder_dataset(tmp_path / "mine", n=6)
    cv2.imwrite(str(root / "images" / "extra_image.png"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(root / "masks" / "extra_mask.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(UnpairedFiles) as err:
        list_splits(folder_cfg(root))
    message = str(err.value)
    assert "1 image(s) without a mask and 1 mask(s) without an image" in message
    assert "extra_image.png" in message and "extra_mask.png" in message
    assert "dataset.on_unpaired=skip" in message


def test_unpaired_lists_at_most_ten(tmp_path):
    root = folder_dataset(tmp_path / "mine", n=6)
    for i in range(13):
        cv2.imwrite(str(root / "images" / f"lonely{i:02d}.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(SegbenchError, match=r"lonely09\.png \.\.\. and 3 more") as err:
        list_splits(folder_cfg(root))
    assert "lonely10" not in str(err.value)


def test_unpaired_skip_warns_with_the_count(tmp_path, caplog):
    root = folder_dataset(tmp_path / "mine", n=6)
    for i in range(3):
        cv2.imwrite(str(root / "images" / f"lonely{i}.png"), np.zeros((8, 8), np.uint8))
    with caplog.at_level(logging.WARNING):
        splits = list_splits(folder_cfg(root, "dataset.on_unpaired=skip"))
    assert sum(len(v) for v in splits.values()) == 6
    assert "skipping 3 image(s) without a mask and 0 mask(s) without an image" in caplog.text


def test_unpaired_lung_slice(tmp_path, lung_stand_in):
    names = list(lung_stand_in.ids)
    symlink_lung(tmp_path, lung_stand_in.root, names, masks=names[1:])  # the first loses its mask
    cfg = compose_cfg("dataset=lung_ct", f"dataset.root={tmp_path}")
    with pytest.raises(UnpairedFiles, match=rf"1 image\(s\) without a mask.*{names[0]}\.tif"):
        list_splits(cfg)
    assert sum(len(v) for v in list_splits(
        compose_cfg("dataset=lung_ct", f"dataset.root={tmp_path}", "dataset.on_unpaired=skip")
    ).values()) == len(names) - 1
    with pytest.raises(SegbenchError, match="on_unpaired='maybe'; use error or skip"):
        list_splits(compose_cfg("dataset=lung_ct", f"dataset.root={tmp_path}",
                                "dataset.on_unpaired=maybe"))


@pytest.mark.parametrize("which", ["images", "masks"])
def test_corrupt_file_is_named(tmp_path, which):
    root = folder_dataset(tmp_path / "mine", n=6)
    bad = root / which / "case3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a png")
    cfg = folder_cfg(root)
    with pytest.raises(SegbenchError, match=r"case3\.png is truncated or corrupt"):
        build_datasets(cfg, list_splits(cfg), None)


def test_truncated_ct_slice_is_named(tmp_path, lung_stand_in):
    names = list(lung_stand_in.ids[:4])
    symlink_lung(tmp_path, lung_stand_in.root, names)
    victim = tmp_path / "2d_images" / f"{names[1]}.tif"
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data[: len(data) // 3])
    cfg = compose_cfg("dataset=lung_ct", f"dataset.root={tmp_path}", "resolution='64'")
    with pytest.raises(SegbenchError, match=rf"{names[1]}\.tif"):
        build_datasets(cfg, list_splits(cfg), None)


def test_odd_mask_values_are_binarized_with_one_warning(tmp_path, caplog):
    root = folder_dataset(tmp_path / "mine", n=6, mask_values=(0, 128))
    cfg = folder_cfg(root)
    with caplog.at_level(logging.WARNING):
        data = build_datasets(cfg, list_splits(cfg), None)
    warnings = [r.getMessage() for r in caplog.records if "outside {0, 1, 255}" in r.getMessage()]
    assert len(warnings) == 1 and "[128]" in warnings[0] and "binarized" in warnings[0]
    for name in ("train", "val", "test"):
        assert set(np.unique(data[name].masks).tolist()) == {0, 1}


def test_label_values_in_a_binary_task_are_an_error_naming_the_file(tmp_path):
    root = folder_dataset(tmp_path / "mine", n=6, mask_values=(0, 128))
    mask = cv2.imread(str(root / "masks" / "case1.png"), cv2.IMREAD_GRAYSCALE)
    mask[:2, :2] = 7
    cv2.imwrite(str(root / "masks" / "case1.png"), mask)
    cfg = folder_cfg(root)
    with pytest.raises(SegbenchError, match=r"case1\.png: mask holds the values 0, 7, 128.*"
                                            r"dataset\.task=multiclass dataset\.classes="):
        build_datasets(cfg, list_splits(cfg), None)


def test_binary_masks_raise_no_warning(tmp_path, caplog):
    root = folder_dataset(tmp_path / "mine", n=6, mask_values=(0, 1))
    cfg = folder_cfg(root)
    with caplog.at_level(logging.WARNING):
        build_datasets(cfg, list_splits(cfg), None)
    assert "outside" not in caplog.text


def test_empty_split_is_an_error(tmp_path):
    root = folder_dataset(tmp_path / "mine", n=6)
    (root / "train.txt").write_text("\n".join(f"case{i}" for i in range(6)))
    (root / "test.txt").write_text("someone_else\n")
    with pytest.raises(SegbenchError, match=r"the test split is empty"):
        list_splits(folder_cfg(root))
    (root / "test.txt").unlink()
    with pytest.raises(SegbenchError,
                       match=r"train\.txt but split files come as train\.txt and test\.txt"):
        list_splits(folder_cfg(root))


def test_too_small_and_bad_fractions(tmp_path):
    root = folder_dataset(tmp_path / "mine", n=2)
    with pytest.raises(SegbenchError, match=r"2 images: too few to split"):
        list_splits(folder_cfg(root))
    root = folder_dataset(tmp_path / "more", n=6)
    with pytest.raises(SegbenchError, match=r"train_fraction must be in \(0, 1\]"):
        list_splits(folder_cfg(root, "dataset.train_fraction=0"))
    with pytest.raises(SegbenchError, match=r"test_fraction must be in \(0, 1\)"):
        list_splits(folder_cfg(root, "dataset.test_fraction=1.5"))


def test_image_and_mask_of_different_sizes(tmp_path):
    root = folder_dataset(tmp_path / "mine", n=6)
    cv2.imwrite(str(root / "masks" / "case2.png"), np.zeros((20, 30), np.uint8))
    cfg = folder_cfg(root)
    with pytest.raises(SegbenchError, match=r"case2\.png is 30x20: a mask must match"):
        build_datasets(cfg, list_splits(cfg), None)


def test_group_pattern_that_does_not_match(tmp_path):
    root = folder_dataset(tmp_path / "mine", n=6)
    with pytest.raises(SegbenchError, match=r"does not match the image name 'case0'"):
        list_splits(folder_cfg(root, r"dataset.group_pattern='^(patient\d+)'"))
    with pytest.raises(SegbenchError, match=r"needs a \(group\)"):
        list_splits(folder_cfg(root, "dataset.group_pattern=case"))


def test_quick_check_finds_empty_and_missing_files(tmp_path):
    root = folder_dataset(tmp_path / "mine", n=6)
    cfg = folder_cfg(root)
    splits = list_splits(cfg)
    quick_check(cfg, splits)  # all there
    victim = splits["train"][0].image
    victim.write_bytes(b"")
    (root / "masks" / f"{splits['test'][0].id}.png").unlink()
    with pytest.raises(SegbenchError, match=r"2 dataset file\(s\) cannot be used") as err:
        quick_check(cfg, splits)
    assert f"{victim} (empty file)" in str(err.value) and "(missing)" in str(err.value)
    assert "segbench verify dataset=folder" in str(err.value)


def test_transpose_needs_a_square_resolution(tmp_path):
    root = folder_dataset(tmp_path / "mine", n=6)
    cfg = compose_cfg("dataset=folder", f"dataset.root={root}", "resolution=576x720",
                      "augmentation=geometric")
    with pytest.raises(SegbenchError, match=r"Transpose swaps height and width.*576x720"):
        build_datasets(cfg, list_splits(cfg), None)
