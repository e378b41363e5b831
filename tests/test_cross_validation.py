"""Cross-validation folds (segbench.data.splits), fold ensembles (`segbench ensemble`, `predict`
with several runs) and the report's pooled cross-validation table, on the LGG-format stand-in."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import run_cli
from segbench import SegbenchError
from segbench.data.source import Sample
from segbench.data.splits import fold_assignment, make_splits
from segbench.report import build_report

TINY_LGG = ["dataset=lgg_mri", "resolution=64", "model.encoder=resnet18", "model.encoder_depth=3",
            "model.decoder_channels=[32,16,8]", "trainer.max_epochs=1", "trainer.batch_size=8",
            "augmentation=none", "logger=none", "eval.surface_metrics=false",
            "eval.latency=false", "eval.num_predictions=2"]


def samples(groups: dict[str, int]) -> list[Sample]:
    return [Sample(f"{g}_{i}", Path("x"), Path("y"), g)
            for g, n in groups.items() for i in range(n)]


# --- the folds ------------------------------------------------------------------------------------

def test_folds_partition_the_pool_by_patient_seeded_and_balanced():
    pool = samples({f"P{i}": n for i, n in enumerate([3, 9, 4, 7, 5, 6, 2, 8, 5, 6])})
    folds = fold_assignment(pool, 3, seed=0)
    flat = [g for f in folds for g in f]
    assert sorted(flat) == sorted({s.group for s in pool}) and len(flat) == len(set(flat))
    sizes = [sum(s.group in f for s in pool) for f in folds]
    assert max(sizes) - min(sizes) <= 9  # dealt to the smallest fold: at most one patient apart
    assert fold_assignment(pool, 3, seed=0) == folds  # seeded
    assert fold_assignment(pool, 3, seed=1) != folds
    test = samples({"T0": 4})
    seen_val = set()
    for k in range(3):
        s = make_splits({"train": pool, "test": test}, val_fraction=0.2, train_fraction=1.0,
                        seed=0, folds=3, fold=k)
        val = {x.group for x in s["val"]}
        assert val == set(folds[k]) and not val & {x.group for x in s["train"]}
        assert len(s["train"]) + len(s["val"]) == len(pool) and s["test"] == test
        seen_val |= val
    assert seen_val == {s.group for s in pool}
    # Images without a group are folded one by one: equal folds.
    ungrouped = [Sample(f"i{i}", Path("x"), Path("y")) for i in range(10)]
    assert sorted(len(f) for f in fold_assignment(ungrouped, 5, seed=3)) == [2] * 5


def test_fold_settings_are_checked():
    pool, test = samples({"A": 2, "B": 2, "C": 2}), samples({"T": 1})
    with pytest.raises(SegbenchError, match="dataset.folds=4 but the training pool has 3 patients"):
        make_splits({"train": pool, "test": test}, val_fraction=0.2, train_fraction=1, seed=0,
                    folds=4, fold=0)
    with pytest.raises(SegbenchError,
                       match="dataset.fold=3: with dataset.folds=3 use a fold in 0..2"):
        make_splits({"train": pool, "test": test}, val_fraction=0.2, train_fraction=1, seed=0,
                    folds=3, fold=3)
    with pytest.raises(SegbenchError, match="own validation list"):
        make_splits({"train": pool, "val": pool[:1], "test": test}, val_fraction=0.2,
                    train_fraction=1, seed=0, folds=2, fold=0)


def test_train_refuses_a_fold_outside_the_folds(tmp_path):
    proc = run_cli("train", "dataset.folds=3", "dataset.fold=5", "hydra.run.dir=run", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    assert "dataset.fold=5: with dataset.folds=3 use a fold in 0..2" in proc.stdout + proc.stderr
    proc = run_cli("train", "dataset.folds=3", "hydra.run.dir=run2", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "dataset.fold=null: with dataset.folds=3" in proc.stdout + proc.stderr
    proc = run_cli("train", "dataset.fold=1", "hydra.run.dir=run3", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "dataset.fold=1 without dataset.folds" in proc.stdout + proc.stderr


# --- three folds on the LGG stand-in, their report and their ensemble ----------------------------

@pytest.fixture(scope="module")
def cv_sweep(lgg_stand_in, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("cv")
    args = ["train", "-m", f"dataset.root={lgg_stand_in.root}", *TINY_LGG, "dataset.folds=3",
            "dataset.fold=0,1,2"]
    run_cli(*args, cwd=cwd)
    again = run_cli(*args, cwd=cwd)  # a sweep of folds resumes like any sweep
    assert again.stdout.count("skipping") + again.stderr.count("skipping") == 3
    (sweep,) = (cwd / "outputs" / "multirun").iterdir()
    return sweep


def _fold_runs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.rglob("split.json")
                  if (p.parent / "checkpoints").is_dir())


@pytest.mark.slow
def test_three_folds_are_patient_disjoint_with_one_test_split(cv_sweep, lgg_stand_in):
    runs = _fold_runs(cv_sweep)
    assert [r.relative_to(cv_sweep).as_posix() for r in runs] == [
        f"dataset.fold={k}/seed=0" for k in range(3)]
    docs = [json.loads((r / "split.json").read_text()) for r in runs]
    test = docs[0]["splits"]["test"]
    vals = [set(d["groups"]["val"]) for d in docs]
    for k, d in enumerate(docs):
        assert d["splits"]["test"] == test and d["groups"]["test"] == ["TCGA_FG_0003"]
        assert d["cv"]["folds"] == 3 and d["cv"]["fold"] == k and d["cv"]["unit"] == "groups"
        assert set(d["groups"]["val"]) == set(d["cv"]["assignment"][k])
        assert not set(d["groups"]["train"]) & vals[k]
    assert len(set.union(*vals)) == sum(len(v) for v in vals) == 3  # disjoint, every patient once
    assert set.union(*vals) == set(lgg_stand_in.patients) - {"TCGA_FG_0003"}


@pytest.mark.slow
def test_report_pools_the_folds_into_a_cross_validation_table(cv_sweep, tmp_path):
    out = tmp_path / "report"
    result = build_report(cv_sweep, out, n_resamples=200)
    assert result["configurations"] == 1 and result["finished"] == 3
    assert {"cv", "folds"} <= set(result["tables"])
    metrics = [json.loads((r / "metrics.json").read_text()) for r in _fold_runs(cv_sweep)]
    val = np.array([m["val_best"]["dice"] for m in metrics])
    test = np.array([m["test"]["dice"] for m in metrics])
    with open(out / "tables" / "cv.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["folds"] == "3" and row["folds_finished"] == "3"
    assert float(row["val_dice_mean"]) == pytest.approx(val.mean(), rel=1e-5)
    assert float(row["val_dice_std"]) == pytest.approx(val.std(ddof=1), rel=1e-4)
    assert float(row["test_dice_mean"]) == pytest.approx(test.mean(), rel=1e-5)
    md = (out / "report.md").read_text()
    assert "## Cross-validation" in md and "Folds partition the training pool by patients" in md
    header = "| configuration | fold | seeds | val dice | test dice | test iou | test volume dice |"
    assert header in md
    assert "| all runs | seed 0 x folds 0,1,2 |" in md


def _manual_ensemble_counts(runs: list[Path], test_ids: list[str]) -> tuple[np.ndarray, list]:
    """Per test image TP, FP, FN of the mean of the fold models' sigmoid probabilities,
    computed here model by model."""
    from segbench.data import build_datasets, select_splits
    from segbench.models import load_trained
    from segbench.runs.rundir import RunDir

    probs = []
    for r in runs:
        model, _, cfg = load_trained(RunDir(r), "best", "cpu")
        model.eval()
        splits = select_splits(cfg, {"test": test_ids}, ["test"])
        data = build_datasets(cfg, splits, Path(cfg.paths.cache), augment=False)["test"]
        x = torch.stack([torch.as_tensor(data[i][0]) for i in range(len(data))])
        with torch.no_grad():
            probs.append(torch.sigmoid(model(x).float())[:, 0].numpy())
        masks = np.stack([np.asarray(data[i][1]).reshape(x.shape[-2:])
                          for i in range(len(data))]) > 0
    mean = np.mean(probs, axis=0)
    pred = mean >= 0.5
    counts = np.stack([(pred & masks).sum((1, 2)), (pred & ~masks).sum((1, 2)),
                       (~pred & masks).sum((1, 2))], 1)
    return counts, probs


@pytest.mark.slow
def test_ensemble_averages_the_fold_models_probabilities(cv_sweep, lgg_stand_in, tmp_path):
    runs = _fold_runs(cv_sweep)
    proc = run_cli("ensemble", str(cv_sweep), "eval.latency=false", cwd=tmp_path)
    out = cv_sweep / "ensemble"
    assert "ensemble of 3 runs" in proc.stdout + proc.stderr
    for name in ("metrics.json", "per_case.csv", "per_volume.csv", "config.yaml", "split.json",
                 "ensemble.json", "predictions.png", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    test_ids = json.loads((runs[0] / "split.json").read_text())["splits"]["test"]
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert [r["image"] for r in rows] == test_ids
    counts, probs = _manual_ensemble_counts(runs, test_ids)
    assert not np.allclose(probs[0], np.mean(probs, axis=0))  # the folds' models differ
    got = np.array([[int(r["tp"]), int(r["fp"]), int(r["fn"])] for r in rows])
    np.testing.assert_array_equal(got, counts)
    tp, fp, fn = counts.T
    dice = np.where(2 * tp + fp + fn == 0, 1.0, 2 * tp / np.maximum(2 * tp + fp + fn, 1))
    np.testing.assert_allclose([float(r["dice"]) for r in rows], dice, atol=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["dice"] == pytest.approx(dice.mean(), abs=1e-6)
    assert metrics["ensemble"]["members"] == 3 and metrics["model"]["params"] == sum(
        json.loads((r / "metrics.json").read_text())["model"]["params"] for r in runs)
    # The report compares the ensemble with the single models (pooled over their folds).
    result = build_report(cv_sweep, tmp_path / "report", n_resamples=200)
    assert result["labels"] == ["single model", "ensemble of 3"]
    assert result["level"] == "volumes"  # LGG: patients are the unit
    comp = result["comparisons"]["dice"]["ensemble of 3"]
    assert comp["runs"] == (1, 3) and comp["n_pairs"] == 1
    # predict with several runs: their mean probability, masks at each image's own size.
    images = tmp_path / "images"
    images.mkdir()
    for i in test_ids[:2]:
        shutil.copy(next(lgg_stand_in.root.rglob(f"{i}.tif")), images / f"{i}.tif")
    pred = run_cli("predict", str(runs[0]), str(runs[1]), f"input={images}", "output=masks",
                   cwd=tmp_path)
    assert "an ensemble of 2 runs" in pred.stdout + pred.stderr
    assert len(list((tmp_path / "masks").glob("*_mask.png"))) == 2


@pytest.mark.slow
def test_ensemble_refuses_runs_it_cannot_average(cv_sweep, tmp_path):
    runs = _fold_runs(cv_sweep)
    other = tmp_path / "other"
    shutil.copytree(runs[1], other)
    split = json.loads((other / "split.json").read_text())
    split["splits"]["test"] = split["splits"]["test"][1:]
    (other / "split.json").write_text(json.dumps(split))
    proc = run_cli("ensemble", str(runs[0]), str(other), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "tested on different images" in proc.stdout + proc.stderr
    shutil.rmtree(other)
    shutil.copytree(runs[1], other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["resolution"]["height"] = 128
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli("ensemble", str(runs[0]), str(other), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "preprocessing differs" in proc.stdout + proc.stderr
    assert "resolution.height: 64" in proc.stdout + proc.stderr
    one = run_cli("ensemble", str(runs[0]), cwd=tmp_path, check=False)
    assert one.returncode == 2 and "at least 2 runs" in one.stdout + one.stderr
    for p in (proc, one):
        assert "Traceback" not in p.stdout + p.stderr
