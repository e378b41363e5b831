"""Every augmentation preset on real-format masks (the datasets' stand-ins): shapes kept, mask
values stay {0, 1}, and geometric transforms move image and mask together."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile
from omegaconf import OmegaConf

from segbench import config_dir
from segbench.data import lung_ct
from segbench.data.dataset import SegmentationDataset
from segbench.data.io import read_mask
from segbench.data.transforms import build_augmentation

# auto.yaml is no preset: it stands for the dataset's own (segbench.commands.auto_options).
PRESETS = sorted(p.stem for p in (config_dir() / "augmentation").glob("*.yaml") if p.stem != "auto")
SIZE = 96


def test_the_presets_are_there():
    assert {"none", "hflip", "brightness_contrast", "gaussian_blur", "geometric", "elastic",
            "strong"} <= set(PRESETS)


@pytest.fixture(scope="module")
def pairs(kvasir_stand_in, lgg_stand_in, lung_stand_in):
    """(image, mask) at SIZE: a Kvasir mask with a mask-shaped RGB image, an LGG slice with its
    tumour mask (3 MRI channels) and a windowed lung CT slice (1 channel)."""
    pairs = []
    kvasir_mask, _ = read_mask(sorted((kvasir_stand_in.root / "masks").glob("*.png"))[0])
    lgg = next(p for p in sorted((lgg_stand_in.root / "kaggle_3m").glob("*/*_mask.tif"))
               if tifffile.imread(p).any())
    lgg_mask, _ = read_mask(lgg)
    lung_image = sorted((lung_stand_in.root / "2d_images").glob("*.tif"))[0]
    hu = tifffile.imread(lung_image)
    lung_mask, _ = read_mask(lung_stand_in.root / "2d_masks" / lung_image.name)
    images = [np.repeat(kvasir_mask[..., None] * 200 + 20, 3, axis=2).astype(np.uint8),
              tifffile.imread(str(lgg).replace("_mask", "")),
              (lung_ct.to_unit_range(hu, -1000, 400) * 255).astype(np.uint8)[..., None]]
    for image, mask in zip(images, [kvasir_mask, lgg_mask, lung_mask], strict=True):
        image = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        pairs.append((image.reshape(SIZE, SIZE, -1),
                      cv2.resize(mask, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)))
    return pairs


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_keeps_shapes_and_binary_masks(preset, pairs):
    spec = OmegaConf.load(config_dir() / "augmentation" / f"{preset}.yaml")
    assert spec.name == preset
    transform = build_augmentation(spec, (SIZE, SIZE))
    if preset == "none":
        assert transform is None
        return
    for image, mask in pairs:
        assert set(np.unique(mask).tolist()) == {0, 1}
        changed = 0
        for seed in range(12):
            transform.set_random_seed(seed)
            out = transform(image=image.copy(), mask=mask.copy())
            assert out["image"].shape == image.shape and out["image"].dtype == np.uint8
            assert out["mask"].shape == mask.shape
            assert set(np.unique(out["mask"]).tolist()) <= {0, 1}
            changed += not np.array_equal(out["image"], image)
        assert changed >= 2, f"{preset} changed the image in {changed} of 12 draws"


@pytest.mark.parametrize("preset", ["hflip", "geometric", "elastic", "strong"])
def test_geometric_presets_move_image_and_mask_together(preset, pairs):
    """On an image that is its mask (scaled), the warped image still matches the warped mask."""
    transform = build_augmentation(
        OmegaConf.load(config_dir() / "augmentation" / f"{preset}.yaml"), (SIZE, SIZE))
    _, mask = pairs[0]
    image = np.repeat(mask[..., None] * 255, 3, axis=2).astype(np.uint8)
    moved = 0
    for seed in range(12):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=mask)
        from_image = out["image"][..., 0] > 127
        inter = (from_image & (out["mask"] == 1)).sum()
        union = (from_image | (out["mask"] == 1)).sum()
        assert inter / union > 0.9, f"{preset} seed {seed}: image and mask came apart"
        moved += not np.array_equal(out["mask"], mask)
    assert moved >= 3


def test_augmentation_in_the_dataset_is_seeded(pairs):
    image, mask = pairs[2]
    transform = build_augmentation(
        OmegaConf.load(config_dir() / "augmentation" / "strong.yaml"), (SIZE, SIZE))
    data = SegmentationDataset(image[None], mask[None], ["lung"], transform)
    a, b, c = data[(0, 11)], data[(0, 11)], data[(0, 12)]
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert set(np.unique(a[1].numpy()).tolist()) <= {0, 1} and tuple(a[0].shape) == (1, SIZE, SIZE)
