"""The device-resident training data path (data/resident.py) and the presets as tensor operations
(data/tensor_augment.py): exact flips and rot90, binary masks through warps, seeded batches,
the fallback to the loader path, and training end to end with a resume."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from conftest import ROOT, TINY, run_cli
from segbench import SegbenchError, faults
from segbench.data.dataset import SeededShuffleSampler, SegmentationDataset
from segbench.data.resident import ResidentBatches, resident_batches
from segbench.data.tensor_augment import DeviceAugmentation, Draw, rot90_batch, unsupported_reason
from segbench.data.transforms import build_augmentation
from segbench.runtime.device import compile_model


def _pairs(n=6, h=32, w=32, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, channels), dtype=np.uint8)
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):  # an off-centre rectangle: every flip and turn moves it
        masks[i, 2 + i:12 + i, 4:20 - i] = 1
    return images, masks


def _tensors(images, masks):
    return (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(masks)[:, None])


def _device_op(transform, images, masks, seeds=None):
    aug = DeviceAugmentation.build(A.Compose([transform]))
    x, m = _tensors(images, masks)
    out, out_masks = aug(x, m, seeds or list(range(len(images))))
    return out.permute(0, 2, 3, 1).numpy(), out_masks[:, 0].numpy()


@pytest.mark.parametrize("transform",
                         [A.HorizontalFlip(p=1), A.VerticalFlip(p=1), A.Transpose(p=1)])
def test_flips_and_transpose_equal_albumentations_exactly(transform):
    images, masks = _pairs()
    out, out_masks = _device_op(transform, images, masks)
    for i in range(len(images)):
        ref = transform(image=images[i], mask=masks[i])
        assert np.array_equal(out[i], ref["image"]) and np.array_equal(out_masks[i], ref["mask"])


@pytest.mark.parametrize("factor", [0, 1, 2, 3])
def test_rot90_equals_albumentations_exactly(factor):
    images, masks = _pairs()
    x, m = _tensors(images, masks)
    draw = Draw([0], torch.device("cpu"))
    factors = np.full(len(images), factor)
    out = rot90_batch(x, factors, draw).permute(0, 2, 3, 1).numpy()
    out_masks = rot90_batch(m, factors, draw)[:, 0].numpy()
    t = A.RandomRotate90(p=1)
    for i in range(len(images)):
        assert np.array_equal(out[i], t.apply(images[i], factor=factor))
        assert np.array_equal(out_masks[i], t.apply_to_mask(masks[i], factor=factor))


def test_a_flip_preset_flips_each_image_with_its_mask_or_neither():
    images, masks = _pairs(n=16)
    preset = OmegaConf.load(ROOT / "configs/augmentation/hflip.yaml")
    aug = DeviceAugmentation.build(build_augmentation(preset))
    x, m = _tensors(images, masks)
    out, out_masks = aug(x, m, list(range(16)))
    flipped = [torch.equal(out[i], x[i].flip(-1)) and torch.equal(out_masks[i], m[i].flip(-1))
               for i in range(16)]
    kept = [torch.equal(out[i], x[i]) and torch.equal(out_masks[i], m[i]) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < 16  # p = 0.5, drawn per image


def test_affine_turns_like_albumentations_and_keeps_masks_binary():
    images, masks = _pairs()
    quarter = A.Affine(rotate=(90, 90), p=1)  # the direction of a positive angle
    _, out_masks = _device_op(quarter, images, masks)
    for i in range(len(images)):
        assert np.array_equal(out_masks[i], quarter(image=images[i], mask=masks[i])["mask"])
    warp = A.Affine(scale=(1.1, 1.1), translate_percent=(0.06, 0.06), rotate=(20, 20), p=1)
    out, out_masks = _device_op(warp, images, masks)
    assert set(np.unique(out_masks)) <= {0, 1} and out.dtype == np.uint8
    for i in range(len(images)):  # the same warp up to rounding at the rectangle's edges
        ref = warp(image=images[i], mask=masks[i])["mask"]
        assert (out_masks[i] == ref).mean() > 0.9
        assert _on_edges(out_masks[i] != ref, ref)


def _on_edges(differ: np.ndarray, mask: np.ndarray) -> bool:
    """Whether every differing pixel has both mask values in its 3x3 neighbourhood."""
    padded = np.pad(mask, 1, mode="edge")
    h, w = mask.shape
    around = np.stack([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)])
    return bool(np.all((around.min(0) != around.max(0))[differ]))


@pytest.mark.parametrize("preset", ["basic", "strong", "geometric", "elastic", "gaussian_blur",
                                    "brightness_contrast"])
def test_every_preset_has_a_tensor_form_that_is_seeded(preset):
    compose = build_augmentation(OmegaConf.load(ROOT / f"configs/augmentation/{preset}.yaml"))
    assert unsupported_reason(compose) is None
    aug = DeviceAugmentation.build(compose)
    x, m = _tensors(*_pairs(n=8))
    first, again = aug(x, m, list(range(8))), aug(x, m, list(range(8)))
    other = aug(x, m, list(range(1, 9)))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert set(first[1].unique().tolist()) <= {0, 1} and first[0].dtype == torch.uint8


def test_an_images_augmentation_depends_on_its_own_seed_alone():
    """As on the loader path: a batch split over processes or accumulated steps is augmented as
    the whole batch."""
    compose = A.Compose([A.HorizontalFlip(p=0.5), A.RandomRotate90(p=0.5), A.GaussNoise(p=0.5),
                         A.OneOf([A.ElasticTransform(alpha=30, sigma=4, p=1),
                                  A.GridDistortion(p=1)], p=0.7),
                         A.Affine(rotate=(-20, 20), p=0.5),
                         A.GaussianBlur(blur_limit=(3, 5), p=0.5),
                         A.RandomGamma(p=0.5)])
    aug = DeviceAugmentation.build(compose)
    x, m = _tensors(*_pairs(n=8))
    seeds = [11, 5, 99, 3, 42, 7, 8, 1000]
    whole = aug(x, m, seeds)
    halves = [aug(x[:4], m[:4], seeds[:4]), aug(x[4:], m[4:], seeds[4:])]
    assert torch.equal(whole[0], torch.cat([h[0] for h in halves]))
    assert torch.equal(whole[1], torch.cat([h[1] for h in halves]))


def _dataset(transform=None, n=10):
    images, masks = _pairs(n=n)
    return SegmentationDataset(images, masks, [str(i) for i in range(n)], transform)


def test_resident_batches_follow_the_loader_paths_order_and_repeat_per_seed():
    compose = build_augmentation(OmegaConf.load(ROOT / "configs/augmentation/strong.yaml"))
    data = _dataset(compose)
    sampler = SeededShuffleSampler(len(data))
    batches = ResidentBatches(data, sampler, 4, True, torch.device("cpu"),
                              DeviceAugmentation.build(compose))
    loader = DataLoader(data, batch_size=4, sampler=sampler, drop_last=True)
    assert len(batches) == len(loader) == 2
    sampler.set_seed(7)
    first = list(batches)
    assert [b[2].tolist() for b in first] == [b[2].tolist() for b in loader]
    again = list(batches)
    sampler.set_seed(8)
    other = list(batches)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0][0], other[0][0])
    assert first[0][0].shape == (4, 3, 32, 32) and first[0][1].shape == (4, 1, 32, 32)


def test_a_transform_without_a_tensor_form_keeps_the_loader_path(caplog):
    data = _dataset(A.Compose([A.HorizontalFlip(p=0.5), A.CLAHE(p=1)]))
    with caplog.at_level(logging.INFO, logger="segbench.data.resident"):
        got = resident_batches(data, SeededShuffleSampler(len(data)), 4, True,
                               torch.device("cpu"), True, 0.25)
    assert got is None
    assert [r.getMessage() for r in caplog.records] == [
        "data on device: the augmentation's CLAHE has no tensor form; this run's training batches "
        "come from the data loader"]


def test_the_memory_budget_decides():
    data = _dataset()
    sampler = SeededShuffleSampler(len(data))
    cpu = torch.device("cpu")
    assert resident_batches(data, sampler, 4, True, cpu, False, 0.25) is None
    assert isinstance(resident_batches(data, sampler, 4, True, cpu, True, 0.25), ResidentBatches)
    assert resident_batches(data, sampler, 4, True, cpu, "auto", 1e-12) is None
    with pytest.raises(SegbenchError, match="data_on_device_budget=1e-12"):
        resident_batches(data, sampler, 4, True, cpu, True, 1e-12)


def test_compile_is_off_on_cpu_unless_asked():
    model = torch.nn.Conv2d(1, 1, 3)
    assert compile_model(model, "auto", torch.device("cpu")) is model
    assert compile_model(model, False, torch.device("cuda")) is model
    # compiled lazily: not run here
    assert compile_model(model, True, torch.device("cpu")) is not model


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


DEVICE_RUN = [*TINY, "trainer.max_epochs=3", "augmentation=strong", "trainer.data_on_device=true",
              "trainer.deterministic=true"]


@pytest.mark.slow
def test_a_device_path_run_trains_repeats_and_resumes_to_the_same_history(tmp_path):
    whole = run_cli("train", *DEVICE_RUN, "hydra.run.dir=whole", cwd=tmp_path)
    assert "data on device: the training split" in whole.stdout
    assert len(_history(tmp_path / "whole")) == 3
    # Stopped (Ctrl-C) right after epoch 2's last.pt, then resumed: the same three epochs.
    faults.reset()
    stopped = run_cli("train", *DEVICE_RUN, "hydra.run.dir=cut", cwd=tmp_path, check=False,
                      env={faults.ENV: "renamed:last.pt:interrupt@3"})
    faults.reset()
    assert stopped.returncode == 130 and len(_history(tmp_path / "cut")) == 2
    run_cli("train", f"trainer.resume={tmp_path / 'cut'}", cwd=tmp_path)
    assert _history(tmp_path / "cut") == _history(tmp_path / "whole")


def test_a_split_over_the_budget_with_data_on_device_true_is_one_line(tmp_path):
    proc = run_cli("train", *TINY, "trainer.data_on_device=true",
                   "trainer.data_on_device_budget=1e-9", "hydra.run.dir=run", cwd=tmp_path,
                   check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "data_on_device=true" in x)
    assert "more than trainer.data_on_device_budget=1e-09" in line
    assert "trainer.data_on_device=auto" in line
