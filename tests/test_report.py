"""`segbench report` on run directories written by hand, so every expected number is known."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from conftest import run_cli
from segbench import SegbenchError
from segbench.report import build_report
from segbench.stats import bootstrap_mean_ci

IDS = [f"img_{i:02d}" for i in range(10)]
CHOICES = {"dataset": "synthetic", "model": "unet", "optimizer": "adam", "loss": "dice",
           "resolution": "64", "hydra/launcher": "basic"}


def fake_run(path: Path, overrides: list[str], dice: dict[str, float] | None, *, num: int = 0,
             status: dict | None = None, epochs: int = 3, params: int = 1_000_000) -> Path:
    """A run directory as the trainer leaves it; dice None: the run never finished."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    choices = dict(CHOICES)
    for o in overrides:
        key, value = o.split("=", 1)
        if key in choices:
            choices[key] = value
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"runtime": {"choices": choices}, "job": {"num": num}}}))
    (path / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "optimizer": {"name": choices["optimizer"]}}))
    (path / "train.log").write_text("")
    with open(path / "history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "lr", "train_loss", "val_loss", "val_dice", "val_iou"])
        for e in range(1, epochs + 1):
            w.writerow([e, 1e-3, 1 / e, 1.1 / e, 0.5 + 0.1 * e, 0.4 + 0.1 * e])
    if status:
        (path / "status.json").write_text(json.dumps(status))
    if dice is None:
        return path
    values = np.array(list(dice.values()))
    iou = values / (2 - values)
    (path / "metrics.json").write_text(json.dumps({
        "test": {"dice": values.mean(), "iou": iou.mean(), "dice_micro": values.mean() + 0.01,
                 "iou_micro": iou.mean() + 0.01, "precision": 0.8, "recall": 0.7, "n_images": len(values)},
        "epochs_run": epochs, "train_seconds": 120.0, "model": {"name": "unet", "params": params}}))
    with open(path / "per_case.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "dice", "iou"])
        for (image, d), i in zip(dice.items(), iou, strict=True):
            w.writerow([image, f"{d:.6f}", f"{i:.6f}"])
    kept = list(dice)[:3]
    rng = np.random.default_rng(num)
    np.savez_compressed(path / "predictions.npz", ids=np.array(kept), threshold=0.5,
                        dice=np.array([dice[k] for k in kept], np.float32),
                        images=rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8),
                        masks=rng.integers(0, 2, (3, 16, 16), dtype=np.uint8),
                        probs=rng.integers(0, 255, (3, 16, 16), dtype=np.uint8))
    return path


def per_image(seed: int, shift: float, noise: float = 0.02) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    base = np.linspace(0.55, 0.85, len(IDS))
    return dict(zip(IDS, np.clip(base + shift + rng.normal(0, noise, len(IDS)), 0, 1), strict=True))


@pytest.fixture()
def sweep(tmp_path) -> Path:
    """optimizer x loss one axis at a time (baseline adam/dice), two seeds, plus two broken runs."""
    root = tmp_path / "sweep"
    configs = [(["optimizer=adam", "loss=dice"], 0.0), (["optimizer=sgd", "loss=dice"], -0.08),
               (["optimizer=adam", "loss=bce"], 0.01)]
    for ci, (overrides, shift) in enumerate(configs):
        for seed in (0, 1):
            name = ",".join(overrides) + f"/seed={seed}"
            fake_run(root / name, [*overrides, f"seed={seed}", "dataset.num_train=24"],
                     per_image(100 * ci + seed, shift), num=2 * ci + seed)
    num = 2 * len(configs)
    fake_run(root / "optimizer=rmsprop,loss=dice/seed=0", ["optimizer=rmsprop", "loss=dice", "seed=0",
             "dataset.num_train=24"], None, num=num, epochs=0,
             status={"state": "failed", "error": "training loss became nan in epoch 1"})
    fake_run(root / "optimizer=sgd,loss=bce/seed=0", ["optimizer=sgd", "loss=bce", "seed=0",
             "dataset.num_train=24"], None, num=num + 1, epochs=1, status={"state": "running", "pid": 1})
    return root


def _rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {row["configuration"]: row for row in csv.DictReader(f)}


def test_report_tables_statistics_and_figures(sweep):
    out = sweep / "report"
    result = build_report(sweep, out, n_resamples=2000, seed=7)
    assert result["baseline"] == "optimizer=adam, loss=dice"
    for name in ("report.md", "report.csv", "metrics.png", "curves.png", "predictions.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = _rows(out / "report.csv")
    assert set(rows) == {"optimizer=adam, loss=dice", "optimizer=sgd, loss=dice",
                         "optimizer=adam, loss=bce", "optimizer=rmsprop, loss=dice",
                         "optimizer=sgd, loss=bce"}

    # Mean ± std over seeds, by hand.
    seeds = [per_image(100 + s, -0.08) for s in (0, 1)]  # optimizer=sgd is the second configuration
    seed_means = [np.mean(list(d.values())) for d in seeds]
    sgd = rows["optimizer=sgd, loss=dice"]
    assert float(sgd["dice_mean"]) == pytest.approx(np.mean(seed_means), rel=1e-5)
    assert float(sgd["dice_std"]) == pytest.approx(np.std(seed_means, ddof=1), rel=1e-4)
    assert sgd["dice_n"] == "2" and sgd["n_finished"] == "2"

    # Paired comparison on per-image means over seeds: scipy's Wilcoxon and our seeded bootstrap.
    base = [per_image(s, 0.0) for s in (0, 1)]
    b = np.array([np.mean([round(d[i], 6) for d in base]) for i in IDS])
    c = np.array([np.mean([round(d[i], 6) for d in seeds]) for i in IDS])
    assert float(sgd["dice_diff"]) == pytest.approx((c - b).mean(), rel=1e-5)
    assert float(sgd["dice_p"]) == pytest.approx(stats.wilcoxon(c, b).pvalue, rel=1e-5)
    low, high = bootstrap_mean_ci(c - b, n_resamples=2000, seed=7)
    assert float(sgd["dice_ci_low"]) == pytest.approx(low, rel=1e-5)
    assert float(sgd["dice_ci_high"]) == pytest.approx(high, rel=1e-5)
    assert sgd["dice_verdict"] == "significantly worse at 0.05"
    assert rows["optimizer=adam, loss=dice"]["dice_verdict"] == "baseline"

    md = (out / "report.md").read_text()
    assert "Every run used: " in md and "`dataset.num_train=24`" in md and "`model=unet`" in md
    assert "| optimizer | loss | n | dice | iou |" in md  # varying settings name the rows
    assert "adam (baseline) | dice | 2 |" in md
    assert "95% CI" in md and "Wilcoxon" in md and "significantly worse at 0.05" in md
    best_dice = max(float(r["dice_mean"]) for r in rows.values() if r["dice_mean"])
    assert f"**{best_dice:.3f} ±" in md  # the best Dice is marked
    # One axis at a time: a table per axis.
    assert "## Per axis" in md and "**optimizer**" in md and "**loss**" in md
    # Broken runs are listed, not dropped.
    assert "## Incomplete and failed runs" in md
    assert "training loss became nan in epoch 1" in md and "| killed |" in md
    assert "![test metrics with 95% confidence intervals](metrics.png)" in md


def test_baseline_choice_and_its_errors(sweep):
    out = sweep / "report"
    assert build_report(sweep, out, baseline="optimizer=sgd", n_resamples=200)["baseline"] \
        == "optimizer=sgd, loss=dice"
    assert build_report(sweep, out, baseline="optimizer=adam, loss=bce", n_resamples=200)["baseline"] \
        == "optimizer=adam, loss=bce"
    with pytest.raises(SegbenchError, match="matches 2 configurations"):
        build_report(sweep, out, baseline="loss=dice", n_resamples=200)
    with pytest.raises(SegbenchError, match="matches no configuration.*optimizer=adam, loss=dice"):
        build_report(sweep, out, baseline="optimizer=lion", n_resamples=200)
    # A configuration with only failed runs cannot be the baseline either.
    with pytest.raises(SegbenchError, match="matches no configuration"):
        build_report(sweep, out, baseline="optimizer=rmsprop", n_resamples=200)


def test_mismatched_test_images_are_intersected_with_a_note(tmp_path):
    root = tmp_path / "runs"
    fake_run(root / "a", ["model=unet"], per_image(0, 0.0), num=0)
    fewer = dict(list(per_image(1, 0.05).items())[:7])
    fake_run(root / "b", ["model=fpn"], fewer, num=1)
    result = build_report(root, root / "report", n_resamples=200)
    comp = result["comparisons"]["dice"]["model=fpn"]
    assert comp["n_pairs"] == 7
    assert any("compared on the 7 they share" in w for w in result["warnings"])
    assert "compared on the 7 they share" in (root / "report" / "report.md").read_text()


def test_two_crossed_axes_get_a_grid(tmp_path):
    root = tmp_path / "grid"
    num = 0
    for model in ("unet", "fpn"):
        for aug in ("none", "basic"):
            fake_run(root / f"{model}-{aug}", [f"model={model}", f"augmentation={aug}"],
                     per_image(num, 0.02 * num), num=num)
            num += 1
    build_report(root, root / "report", n_resamples=200)
    md = (root / "report" / "report.md").read_text()
    assert "| augmentation \\ model | unet | fpn |" in md or "| model \\ augmentation | none | basic |" in md


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(SegbenchError, match="no segbench run directories"):
        build_report(tmp_path, tmp_path / "report")


def test_report_command_on_a_sweep_dir_named_by_its_overrides(sweep, tmp_path):
    proc = run_cli("report", str(sweep), "report.baseline=optimizer=sgd", "report.bootstrap=500",
                   cwd=tmp_path)
    assert "baseline: optimizer=sgd, loss=dice" in proc.stdout
    assert (sweep / "report" / "report.md").is_file() and (sweep / "report" / "report.log").is_file()
    bad = run_cli("report", str(tmp_path / "nothing-here"), cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "nothing-here: no such file or directory" in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = run_cli("report", str(empty), cwd=tmp_path, check=False)
    assert none.returncode == 2 and "no segbench run directories" in none.stdout + none.stderr
    assert "Traceback" not in none.stdout + none.stderr
