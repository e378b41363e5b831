"""Masks of several classes read as declared (dataset.task/classes/ignore_index/palette): label
maps in L, palette and TIFF form, colour-coded masks, one folder per class or a multi-channel TIFF
for overlapping classes; every undeclared value, unknown colour or missing class file is one
line naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from omegaconf import OmegaConf
from PIL import Image

from segbench import SegbenchError
from segbench.data import default_read, list_splits
from segbench.data.cache import resize_pair
from segbench.data.labels import label_like
from segbench.data.source import Sample
from segbench.task import IGNORE

CLASSES = {0: "background", 1: "shaft", 2: "tip"}


def labels(seed=0, size=16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((size, size), np.uint8)
    out[2:8, 2:12] = 1
    out[8:12, 9:14] = 2
    out[rng.random((size, size)) < 0.05] = 255
    return out


def dataset(**extra):
    return OmegaConf.create({"name": "folder", "channels": 3, **extra})


def sample(tmp_path, mask_name: str, image_size=16) -> Sample:
    image = tmp_path / "img.png"
    Image.fromarray(np.full((image_size, image_size, 3), 90, np.uint8)).save(image)
    return Sample("img", image, tmp_path / mask_name)


def test_label_map_png_becomes_class_indices_with_ignore(tmp_path):
    Image.fromarray(labels()).save(tmp_path / "m.png")
    cfg = dataset(task="multiclass", classes=CLASSES, ignore_index=255)
    _, mask, values = default_read(sample(tmp_path, "m.png"), cfg)
    assert values == {0, 1, 2, 255}
    np.testing.assert_array_equal(mask, labels())  # values 0,1,2 are indices 0,1,2; 255 ignored


def test_declared_values_map_to_indices_in_value_order(tmp_path):
    raw = labels() * 50  # values 0, 50, 100 (and 255*50 wraps: drop the ignore here)
    raw = np.where(labels() == 255, 0, raw).astype(np.uint8)
    tifffile.imwrite(tmp_path / "m.tif", raw)
    cfg = dataset(task="multiclass", classes={100: "tip", 0: "background", 50: "shaft"})
    _, mask, _ = default_read(sample(tmp_path, "m.tif"), cfg)
    np.testing.assert_array_equal(mask, raw // 50)


def test_palette_png_is_read_as_indices_not_colours(tmp_path):
    img = Image.fromarray(np.where(labels() == 255, 0, labels()).astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * (256 * 3 - 9))
    img.save(tmp_path / "m.png")
    cfg = dataset(task="multiclass", classes=CLASSES)
    _, mask, _ = default_read(sample(tmp_path, "m.png"), cfg)
    assert set(np.unique(mask)) == {0, 1, 2}


def test_rgb_masks_through_a_palette_and_unknown_colours_named(tmp_path):
    colours = {"background": [0, 0, 0], "shaft": [255, 0, 0], "tip": [0, 0, 255]}
    lab = np.where(labels() == 255, 0, labels())
    rgb = np.array([colours[n] for n in ("background", "shaft", "tip")], np.uint8)[lab]
    Image.fromarray(rgb).save(tmp_path / "m.png")
    cfg = dataset(task="multiclass", classes=CLASSES, palette=colours)
    _, mask, _ = default_read(sample(tmp_path, "m.png"), cfg)
    np.testing.assert_array_equal(mask, lab)
    rgb[0, 0] = [10, 20, 30]
    Image.fromarray(rgb).save(tmp_path / "m.png")
    with pytest.raises(SegbenchError,
                       match=r"m\.png: colour\(s\) \(10, 20, 30\) are not in dataset.palette"):
        default_read(sample(tmp_path, "m.png"), cfg)
    cfg = dataset(task="multiclass", classes=CLASSES)
    with pytest.raises(SegbenchError, match="dataset.palette is not set"):
        default_read(sample(tmp_path, "m.png"), cfg)


def test_undeclared_values_and_binary_label_maps_are_errors_naming_the_file(tmp_path):
    Image.fromarray(labels()).save(tmp_path / "m.png")
    cfg = dataset(task="multiclass", classes=CLASSES)  # 255 not declared
    with pytest.raises(SegbenchError, match=r"m\.png: mask value\(s\) 255 are not declared"):
        default_read(sample(tmp_path, "m.png"), cfg)
    Image.fromarray(np.where(labels() == 255, 0, labels()).astype(np.uint8)).save(
        tmp_path / "m.png")
    with pytest.raises(SegbenchError,
                       match=r"m\.png: mask holds the values 0, 1, 2.*dataset\.task=multiclass"):
        default_read(sample(tmp_path, "m.png"), dataset())


def test_binary_masks_and_jpeg_ringing_stay_binary():
    assert not label_like({0, 255}) and not label_like({0, 1}) and not label_like({0, 200})
    assert not label_like({0, 1, 2, 3, 250, 253, 255})  # a JPEG-compressed 0/255 mask
    assert label_like({0, 1, 2}) and label_like({0, 7, 128}) and label_like({0, 85, 170, 255})


def test_multilabel_from_class_folders_overlap_and_missing_file(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    a, b = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
    a[2:10, 2:10] = 255
    b[6:14, 6:14] = 255  # overlaps a
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 80, np.uint8)).save(root / "images" / f"c{i}.png")
        for name, m in (("tumour", a), ("oedema", b)):
            (root / "masks" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(m).save(root / "masks" / name / f"c{i}.png")
    cfg = dataset(root=str(root), task="multilabel", classes=["tumour", "oedema"],
                  images_dir="images", masks_dir="masks", test_fraction=0.25, val_fraction=0.25,
                  train_fraction=1.0,
                  split_seed=0, on_unpaired="error")
    splits = list_splits(OmegaConf.create({"dataset": cfg}))
    s = splits["train"][0]
    _, mask, _ = default_read(s, cfg)
    assert mask[3, 3] == 1 and mask[12, 12] == 2 and mask[7, 7] == 3 and mask[0, 0] == 0
    (root / "masks" / "oedema" / "c2.png").unlink()
    with pytest.raises(SegbenchError, match=r"oedema/ has no mask for c2 \(class oedema\)"):
        list_splits(OmegaConf.create({"dataset": cfg}))


def test_multilabel_from_a_multichannel_tiff_with_ignore(tmp_path):
    stack = np.zeros((2, 16, 16), np.uint8)  # channels first, as many tools write them
    stack[0, :8] = 1
    stack[1, 4:12] = 1
    stack[:, 15, 15] = 255
    tifffile.imwrite(tmp_path / "m.tif", stack)
    cfg = dataset(task="multilabel", classes=["a", "b"], ignore_index=255)
    _, mask, _ = default_read(sample(tmp_path, "m.tif"), cfg)
    assert mask[0, 0] == 1 and mask[5, 0] == 3 and mask[10, 0] == 2 and mask[15, 15] == IGNORE
    with pytest.raises(SegbenchError, match="one channel per class"):
        default_read(sample(tmp_path, "m.tif"), dataset(task="multilabel", classes=["a", "b", "c"]))


def test_resizing_keeps_label_maps_exact():
    lab = labels(size=37)
    image = np.zeros((37, 37, 3), np.uint8)
    for h, w in ((16, 16), (64, 48)):
        _, out = resize_pair(image, lab, h, w)
        assert set(np.unique(out)) <= {0, 1, 2, 255}


def test_verify_names_the_undeclared_labels_once_and_reports_the_task(tmp_path):
    from segbench.data.verify import format_report, verify_dataset

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(6):
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(np.where(labels() == 255, 0, labels()).astype(np.uint8)).save(
            root / "masks" / f"c{i}.png")
    base = {"dataset": {"name": "folder", "root": str(root), "channels": 3, "test_fraction": 0.2,
                        "val_fraction": 0.2, "train_fraction": 1.0, "split_seed": 0,
                        "on_unpaired": "error", "folds": None, "fold": None}}
    report = verify_dataset(OmegaConf.create(base))
    assert len(report["problems"]) == 1
    assert "values 0, 1, 2" in report["problems"][0] and "(6 files: c0.png" in report["problems"][0]
    declared = OmegaConf.create(base)
    declared.dataset.task, declared.dataset.classes = "multiclass", CLASSES
    report = verify_dataset(declared)
    assert report["problems"] == [] and not any("binarized" in w for w in report["warnings"])
    assert "task         multiclass (0: background, 1: shaft, 2: tip)" in format_report(report)
