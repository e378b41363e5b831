"""`segbench preview`: an augmentation preset's transforms one by one and whole, seeded; the same
preview on the study page of an augmentation study."""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from conftest import run_cli
from segbench import config_dir
from segbench.inspection.augmentations import describe, rows_of
from segbench.report import build_report
from test_report import fake_run, per_image

DATA = ["dataset.num_train=12", "dataset.num_test=4", "dataset.image_size=32",
        "resolution.height=32", "resolution.width=32"]


def preset(name: str):
    return OmegaConf.load(config_dir() / "augmentation" / f"{name}.yaml")


def test_preview_draws_each_transform_and_the_whole_preset(tmp_path):
    proc = run_cli("preview", "augmentation=strong", *DATA, "images=2", "hydra.run.dir=prev",
                   cwd=tmp_path)
    assert (tmp_path / "prev" / "augmentation.png").stat().st_size > 10_000
    # original, the preset's 7 entries, the whole preset
    assert "2 images x 9 rows" in proc.stderr + proc.stdout


def test_each_row_forces_its_transform_and_the_figure_is_seeded():
    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :2] = 1
    rows = rows_of(preset("basic"), (8, 8), seed=0)
    assert [label for label, _ in rows][:2] == ["HorizontalFlip (p=1)", "VerticalFlip (p=1)"]
    assert rows[-1][0] == "whole preset, as trained"
    flipped = rows[0][1](image=image, mask=mask)  # p was 0.5 in the preset: the row always flips
    np.testing.assert_array_equal(flipped["image"], image[:, ::-1])
    np.testing.assert_array_equal(flipped["mask"], mask[:, ::-1])

    def affine(seed):
        return rows_of(preset("basic"), (8, 8), seed=seed)[2][1](image=image, mask=mask)["image"]

    np.testing.assert_array_equal(affine(0), affine(0))
    assert not np.array_equal(affine(0), affine(5))


def test_describe_names_a_transform_and_its_arguments():
    assert describe({"type": "HorizontalFlip", "p": 0.5}) == "HorizontalFlip"
    assert describe({"type": "RandomGamma", "gamma_limit": [80, 120], "p": 0.3}) \
        == "RandomGamma(gamma_limit=[80, 120])"
    assert describe({"type": "OneOf", "transforms": [{"type": "A"}, {"type": "B"}]}) \
        == "OneOf(A | B)"


def test_a_preset_without_transforms_is_one_line(tmp_path):
    proc = run_cli("preview", "augmentation=none", *DATA, "hydra.run.dir=prev", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "has no transforms: nothing to preview; pick a preset, e.g. augmentation=basic" in out
    assert "Traceback" not in out


def test_preview_of_auto_shows_the_preset_training_would_use(tmp_path):
    proc = run_cli("preview", "augmentation=auto", "+dataset.augmentation=hflip", *DATA,
                   "images=2", "hydra.run.dir=prev", cwd=tmp_path)
    assert "2 images x 3 rows" in proc.stderr + proc.stdout  # original, HorizontalFlip, whole


def test_the_page_of_an_augmentation_study_previews_each_preset(tmp_path):
    root = tmp_path / "study"
    for i, aug in enumerate(("basic", "strong")):
        fake_run(root / f"augmentation={aug}", [f"augmentation={aug}", *DATA], per_image(i, 0.0),
                 num=i)
    build_report(root, root / "report", n_resamples=200)
    text = (root / "report" / "index.html").read_text()
    assert '<section id="augmentation">' in text
    for k in (0, 1):
        assert f'src="augmentation/augmentation_{k}.png"' in text
        assert (root / "report" / "augmentation" / f"augmentation_{k}.png").is_file()
