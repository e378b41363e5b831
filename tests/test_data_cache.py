"""The decode-once cache on real formats: later builds read the memory maps; a changed file or
reader setting (the CT window, channels, resolution) makes a new entry."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from datasets_util import compose_cfg, folder_dataset
from segbench.data import build_datasets, list_splits
from segbench.data import lung_ct as lung_module


@pytest.fixture
def count_lung_reads(monkeypatch):
    calls = []
    real = lung_module.read

    def counting(sample, cfg):
        calls.append(sample.id)
        return real(sample, cfg)

    monkeypatch.setattr(lung_module, "read", counting)
    return calls


def entries(cache):
    folder = cache / "arrays"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def lung_test_split(lung_stand_in):
    """overrides -> (cfg, {"test": the test split}) of the lung CT stand-in (5 of 24 slices)."""
    def make(*overrides):
        cfg = compose_cfg("dataset=lung_ct", f"dataset.root={lung_stand_in.root}",
                          "resolution='64'", *overrides)
        return cfg, {"test": list_splits(cfg)["test"]}
    return make


def test_second_build_reads_the_cache(tmp_path, count_lung_reads, lung_test_split):
    cfg, splits = lung_test_split()
    first = build_datasets(cfg, splits, tmp_path)
    assert len(count_lung_reads) == 5 and len(entries(tmp_path)) == 1
    second = build_datasets(cfg, splits, tmp_path)
    assert len(count_lung_reads) == 5  # nothing decoded again
    assert isinstance(second["test"].images, np.memmap)
    np.testing.assert_array_equal(first["test"].images, second["test"].images)


def test_reader_settings_are_part_of_the_key(tmp_path, count_lung_reads, lung_test_split):
    cfg, splits = lung_test_split()
    lung = build_datasets(cfg, splits, tmp_path)["test"].images
    cfg_b, _ = lung_test_split("dataset.window=[-160,240]")  # a soft-tissue window
    soft = build_datasets(cfg_b, splits, tmp_path)["test"].images
    assert len(entries(tmp_path)) == 2 and len(count_lung_reads) == 10
    assert not np.array_equal(lung, soft)
    cfg_c, _ = lung_test_split("dataset.channels=3")
    assert build_datasets(cfg_c, splits, tmp_path)["test"].images.shape[-1] == 3
    cfg_d, _ = lung_test_split("resolution='128'")
    assert build_datasets(cfg_d, splits, tmp_path)["test"].images.shape[1:3] == (128, 128)
    assert len(entries(tmp_path)) == 4
    build_datasets(cfg_b, splits, tmp_path)  # each entry is still there and read back
    assert len(count_lung_reads) == 20 and len(entries(tmp_path)) == 4


def test_changed_file_invalidates(tmp_path):
    root = folder_dataset(tmp_path / "mine", n=6)
    cfg = compose_cfg("dataset=folder", f"dataset.root={root}", "resolution='64'")
    splits = list_splits(cfg)
    cache = tmp_path / "cache"
    before = np.array(build_datasets(cfg, splits, cache)["test"].masks)
    victim = root / "masks" / f"{splits['test'][0].id}.png"
    stat = victim.stat()
    cv2.imwrite(str(victim), np.zeros((40, 40), np.uint8))  # the mask emptied
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    after = np.array(build_datasets(cfg, splits, cache)["test"].masks)
    assert before[0].any() and not after[0].any()
    np.testing.assert_array_equal(before[1:], after[1:])
    assert len(entries(cache)) == 4  # train, val, test + the new test entry


def test_touched_file_with_same_pixels_makes_a_new_entry_too(tmp_path):
    root = folder_dataset(tmp_path / "mine", n=6)
    cfg = compose_cfg("dataset=folder", f"dataset.root={root}", "resolution='64'")
    splits = {"test": list_splits(cfg)["test"]}
    cache = tmp_path / "cache"
    build_datasets(cfg, splits, cache)
    victim = splits["test"][0].image
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    build_datasets(cfg, splits, cache)
    assert len(entries(cache)) == 2
