"""`segbench predict`: masks at each image's own size, the run's preprocessing, clear errors."""

from __future__ import annotations

import csv
import shutil

import cv2
import numpy as np
import pytest
import tifffile
from omegaconf import OmegaConf

from conftest import run_cli
from segbench.data import list_splits


def _areas(folder):
    with open(folder / "areas.csv", newline="") as f:
        return {row["image"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_predict_a_folder_of_mixed_sizes_and_formats(tiny_run, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "a.png"), rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "a.jpg"), rng.integers(0, 255, (120, 64, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "grey.bmp"), rng.integers(0, 255, (33, 47), dtype=np.uint8))
    tifffile.imwrite(images / "deep.tif", rng.integers(0, 65535, (50, 60), dtype=np.uint16))
    (images / "broken.png").write_bytes(b"not a png at all")
    (images / "notes.txt").write_text("not an image: ignored")
    out = tmp_path / "out"
    proc = run_cli("predict", f"run_dir={tiny_run}", f"input={images}", f"output={out}",
                   "eval.tta=true", cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert "flip TTA" in log and "broken.png is truncated or corrupt" in log and "broken.png" in log
    areas = _areas(out)
    assert set(areas) == {"a.png", "a.jpg", "grey.bmp", "deep.tif", "broken.png"}
    assert "truncated or corrupt" in areas["broken.png"]["error"]
    sizes = {"a.png": (70, 90), "a.jpg": (120, 64), "grey.bmp": (33, 47), "deep.tif": (50, 60)}
    for name, (h, w) in sizes.items():
        row = areas[name]
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (h, w), name  # the original size, not the run's 64x64
        assert set(np.unique(mask)) <= {0, 255}
        assert int(row["foreground_pixels"]) == int((mask > 0).sum())
        assert float(row["foreground_fraction"]) == pytest.approx((mask > 0).mean(), abs=1e-6)
        assert (int(row["height"]), int(row["width"])) == (h, w)
        assert cv2.imread(str(out / row["overlay"])).shape == (h, w, 3)
    # a.png and a.jpg share a stem: their outputs keep the whole name apart.
    assert areas["a.png"]["mask"] == "a.png_mask.png"
    assert areas["grey.bmp"]["mask"] == "grey_mask.png"
    # The log sits beside the masks folder, not among the masks.
    assert (tmp_path / "out.predict.log").is_file() and not (out / "predict.log").exists()


@pytest.mark.slow
def test_predict_reports_progress_and_writes_probabilities(tiny_run, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i in range(5):
        cv2.imwrite(str(images / f"f{i}.png"),
                    rng.integers(0, 255, (30 + i, 41, 3), dtype=np.uint8))
    out = tmp_path / "out"
    proc = run_cli("predict", f"run_dir={tiny_run}", f"input={images}", f"output={out}",
                   "batch_size=2", "predict.probabilities=true", cwd=tmp_path)
    log = proc.stdout + proc.stderr
    # A line after the first batch (how fast it goes) and at the end; no terminal: no bar.
    assert "predict  2/5 images (40%)" in log and "predict  5/5 images (100%)" in log
    assert "img/s" in log and "ETA" in log and "probabilities (npy)" in log
    areas = _areas(out)
    for i in range(5):
        row = areas[f"f{i}.png"]
        prob = np.load(out / row["probability"])
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert row["probability"] == f"f{i}_prob.npy" and prob.dtype == np.float16
        assert prob.shape == mask.shape == (30 + i, 41) and 0 <= prob.min() <= prob.max() <= 1
        assert np.array_equal(prob.astype(np.float32) >= 0.5, mask > 0) or \
            np.abs(prob.astype(np.float32) - 0.5).min() < 1e-3  # float16 rounding at the edge
    png = tmp_path / "png"
    run_cli("predict", f"run_dir={tiny_run}", f"input={images / 'f0.png'}", f"output={png}",
            "predict.probabilities=png", cwd=tmp_path)
    prob8 = cv2.imread(str(png / "f0_prob.png"), cv2.IMREAD_UNCHANGED)
    assert prob8.dtype == np.uint8 and prob8.shape == (30, 41)
    f0_prob = np.load(out / "f0_prob.npy").astype(np.float32)
    assert np.abs(prob8 / 255 - f0_prob).max() <= 0.5 / 255 + 1e-3
    bad = run_cli("predict", f"run_dir={tiny_run}", f"input={images}", f"output={tmp_path / 'x'}",
                  "predict.probabilities=tiff", cwd=tmp_path, check=False)
    assert bad.returncode == 2
    assert "predict.probabilities=tiff: use false, true" in bad.stdout + bad.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.predict.log").exists()


@pytest.mark.slow
def test_predict_reproduces_the_runs_own_test_predictions(tiny_run, tmp_path):
    """Same preprocessing as training: on the run's test images (already 64x64), the predicted
    foreground equals pred_pixels in per_case.csv."""
    cfg = OmegaConf.load(tiny_run / "config.yaml")
    test = {s.id: s for s in list_splits(cfg)["test"]}
    with open(tiny_run / "per_case.csv", newline="") as f:
        expected = {row["image"]: int(row["pred_pixels"]) for row in csv.DictReader(f)}
    images = tmp_path / "test_images"
    images.mkdir()
    for image_id in list(test)[:4]:
        shutil.copy(test[image_id].image, images / f"{image_id}.png")
    out = tmp_path / "out"
    run_cli("predict", f"run_dir={tiny_run}", f"input={images}", f"output={out}", cwd=tmp_path)
    areas = _areas(out)
    assert len(areas) == 4
    for name, row in areas.items():
        assert abs(int(row["foreground_pixels"]) - expected[name.removesuffix(".png")]) <= 2, name


def test_predict_errors_name_the_problem(tiny_run, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    one = run_cli("predict", f"run_dir={tiny_run}", f"input={broken}", f"output={tmp_path / 'o'}",
                  cwd=tmp_path, check=False)
    assert one.returncode == 2
    assert "none of the 1 input file(s) could be read" in one.stdout + one.stderr
    missing = run_cli("predict", f"run_dir={tiny_run}", f"input={tmp_path / 'nope'}",
                      f"output={tmp_path / 'o2'}", cwd=tmp_path, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stdout + missing.stderr
    not_a_run = run_cli("predict", f"run_dir={tmp_path}", f"input={broken}",
                        f"output={tmp_path / 'o3'}", cwd=tmp_path, check=False)
    assert not_a_run.returncode == 2
    assert "config.yaml is missing" in not_a_run.stdout + not_a_run.stderr
    no_output = run_cli("predict", f"run_dir={tiny_run}", f"input={broken}", cwd=tmp_path,
                        check=False)
    assert no_output.returncode == 2 and "missing output" in no_output.stderr
    for proc in (one, missing, not_a_run, no_output):
        assert "Traceback" not in proc.stdout + proc.stderr
