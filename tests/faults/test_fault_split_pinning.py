"""Defect 1: a run's split is fixed when it starts. A resume (and `eval`) takes its images from
split.json, never from a new split of the data as it is now; a recorded file that changed or
disappeared stops it with a message naming the file, before anything is written."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from faultkit import read_json, snapshot

from conftest import run_cli

pytestmark = pytest.mark.slow


def write_pairs(root, first: int, count: int, size: int = 64) -> None:
    """Image/mask pairs case<first>..case<first+count-1> in the folder layout."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for i in range(first, first + count):
        rng = np.random.default_rng(i)
        mask = np.zeros((size, size), np.uint8)
        mask[8 + i % 7: 40 + i % 9, 10: 30 + i % 11] = 255
        image = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
        image[mask > 0] += 120
        cv2.imwrite(str(root / "images" / f"case{i:02d}.png"), image)
        cv2.imwrite(str(root / "masks" / f"case{i:02d}.png"), mask)


def folder_args(root):
    return ["dataset=folder", f"dataset.root={root}", "resolution=64", "model.encoder=resnet18",
            "model.encoder_depth=3", "model.decoder_channels=[32,16,8]", "trainer.batch_size=8",
            "augmentation=none", "logger=none"]


def stopped_after_epoch_1(tmp_path):
    """A run of 20 pairs stopped after its first epoch (of 2): the run of one epoch, with its
    test record removed, is what a run interrupted after epoch 1 leaves (the resume may raise
    trainer.max_epochs)."""
    data, run = tmp_path / "data", tmp_path / "run"
    write_pairs(data, 0, 20)
    run_cli("train", *folder_args(data), "trainer.max_epochs=1", f"hydra.run.dir={run}",
            cwd=tmp_path)
    (run / "metrics.json").unlink()
    (run / "status.json").write_text('{"state": "interrupted", "epoch": 1}')
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    return data, run


def test_a_resume_keeps_the_recorded_split_when_images_were_added(tmp_path):
    data, run = stopped_after_epoch_1(tmp_path)
    split_before = (run / "split.json").read_bytes()
    recorded = json.loads(split_before)
    assert recorded["counts"] == {"train": 13, "val": 3, "test": 4}
    write_pairs(data, 20, 10)  # ten more pairs arrive while the run is stopped

    proc = run_cli("train", f"trainer.resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert (run / "split.json").read_bytes() == split_before  # never rewritten
    metrics = read_json(run / "metrics.json")
    assert metrics["split_sizes"] == {"train": 13, "val": 3, "test": 4}
    with open(run / "per_case.csv", newline="") as f:
        tested = [row["image"] for row in csv.DictReader(f)]
    assert tested == recorded["splits"]["test"]  # no image trained on is tested
    assert not set(tested) & set(recorded["splits"]["train"])
    assert "10 image(s) in the dataset are not in" in proc.stdout

    # eval reads the same record, and refuses once a test image has changed.
    test_image = data / "images" / f"{recorded['splits']['test'][0]}.png"
    cv2.imwrite(str(test_image), np.zeros((64, 64, 3), np.uint8))
    proc = run_cli("eval", f"run_dir={run}", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "changed since it started" in proc.stdout and test_image.name in proc.stdout
    assert "bytes" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


def test_a_resume_refuses_data_that_changed_under_the_run(tmp_path):
    data, run = stopped_after_epoch_1(tmp_path)
    train_id = read_json(run / "split.json")["splits"]["train"][0]
    image = data / "images" / f"{train_id}.png"
    original = image.read_bytes()
    cv2.imwrite(str(image), np.full((64, 64, 3), 7, np.uint8))  # another picture, still valid
    changed = image.stat().st_size
    gone = "case19" if train_id != "case19" else "case18"
    (data / "images" / f"{gone}.png").unlink()
    (data / "masks" / f"{gone}.png").unlink()
    before = snapshot(run)

    proc = run_cli("train", f"trainer.resume={run}", "trainer.max_epochs=2", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    out = proc.stdout
    assert "the data under run" in out and "changed since it started" in out
    assert f"{train_id}.png: {len(original)} -> {changed} bytes" in out
    assert f"1 recorded image(s) are missing ({gone})" in out
    assert "never re-drawn" in out and "Traceback" not in out + proc.stderr
    assert snapshot(run) == before  # refused before anything was written

    image.write_bytes(original)  # the data restored: the run resumes and finishes
    write_pairs(data, int(gone[4:]), 1)
    run_cli("train", f"trainer.resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert read_json(run / "status.json") == {"state": "finished", "epoch": 2}
