"""`segbench train` (and `eval`) end to end on the real lung CT and LGG formats, tiny and on CPU:
on the generated stand-ins and, where it is beside the repository, on the shared samples."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import run_cli

TINY_REAL = [
    "resolution='64'",  # quoted: a numeric group choice
    "model.encoder=resnet18",
    "model.encoder_depth=3",
    "model.decoder_channels=[32,16,8]",
    "trainer.max_epochs=1",
    "trainer.batch_size=8",
    "logger=none",
    "eval.latency=false",
    "hydra.run.dir=run",
]


def sane(m: dict) -> None:
    assert 0.0 <= m["iou"] <= m["dice"] <= 1.0
    assert 0.0 <= m["iou_micro"] <= m["dice_micro"] <= 1.0


@pytest.mark.slow
def test_train_lung_ct(tmp_path, lung_source):
    proc = run_cli("train", "dataset=lung_ct", f"dataset.root={lung_source.root}", *TINY_REAL,
                   "eval.native_resolution=true", cwd=tmp_path)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split_sizes"] == {"train": 15, "val": 4, "test": 5}
    sane(metrics["test"])
    assert "n_volumes" not in metrics["test"] and not (run / "per_volume.csv").exists()
    config = (run / "config.yaml").read_text()
    assert "in_channels: 1" in config and "window:" in config
    assert "data: lung_ct  train 15  val 4  test 5  at 64x64" in proc.stdout

    # predict reads raw Hounsfield-unit slices through the run's own window and, scoring at the
    # slices' own 512x512 size like eval.native_resolution, finds the same foreground pixels.
    test_ids = json.loads((run / "split.json").read_text())["splits"]["test"]
    inputs = tmp_path / "slices"
    inputs.mkdir()
    for i in test_ids:
        (inputs / f"{i}.tif").symlink_to(lung_source.root / "2d_images" / f"{i}.tif")
    run_cli("predict", f"run_dir={run}", f"input={inputs}", "output=masks", cwd=tmp_path)
    areas = {r["image"]: r for r in csv.DictReader(open(tmp_path / "masks" / "areas.csv"))}
    per_case = {r["image"]: r for r in csv.DictReader(open(run / "per_case.csv"))}
    for i in test_ids:
        row = areas[next(k for k in areas if k.startswith(i))]
        assert int(row["foreground_pixels"]) == int(per_case[i]["pred_pixels"])
        assert int(per_case[i]["tp"]) + int(per_case[i]["fp"]) + int(per_case[i]["fn"]) + \
            int(per_case[i]["tn"]) == 512 * 512


@pytest.mark.slow
def test_train_and_eval_lgg_mri_per_volume(tmp_path, lgg_source):
    slices = lgg_source.facts["slices"]
    run_cli("train", "dataset=lgg_mri", f"dataset.root={lgg_source.root}",
            "dataset.train_fraction=0.5", "augmentation=strong", *TINY_REAL, cwd=tmp_path)
    run = tmp_path / "run"
    split = json.loads((run / "split.json").read_text())
    groups = split["groups"]
    assert len(groups["train"]) == 1  # train_fraction 0.5 of 2 training patients: 1, whole
    # Whole patients: the seeded split puts FG in test and HT in validation.
    assert [p.split("_")[1] for p in groups["test"] + groups["val"]] == ["FG", "HT"]
    assert split["counts"]["val"] == slices[groups["val"][0]]
    assert split["counts"]["test"] == slices[groups["test"][0]] == lgg_source.facts["pools"]["test"]
    n_test = split["counts"]["test"]
    assert not set(groups["train"]) & set(groups["test"])
    assert not set(groups["val"]) & set(groups["test"])
    test = json.loads((run / "metrics.json").read_text())["test"]
    sane(test)
    assert test["n_images"] == n_test and test["n_volumes"] == len(groups["test"]) == 1
    assert 0.0 <= test["volume_dice_median"] <= 1.0
    rows = list(csv.DictReader(open(run / "per_volume.csv")))
    assert [r["volume"] for r in rows] == groups["test"]
    assert sum(int(r["slices"]) for r in rows) == n_test
    assert float(rows[0]["dice"]) == pytest.approx(test["volume_dice_mean"], abs=1e-6)
    per_case = list(csv.DictReader(open(run / "per_case.csv")))
    assert {r["group"] for r in per_case} == set(groups["test"])
    assert sum(int(r["tp"]) for r in per_case) == int(rows[0]["tp"])
    # `eval` recomputes the per-volume figures from the run directory alone.
    run_cli("eval", f"run_dir={run}", "hydra.run.dir=run/eval/again", cwd=tmp_path)
    again = json.loads((run / "eval" / "again" / "metrics.json").read_text())["test"]
    assert again["volume_dice_mean"] == pytest.approx(test["volume_dice_mean"])
    assert (run / "eval" / "again" / "per_volume.csv").read_text() \
        == (run / "per_volume.csv").read_text()
