"""`segbench report` on run directories written by hand, so every expected number is known."""

from __future__ import annotations

import csv
import functools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import TINY, run_cli
from segbench import SegbenchError, config_dir
from segbench.commands.auto_options import resolve_auto_options
from segbench.metrics.stats import hierarchical_comparison
from segbench.report import build_report
from segbench.runs.rundir import ENSEMBLE

IDS = [f"img_{i:02d}" for i in range(10)]
DELETE = object()  # fake_run(edit={key: DELETE}): a config from before that key existed


@functools.lru_cache(maxsize=64)
def _composed(overrides: tuple[str, ...]) -> tuple[dict, dict]:
    """(resolved config as a run writes it, Hydra's group choices) for these overrides."""
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", list(overrides), return_hydra_config=True)
    resolve_auto_options(cfg, cfg.hydra)  # as the train command does: the option that ran
    choices = {k: v for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items()
               if v is not None}
    del cfg.hydra
    return OmegaConf.to_container(cfg, resolve=True), choices


def fake_run(path: Path, overrides: list[str], dice: dict[str, float] | None, *, num: int = 0,
             status: dict | None = None, epochs: int = 3, params: int = 1_000_000,
             volumes: dict[str, float] | None = None, val_dice: float | None = None,
             edit: dict | None = None) -> Path:
    """A run directory as the trainer leaves it (config.yaml resolved from `overrides`, `edit`
    changed afterwards); dice None: the run never finished."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config, choices = _composed(tuple(overrides))
    config = json.loads(json.dumps(config))
    for key, value in (edit or {}).items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"runtime": {"choices": choices}, "job": {"num": num}}}))
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
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
    val = values.mean() if val_dice is None else val_dice
    (path / "metrics.json").write_text(json.dumps({
        "test": {"dice": values.mean(), "iou": iou.mean(), "dice_micro": values.mean() + 0.01,
                 "iou_micro": iou.mean() + 0.01, "precision": 0.8, "recall": 0.7,
                 "n_images": len(values)},
        "val_best": {"dice": val, "iou": val / (2 - val)},
        "epochs_run": epochs, "train_seconds": 120.0,
        "model": {"name": "unet", "params": params, "gflops": 1.5, "latency_ms": 4.0}}))
    with open(path / "per_case.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "dice", "iou"])
        for (image, d), i in zip(dice.items(), iou, strict=True):
            w.writerow([image, f"{d:.6f}", f"{i:.6f}"])
    if volumes is not None:
        with open(path / "per_volume.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["volume", "slices", "dice", "iou"])
            for v, d in volumes.items():
                w.writerow([v, 5, f"{d:.6f}", f"{d / (2 - d):.6f}"])
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
    fake_run(root / "optimizer=rmsprop,loss=dice/seed=0",
             ["optimizer=rmsprop", "loss=dice", "seed=0", "dataset.num_train=24"], None,
             num=num, epochs=0,
             status={"state": "failed", "error": "training loss became nan in epoch 1"})
    fake_run(root / "optimizer=sgd,loss=bce/seed=0",
             ["optimizer=sgd", "loss=bce", "seed=0", "dataset.num_train=24"], None,
             num=num + 1, epochs=1, status={"state": "running", "pid": 1})
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

    # Two seeds on both sides: the two-level bootstrap over runs and images, on the same tables.
    base = np.array([[round(per_image(s, 0.0)[i], 6) for i in IDS] for s in (0, 1)])
    cand = np.array([[round(d[i], 6) for i in IDS] for d in seeds])
    assert float(sgd["dice_diff"]) == pytest.approx(cand.mean() - base.mean(), rel=1e-5)
    expected = hierarchical_comparison(cand, base, n_resamples=2000, seed=7)
    for key, column in (("p_value", "dice_p"), ("ci_low", "dice_ci_low"),
                        ("ci_high", "dice_ci_high")):
        assert float(sgd[column]) == pytest.approx(expected[key], rel=1e-5)
    assert sgd["dice_method"] == "bootstrap over runs and cases"
    assert sgd["dice_verdict"] == "significantly worse at 0.05"
    assert rows["optimizer=adam, loss=dice"]["dice_verdict"] == "baseline"

    md = (out / "report.md").read_text()
    # Shared settings are the resolved keys every configuration has, by group.
    assert "### Shared settings" in md and "`num_train=24`" in md and "| model | `name=unet`" in md
    assert "| optimizer | loss | n | dice | iou |" in md  # varying settings name the rows
    assert "adam (baseline) | dice | 2 |" in md
    assert "95% CI" in md and "two-level bootstrap (2000 resamples of runs and images" in md
    assert "Holm correction over the 2 comparisons" in md
    assert "significantly worse at 0.05" in md
    best_dice = max(float(r["dice_mean"]) for r in rows.values() if r["dice_mean"])
    assert f"**{best_dice:.3f} ±" in md  # the best Dice is marked
    assert "params_M | GFLOPs | latency_ms | train_min |" in md  # cost columns
    # One axis at a time: a table per axis.
    assert "## Per axis" in md and "**optimizer**" in md and "**loss**" in md
    # Broken runs are listed, not dropped.
    assert "## Incomplete and failed runs" in md
    assert "training loss became nan in epoch 1" in md and "| killed |" in md
    assert "![test dice, iou (per image) per configuration" in md
    assert "over runs and test cases" in md
    # Every table also as CSV and booktabs LaTeX, best values in bold.
    tex = (out / "tables" / "results.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex
    assert f"\\textbf{{{best_dice:.3f} $\\pm$" in tex
    with open(out / "tables" / "results.csv", newline="") as f:
        table = {r["configuration"]: r for r in csv.DictReader(f)}
    assert "dice" in table["optimizer=adam, loss=bce"]["best"].split(";")
    for name in ("configurations", "comparison_dice", "comparison_iou"):
        assert (out / "tables" / f"{name}.csv").is_file()
        assert (out / "tables" / f"{name}.tex").is_file()


def test_baseline_choice_and_its_errors(sweep):
    out = sweep / "report"
    assert build_report(sweep, out, baseline="optimizer=sgd", n_resamples=200)["baseline"] \
        == "optimizer=sgd, loss=dice"
    assert build_report(sweep, out, baseline="optimizer=adam, loss=bce",
                        n_resamples=200)["baseline"] == "optimizer=adam, loss=bce"
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
    assert ("| augmentation \\ model | unet | fpn |" in md
            or "| model \\ augmentation | none | basic |" in md)


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(SegbenchError, match="no segbench run directories"):
        build_report(tmp_path, tmp_path / "report")


def test_report_command_on_a_sweep_dir_named_by_its_overrides(sweep, tmp_path):
    proc = run_cli("report", str(sweep), "report.baseline=optimizer=sgd", "report.bootstrap=500",
                   cwd=tmp_path)
    assert "baseline: optimizer=sgd, loss=dice" in proc.stdout
    assert (sweep / "report" / "report.md").is_file()
    assert (sweep / "report" / "report.log").is_file()
    assert (sweep / "report" / "tables" / "results.tex").is_file()
    bad = run_cli("report", str(tmp_path / "nothing-here"), cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "nothing-here: no such file or directory" in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = run_cli("report", str(empty), cwd=tmp_path, check=False)
    assert none.returncode == 2 and "no segbench run directories" in none.stdout + none.stderr
    assert "Traceback" not in none.stdout + none.stderr


# --- what ran: resolved configs, preset values, pooling -------------------------------------------

def test_a_preset_value_of_a_swept_group_is_shown(tmp_path):
    """`-m experiment=quickstart optimizer=adam,sgd` runs sgd at the preset's lr 0.003, not
    sgd.yaml's 0.01: the report shows the lr each configuration really ran with."""
    proc = run_cli("train", "-m", "experiment=quickstart", "optimizer=adam,sgd", *TINY,
                   "trainer.max_epochs=1", "eval.surface_metrics=false", "eval.num_predictions=2",
                   cwd=tmp_path)
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    # A readable folder (what it sweeps, the day), printed at the end with the next command.
    assert sweep.name == f"optimizer_{time.strftime('%Y-%m-%d')}"
    log = proc.stdout + proc.stderr
    assert f"sweep finished: {sweep}" in log
    assert f"report: segbench report outputs/multirun/{sweep.name}" in log
    result = build_report(sweep, sweep / "report", n_resamples=200)
    head = (sweep / "report" / "report.md").read_text().splitlines()[:3]
    assert head[0] == f"# segbench report: {sweep.name}"
    assert "`segbench train -m experiment=quickstart optimizer=adam,sgd dataset.num_train=24" \
        in head[2] and head[2].endswith(" eval.surface_metrics=false eval.num_predictions=2`")
    result = build_report(sweep, tmp_path / "report", n_resamples=200)
    assert result["labels"] == ["optimizer=adam", "optimizer=sgd"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert ("`optimizer.lr` is 0.003 in every configuration, set by experiment=quickstart; the "
            "option files say adam 0.001, sgd 0.01") in md
    with open(tmp_path / "report" / "tables" / "configurations.csv", newline="") as f:
        rows = {r["configuration"].split(" (")[0]: r for r in csv.DictReader(f)}
    assert rows["optimizer=sgd"]["optimizer.lr"] == "0.003"
    assert rows["optimizer=sgd"]["optimizer.momentum"] == "0.9"  # every differing resolved key
    assert rows["optimizer=adam"]["optimizer.lr"] == "0.003"
    assert "| optimizer | `lr=0.003` |" in md  # listed with the shared settings too


def test_configurations_come_from_the_resolved_config_not_the_command_line(tmp_path):
    """Two runs with the same command line whose presets chose different encoders are two
    configurations, named by the encoder; model=unet is shared, the encoder is not."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        fake_run(root / f"a{seed}", ["model=unet", f"seed={seed}"], per_image(seed, 0.0), num=seed,
                 edit={"model.encoder": "resnet18"}, params=11_000_000)
        fake_run(root / f"b{seed}", ["model=unet", f"seed={seed}"], per_image(10 + seed, 0.02),
                 num=2 + seed, params=24_000_000)
    result = build_report(root, root / "report", n_resamples=200)
    assert result["labels"] == ["encoder=resnet18", "encoder=resnet34"]
    assert result["finished"] == 4 and result["configurations"] == 2  # seeds pooled, encoders not
    md = (root / "report" / "report.md").read_text()
    assert "| encoder | n | dice |" in md and "| resnet18 (baseline) | 2 |" in md
    shared = md[md.index("### Shared settings"):md.index("## Results")]
    assert "`name=unet`" in shared and "encoder=" not in shared


def test_one_seed_is_never_called_significant(tmp_path):
    root = tmp_path / "runs"
    fake_run(root / "a", ["optimizer=adam"], per_image(0, 0.0), num=0)
    fake_run(root / "b", ["optimizer=sgd"], per_image(1, -0.1), num=1)
    result = build_report(root, root / "report", n_resamples=500)
    comp = result["comparisons"]["dice"]["optimizer=sgd"]
    assert comp["p_value"] < 0.05 and comp["method"] == "Wilcoxon over cases (one run)"
    assert comp["verdict"] == ("worse on these 10 images at 0.05; one run, so seed-to-seed "
                               "variance is not captured")
    md = (root / "report" / "report.md").read_text()
    assert "significantly" not in md
    assert "one run on a side: Wilcoxon signed-rank p" in md


def test_volumetric_runs_are_compared_per_volume(tmp_path):
    """LGG: per_volume.csv rows (patients) are the unit of the comparison, not the slices."""
    root = tmp_path / "runs"
    patients = [f"TCGA_{i}" for i in range(6)]
    tables = {}
    for ci, (opt, shift) in enumerate((("adam", 0.0), ("sgd", -0.05))):
        for seed in (0, 1):
            rng = np.random.default_rng(10 * ci + seed)
            vol = {p: float(np.clip(0.7 + shift + 0.02 * i + rng.normal(0, 0.01), 0, 1))
                   for i, p in enumerate(patients)}
            tables.setdefault(opt, []).append([round(vol[p], 6) for p in patients])
            fake_run(root / f"{opt}{seed}", [f"optimizer={opt}", f"seed={seed}"],
                     per_image(10 * ci + seed, shift), num=2 * ci + seed, volumes=vol)
    result = build_report(root, root / "report", n_resamples=1000, seed=3)
    assert result["level"] == "volumes"
    comp = result["comparisons"]["dice"]["optimizer=sgd"]
    assert comp["n_pairs"] == 6 and comp["level"] == "volumes"  # 6 patients, not 10 slices
    expected = hierarchical_comparison(np.array(tables["sgd"]), np.array(tables["adam"]),
                                       n_resamples=1000, seed=3)
    assert comp["mean_diff"] == pytest.approx(expected["mean_diff"])
    assert comp["ci_low"] == pytest.approx(expected["ci_low"])
    md = (root / "report" / "report.md").read_text()
    assert "| configuration | runs | volumes |" in md and "patients are the unit" in md


def test_a_data_size_sweep_is_a_line_with_its_interval_band(tmp_path):
    root = tmp_path / "data_size"
    num = 0
    for fraction, shift in ((0.1, -0.2), (0.25, -0.1), (0.5, -0.04), (1.0, 0.0)):
        for seed in (0, 1, 2):
            fake_run(root / f"f{fraction}/seed={seed}",
                     [f"dataset.train_fraction={fraction}", f"seed={seed}"],
                     per_image(num, shift, noise=0.03), num=num)
            num += 1
    result = build_report(root, root / "report", n_resamples=500)
    assert result["axis"] == "dataset.train_fraction"
    assert result["labels"] == [f"train_fraction={f}" for f in (0.1, 0.25, 0.5, 1.0)]
    md = (root / "report" / "report.md").read_text()
    assert ("test dice, iou (per image) against training-data fraction: line = mean, band = 95% "
            "interval over runs and test cases") in md
    assert (root / "report" / "metrics.png").stat().st_size > 10_000


def test_folds_of_one_configuration_are_pooled_into_cross_validation(tmp_path):
    root = tmp_path / "cv"
    val = {0: 0.61, 1: 0.55, 2: 0.70}
    for fold in (0, 1, 2):
        fake_run(root / f"dataset.fold={fold}/seed=0", ["dataset.folds=3", f"dataset.fold={fold}"],
                 per_image(fold, 0.0), num=fold, val_dice=val[fold])
    result = build_report(root, root / "report", n_resamples=200)
    assert result["configurations"] == 1 and result["finished"] == 3
    with open(root / "report" / "tables" / "cv.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    values = np.array(list(val.values()))
    assert float(row["val_dice_mean"]) == pytest.approx(values.mean())
    assert float(row["val_dice_std"]) == pytest.approx(values.std(ddof=1))
    md = (root / "report" / "report.md").read_text()
    assert "| all runs | 3 of 3 | 0.620 ± 0.075 |" in md


def test_resolution_and_learning_rate_are_numeric_axes_with_short_labels(tmp_path):
    root = tmp_path / "res"
    for i, size in enumerate((64, 128)):
        fake_run(root / f"r{size}", [f"resolution='{size}'"], per_image(i, 0.05 * i), num=i)
    result = build_report(root, root / "report", n_resamples=200)
    assert result["labels"] == ["resolution=64", "resolution=128"]
    assert result["axis"] == "resolution.height"
    assert "against resolution (px)" in (root / "report" / "report.md").read_text()
    root = tmp_path / "lr"
    for i, lr in enumerate(("1e-4", "1e-3", "1e-2")):
        fake_run(root / f"lr{lr}", [f"optimizer.lr={lr}"], per_image(i, 0.01 * i), num=i)
    result = build_report(root, root / "report", n_resamples=200)
    assert result["labels"] == ["lr=0.0001", "lr=0.001", "lr=0.01"]
    assert result["axis"] == "optimizer.lr"


def test_a_run_from_before_a_key_existed_pools_with_runs_where_it_is_null(tmp_path):
    root = tmp_path / "runs"
    fake_run(root / "old", ["seed=0"], per_image(0, 0.0), num=0,
             edit={"dataset.folds": DELETE, "dataset.fold": DELETE, "eval.latency": DELETE})
    fake_run(root / "new", ["seed=1"], per_image(1, 0.0), num=1)
    result = build_report(root, root / "report", n_resamples=200)
    assert result["configurations"] == 1 and result["finished"] == 2


def test_report_words_follow_the_holm_p_and_costs_are_ranked_honestly(tmp_path):
    """Raw p 0.027 and Holm p 0.055 straddle 0.05: no sentence of the report claims a difference.
    Latency timed on a busy machine is never bold; an ensemble's summed training time is not
    'best'."""
    root = tmp_path / "runs"
    base = dict(zip(IDS, np.linspace(0.5, 0.8, len(IDS)), strict=True))
    step = np.arange(1, 11) * 0.01
    step[5] *= -1  # one of ten differences negative, rank 6: Wilcoxon p = 0.0273
    fake_run(root / "a", ["optimizer=adam"], base, num=0)
    fake_run(root / "b", ["optimizer=sgd"],
             {k: v + d for (k, v), d in zip(base.items(), step)}, num=1)
    fake_run(root / "c", ["optimizer=rmsprop"], {k: v + 0.01 * (-1) ** i
                                                for i, (k, v) in enumerate(base.items())}, num=2)
    (root / "c" / ENSEMBLE).write_text(json.dumps({"members": []}))  # c: an ensemble
    for name, latency, seconds in (("a", 208.0, 600.0), ("b", 90.0, 30.0), ("c", 150.0, 6.0)):
        doc = json.loads((root / name / "metrics.json").read_text())
        doc["model"]["latency_ms"], doc["train_seconds"] = latency, seconds
        (root / name / "metrics.json").write_text(json.dumps(doc))
    result = build_report(root, root / "report", n_resamples=500)
    comp = result["comparisons"]["dice"]["optimizer=sgd"]
    assert comp["p_value"] == pytest.approx(0.02734375)
    assert comp["p_holm"] == pytest.approx(0.0546875)
    assert comp["verdict"].startswith("no difference on these 10 images at 0.05")
    md = (root / "report" / "report.md").read_text()
    assert "better on these" not in md and "worse on these" not in md and "significantly" not in md
    assert "each verdict follows its p (Holm), not the raw p" in md
    assert "| 0.055 | no difference on these 10 images" in md  # the per-axis line too
    assert "**90.00**" not in md and "latency_ms not ranked" in md
    assert "**0.50**" in md and "**0.10**" not in md  # b's 30 s is best, not c's members' sum
    assert "an ensemble's train_min is its members' total and is not ranked" in md
