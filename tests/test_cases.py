"""cases.npz (every test case's predicted mask) and the case galleries drawn from it."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from segbench.inference.cases import (
    SplitCases,
    load_cases,
    pick,
    save_cases,
    tta_changed,
    worst_volume,
)
from segbench.report.gallery import (
    CONTOURS,
    case_gallery,
    disagreement,
    image_at,
    tta_gallery,
    volume_strip,
)


def _disk(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def write_cases(path: Path, dice, *, shapes=None, hd95=None, groups=None, seed=0,
                image_size=16, ids=None) -> None:
    """A cases.npz whose predictions are disks (truth: the same disk, shifted by 1 - Dice)."""
    rng = np.random.default_rng(seed)
    n = len(dice)
    shapes = shapes or [(24, 32)] * n
    truths = [_disk(s, (s[0] // 2, s[1] // 2), 6) for s in shapes]
    preds = [_disk(s, (s[0] // 2, s[1] // 2 + round(8 * (1 - d))), 6) for s, d in zip(shapes, dice)]
    counts = np.array([[int((p & t).sum()), int((p & ~t).sum()),
                        int((~p & t).sum()), int((~p & ~t).sum())]
                       for p, t in zip(preds, truths)])
    images = rng.integers(0, 255, (n, image_size, image_size, 3), dtype=np.uint8)
    save_cases(path, SplitCases(ids or [f"case_{i:02d}" for i in range(n)], counts, np.array(dice),
                                np.array(dice) / (2 - np.array(dice)), hd95, preds, images, truths,
                                0.5, groups), 2)


def test_pick_names_worst_median_best_by_dice_and_hd95():
    dice = np.array([0.5, 0.9, 0.1, 0.7, 0.3])
    hd95 = np.array([3.0, np.nan, 9.0, 1.0, 5.0])  # undefined where a mask is empty: left out
    chosen = pick(dice, hd95, 0)
    assert (chosen["worst Dice"], chosen["median Dice"], chosen["best Dice"]) == (2, 0, 1)
    assert (chosen["worst HD95"], chosen["median HD95"], chosen["best HD95"]) == (2, 4, 3)
    assert set(pick(dice, None, 3)) == {"worst Dice", "median Dice", "best Dice", "case 0",
                                        "case 2", "case 4"}


def test_worst_volume_pools_its_slices_and_keeps_the_lit_ones():
    # volume a: Dice 2*10/(20+2) ~ 0.91; volume b: 2*1/(2+9) ~ 0.18; b's middle slice is empty
    counts = np.array([[5, 1, 0, 10], [5, 0, 1, 10], [1, 4, 0, 10], [0, 0, 0, 16], [0, 0, 5, 10]])
    name, dice, strip = worst_volume(counts, ["a", "a", "b", "b", "b"])
    assert name == "b" and math.isclose(dice, 2 / 11) and strip == [2, 4]


def test_cases_round_trip_with_masks_of_different_sizes(tmp_path):
    shapes = [(24, 32), (40, 20), (24, 32), (30, 30), (16, 48)]
    write_cases(tmp_path / "cases.npz", [0.2, 0.9, 0.5, 0.7, 0.0], shapes=shapes,
                hd95=np.array([5.0, 1.0, 3.0, 2.0, np.nan]))
    cases = load_cases(tmp_path / "cases.npz")
    assert [p.shape for p in cases.predictions] == shapes
    assert cases.predictions[3][15, 15 + round(8 * 0.3)] and not cases.predictions[3][0, 0]
    # the picked cases (worst/median/best of both, two spread) keep image and truth; case 3
    # is none of them
    assert set(cases.images) == set(cases.truths) == {0, 1, 2, 4}
    assert all(cases.truths[i].shape == shapes[i] for i in cases.truths)
    assert load_cases(tmp_path / "missing.npz") is None


def test_case_gallery_draws_each_case_at_its_scored_size(tmp_path):
    shapes = [(24, 32), (40, 20), (24, 32), (30, 30), (16, 48)]
    write_cases(tmp_path / "cases.npz", [0.2, 0.9, 0.5, 0.7, 0.0], shapes=shapes,
                hd95=np.array([5.0, 1.0, 3.0, 2.0, np.nan]))
    cases = load_cases(tmp_path / "cases.npz")
    roles = case_gallery("optimizer=adam", cases, tmp_path / "g.png")
    assert roles == {"case_04": "worst Dice", "case_02": "median Dice, median HD95",
                     "case_01": "best Dice, best HD95", "case_00": "worst HD95"}
    assert (tmp_path / "g.png").stat().st_size > 10_000
    # the 16x16 image is resized to the 40x20 mask it was scored against
    assert image_at(cases.images[1], cases.shapes[1]).shape == (40, 20, 3)


def test_the_gallery_has_a_title_and_a_key(tmp_path, monkeypatch):
    import segbench.report.gallery as gallery

    figures = []
    monkeypatch.setattr(gallery, "save_figure", lambda fig, path, dpi: figures.append(fig))
    write_cases(tmp_path / "cases.npz", [0.2, 0.9, 0.5])
    case_gallery("optimizer=adam", load_cases(tmp_path / "cases.npz"), tmp_path / "g.png")
    (fig,) = figures
    assert "worst, median and best" in fig._suptitle.get_text()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == [f"{n} contour" for n in CONTOURS] and "false positive" in labels
    # row labels name the case and its role, x labels its metrics
    assert "case_00" in fig.axes[0].get_ylabel() and "Dice 0.200" in fig.axes[1].get_xlabel()


def test_volume_strip_of_the_worst_patient(tmp_path):
    groups = ["p1"] * 3 + ["p2"] * 3
    write_cases(tmp_path / "cases.npz", [0.9, 0.8, 0.9, 0.1, 0.2, 0.0], groups=groups)
    cases = load_cases(tmp_path / "cases.npz")
    assert cases.strip_volume == "p2" and cases.strip == [3, 4, 5]
    caption = volume_strip("model=unet", cases, tmp_path / "v.png")
    assert "worst volume p2" in caption and (tmp_path / "v.png").is_file()


def test_disagreement_shows_the_cases_configurations_disagree_on(tmp_path):
    write_cases(tmp_path / "a.npz", [0.5, 0.5, 0.5, 0.5, 0.5], seed=1)
    write_cases(tmp_path / "b.npz", [0.5, 0.9, 0.5, 0.0, 0.5], seed=2)
    both = [("a", load_cases(tmp_path / "a.npz")), ("b", load_cases(tmp_path / "b.npz"))]
    assert disagreement(both, tmp_path / "d.png", 2) == ["case_03", "case_01"]
    assert (tmp_path / "d.png").is_file()
    # one configuration: nothing to compare
    assert disagreement(both[:1], tmp_path / "one.png", 2) == []


@pytest.mark.parametrize("field", ["dice", "iou"])
def test_a_training_run_keeps_every_case_agreeing_with_per_case_csv(tiny_run, field):
    cases = load_cases(tiny_run / "cases.npz")
    with open(tiny_run / "per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert cases.ids == [r["image"] for r in rows]
    np.testing.assert_allclose(getattr(cases, field), [float(r[field]) for r in rows], atol=1e-5)
    for r, pred in zip(rows, cases.predictions, strict=True):
        assert pred.sum() == int(r["pred_pixels"])


def test_tta_changed_orders_by_the_size_of_the_change():
    assert tta_changed(np.array([0.5, 0.9, 0.2, 0.4]), np.array([0.5, 0.6, 0.3, 0.4]),
                       k=3) == [1, 2]


def test_with_tta_the_gallery_shows_the_cases_it_changed(tmp_path):
    write_cases(tmp_path / "cases.npz", [0.2, 0.9, 0.5, 0.7])
    plain = load_cases(tmp_path / "cases.npz")
    dice = np.array([0.2, 0.9, 0.5, 0.7])
    counts = np.zeros((4, 4), np.int64)
    # the same masks with TTA, except case 3 (Dice 0.7 -> 0.1), whose image is kept for it
    save_cases(tmp_path / "tta.npz",
               SplitCases(plain.ids, counts, np.array([0.2, 0.9, 0.5, 0.1]), dice, None,
                          plain.predictions, np.zeros((4, 8, 8, 3), np.uint8),
                          [np.ones((24, 32), bool)] * 4, 0.5),
               spread=0, plain=(plain.predictions, dice))
    cases = load_cases(tmp_path / "tta.npz")
    assert cases.plain_dice[3] == np.float32(0.7) and 3 in cases.images
    assert tta_gallery("eval.tta=true", cases, tmp_path / "tta.png")
    assert not tta_gallery("no tta", plain, tmp_path / "none.png")  # evaluated without TTA


def test_eval_with_tta_keeps_the_masks_without_it(tiny_run, tmp_path):
    run_cli("eval", f"run_dir={tiny_run}", "eval.tta=true", f"hydra.run.dir={tmp_path / 'out'}",
            cwd=tmp_path)
    cases = load_cases(tmp_path / "out" / "cases.npz")
    own = load_cases(tiny_run / "cases.npz")  # the run tested best.pt without TTA
    np.testing.assert_allclose(cases.plain_dice, own.dice, atol=1e-6)
    for a, b in zip(cases.plain, own.predictions, strict=True):
        np.testing.assert_array_equal(a, b)
