"""Defect 2: a truncated or corrupt image is an error naming the file in every decoder path
(OpenCV for PNG/JPEG/BMP, tifffile for TIFF): `verify` reports it, `train` stops on it, and
`predict` (which skips unreadable inputs, as it documents) skips it with a warning."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest
import tifffile
from faultkit import read_json

from conftest import TINY, run_cli
from segbench.data.io import CorruptImage, read_array


def truncate(path, size: int) -> None:
    os.truncate(path, size)  # what `truncate -s <size>` does


@pytest.fixture()
def images(tmp_path):
    """One image of each format, complete (progressive JPEG too)."""
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), (0, 0), 2)
    cv2.imwrite(str(tmp_path / "a.jpg"), frame)
    cv2.imwrite(str(tmp_path / "p.jpg"), frame, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    cv2.imwrite(str(tmp_path / "a.png"), frame)
    cv2.imwrite(str(tmp_path / "a.bmp"), frame)
    tifffile.imwrite(tmp_path / "a.tif", frame, photometric="rgb")
    tifffile.imwrite(tmp_path / "z.tif", frame, photometric="rgb", compression="zlib")
    return tmp_path


@pytest.mark.parametrize("name", ["a.jpg", "p.jpg", "a.png", "a.bmp", "a.tif", "z.tif"])
@pytest.mark.parametrize("keep", [8, 700, 0.5, -2])
def test_a_cut_file_is_truncated_or_corrupt_in_every_decoder(images, name, keep):
    path = images / name
    full = read_array(path)
    size = path.stat().st_size
    truncate(path, keep if isinstance(keep, int) and keep > 0 else
             int(size * keep) if isinstance(keep, float) else size + keep)
    with pytest.raises(CorruptImage, match=rf"{name} is truncated or corrupt \(.+\); replace it"):
        read_array(path)
    assert full.shape[:2] == (96, 128)


def test_complete_files_with_trailing_bytes_still_read(images):
    with open(images / "a.jpg", "ab") as f:
        f.write(b"\0" * 64)  # padding after the end-of-image marker, as some cameras write
    assert read_array(images / "a.jpg").shape == (96, 128, 3)
    assert read_array(images / "p.jpg").shape == (96, 128, 3)


@pytest.fixture()
def kvasir_with_a_cut_jpeg(kvasir_stand_in, tmp_path):
    root = tmp_path / "kvasir"
    shutil.copytree(kvasir_stand_in.root, root)
    victim = sorted((root / "images").glob("*.jpg"))[3]
    truncate(victim, 700)  # the issue's `truncate -s 700 images/<id>.jpg`
    return root, victim


def test_verify_and_train_name_a_truncated_jpeg(kvasir_with_a_cut_jpeg, tmp_path):
    root, victim = kvasir_with_a_cut_jpeg
    proc = run_cli("verify", "dataset=kvasir_instrument", f"dataset.root={root}", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and "OK: no problems found" not in proc.stdout
    assert f"{victim} is truncated or corrupt" in proc.stdout

    proc = run_cli("train", "dataset=kvasir_instrument", f"dataset.root={root}", "resolution=64",
                   *[a for a in TINY if not a.startswith("dataset.")], "hydra.run.dir=run",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{victim} is truncated or corrupt" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    status = read_json(tmp_path / "run" / "status.json")
    assert status["state"] == "failed" and victim.name in status["error"]


def test_predict_skips_a_truncated_jpeg_with_a_warning(tiny_run, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(inputs / "good.jpg"), frame)
    cv2.imwrite(str(inputs / "cut.jpg"), frame)
    truncate(inputs / "cut.jpg", 700)
    proc = run_cli("predict", f"run_dir={tiny_run}", f"input={inputs}",
                   f"output={tmp_path / 'out'}", cwd=tmp_path)
    assert "cut.jpg is truncated or corrupt" in proc.stdout
    assert (tmp_path / "out" / "good_mask.png").is_file()
    assert not (tmp_path / "out" / "cut_mask.png").exists()  # not a mask of a grey-filled frame


def test_a_truncated_lgg_tiff_says_truncated_or_corrupt(lgg_stand_in, tmp_path):
    root = tmp_path / "lgg"
    shutil.copytree(lgg_stand_in.root, root)
    victim = sorted((root / "kaggle_3m").glob("*/*_3.tif"))[0]
    truncate(victim, 8)  # the header alone: tifffile returns an empty array
    proc = run_cli("verify", "dataset=lgg_mri", f"dataset.root={root}", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert f"{victim} is truncated or corrupt (it holds no pixels)" in proc.stdout
    assert "unexpected pixel array" not in proc.stdout
