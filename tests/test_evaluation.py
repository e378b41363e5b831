"""The metrics a run reports, end to end: training writes AUROC/AP, HD95/ASSD, the confusion
matrix and the rules it followed; `segbench eval` reproduces them exactly and adds flip TTA."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, read_json, run_cli
from segbench.commands.eval import NOT_COMPARED
from segbench.inference.loop import predict_probs

pytestmark = pytest.mark.slow

# Hydra refuses a config-group choice that parses as a number unless it is quoted.
TINY_Q = [o.replace("resolution=64", "resolution='64'") for o in TINY]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run whose loss follows the epoch (boundary, linear weight) around a region loss
    that needs the training masks (weighted_bce, pos_weight auto), with a per-step schedule."""
    cwd = tmp_path_factory.mktemp("metrics-run")
    run_cli("train", *TINY_Q, "loss=boundary", "loss.schedule=linear", "loss.max_weight=0.5",
            "loss.region.name=weighted_bce", "~loss.region.smooth", "scheduler=poly",
            "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"


def read_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float)
                      and math.isnan(a) and math.isnan(b))


def test_training_reports_every_metric_and_how_it_was_made(run):
    m = read_json(run / "metrics.json")
    test = m["test"]
    for key in ("dice", "iou", "dice_micro", "iou_micro", "precision", "recall", "specificity",
                "accuracy", "auroc", "average_precision", "hd95", "assd", "surface_nan_count",
                "tp", "fp", "fn", "tn"):
        assert key in test, key
    assert 0 < test["iou"] <= test["dice"] <= 1 and 0 < test["iou_micro"] <= test["dice_micro"] <= 1
    assert 0.5 < test["auroc"] <= 1 and 0 < test["average_precision"] <= 1
    assert test["hd95"] >= test["assd"] > 0
    assert m["threshold"] == 0.5 and m["tta"] is False and "both empty" in m["empty_rule"]
    assert m["surface_metrics"] is True and m["surface_unit"] == "px" and m["pixel_spacing"] is None
    assert "95th percentile" in m["hd95_rule"] and "truncated" in m["auroc_method"]
    assert (run / "confusion_matrix.png").stat().st_size > 5000

    rows = read_rows(run / "per_case.csv")
    assert len(rows) == test["n_images"]
    for row in rows:
        dice, iou = float(row["dice"]), float(row["iou"])
        assert iou <= dice and dice == pytest.approx(2 * iou / (1 + iou), abs=2e-6)
    hd95 = np.array([float(r["hd95"]) for r in rows])
    assert np.nanmean(hd95) == pytest.approx(test["hd95"], abs=1e-5)
    assert int(np.isnan(hd95).sum()) == test["surface_nan_count"]
    assert sum(int(r["tp"]) for r in rows) == test["tp"]

    log = (run / "train.log").read_text()
    assert "-> pos_weight" in log  # the (nested) loss got the training masks
    # The trainer told the loss each epoch: the boundary term's weight rose from 0 to 0.5.
    assert "boundary loss: weight 0.0000 in epoch 1" in log
    assert "boundary loss: weight 0.5000 in epoch 2" in log
    assert "surface metrics (HD95, ASSD in pixels) of" in log


def test_history_holds_every_epochs_learning_rate(run):
    rows = read_rows(run / "history.csv")
    lrs = [float(r["lr"]) for r in rows]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert lrs[0] == 1e-3 and lrs[0] > lrs[1] > 0  # each epoch's first-step LR; poly decays


def test_eval_without_flags_reproduces_the_training_figures_exactly(run):
    proc = run_cli("eval", f"run_dir={run}", f"hydra.run.dir={run}/eval/plain", cwd=run.parent)
    trained = read_json(run / "metrics.json")["test"]
    again = read_json(run / "eval" / "plain" / "metrics.json")["test"]
    compared = [k for k in trained if k not in NOT_COMPARED]
    assert set(compared) <= set(again) and "hd95" in compared and "auroc" in compared
    assert {k: again[k] for k in compared if not same(again[k], trained[k])} == {}
    assert f"matches the {len(compared)} test metrics" in proc.stdout + proc.stderr


def test_eval_with_tta_and_surface_metrics_writes_them_all(run):
    out = run / "eval" / "tta"
    run_cli("eval", f"run_dir={run}", "eval.tta=true", "eval.surface_metrics=true",
            f"hydra.run.dir={out}", cwd=run.parent)
    m = read_json(out / "metrics.json")
    assert m["tta"] is True and m["surface_metrics"] is True and m["threshold"] == 0.5
    for key in ("hd95", "assd", "auroc", "average_precision", "surface_nan_count"):
        assert math.isfinite(m["test"][key]), key
    assert (out / "confusion_matrix.png").is_file() and (out / "per_case.csv").is_file()
    assert m["test"]["auroc"] != read_json(run / "metrics.json")["test"]["auroc"]  # TTA changed it


@pytest.mark.parametrize("threshold", [-0.1, 1.5, None])
def test_a_threshold_outside_0_1_is_refused_with_the_fix(threshold):
    from segbench import SegbenchError
    from segbench.settings import check_threshold

    with pytest.raises(SegbenchError, match=r"eval.threshold=.*\[0, 1\]"):
        check_threshold(threshold)
    assert check_threshold(0.3) == 0.3


def test_tta_is_the_mean_of_identity_and_both_flips():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 1, 3, padding=1))  # not flip-equivariant
    images = torch.rand(2, 3, 8, 10)
    with torch.no_grad():
        expected = (torch.sigmoid(net(images)) + torch.sigmoid(net(images.flip(3))).flip(3)
                    + torch.sigmoid(net(images.flip(2))).flip(2)) / 3
        got = predict_probs(net, images, tta=True)
        plain = predict_probs(net, images, tta=False)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, plain)


def test_test_split_computes_surface_metrics_only_when_asked(tmp_path):
    from segbench.data.dataset import SegmentationDataset
    from segbench.inference.loop import Runtime, Subject, test_split
    from segbench.settings import Eval

    rng = np.random.default_rng(0)
    masks = np.zeros((5, 16, 16), np.uint8)
    for i in range(1, 5):
        r, c = rng.integers(2, 9, 2)
        masks[i, r:r + 5, c:c + 5] = 1  # image 0 has nothing to find
    images = np.repeat(masks[..., None] * 200, 3, axis=3).astype(np.uint8)
    dataset = SegmentationDataset(images, masks, [f"im{i}" for i in range(5)])

    class Net(torch.nn.Module):
        """Thresholds [0, 255] images; adds false positives to the first batch (images 0, 1):
        image 0's corner (its ground truth is empty) and image 1's far corner pixel."""

        def forward(self, x):
            logits = (x[:, :1].float() - 100) / 10
            if x.shape[0] == 2 and x[0].sum() == 0:
                logits[0, :, :3, :3] = 5.0
                logits[1, :, 15, 15] = 5.0
            return logits

    def settings(surface_metrics: bool) -> Eval:
        return Eval(threshold=0.5, tta=False, num_predictions=2, surface_metrics=surface_metrics,
                    surface_workers=1, native_resolution=False, latency=False)

    common = dict(subject=Subject(Net(), torch.device("cpu")), dataset=dataset, out_dir=tmp_path,
                  runtime=Runtime(batch_size=2))
    off = test_split(settings=settings(False), **common)
    assert "hd95" not in off and "hd95" not in read_rows(tmp_path / "per_case.csv")[0]
    px = test_split(settings=settings(True), **common)
    rows = read_rows(tmp_path / "per_case.csv")
    assert math.isnan(float(rows[0]["hd95"])) and px["surface_nan_count"] == 1  # empty truth
    assert [float(r["hd95"]) for r in rows[2:]] == [0.0, 0.0, 0.0]  # perfect predictions
    assert float(rows[1]["hd95"]) > 0
    assert px["hd95"] == pytest.approx(float(rows[1]["hd95"]) / 4, abs=1e-5)
    mm = test_split(settings=settings(True), spacing=[2.0, 2.0], **common)
    assert mm["hd95"] == pytest.approx(2 * px["hd95"])
    assert mm["assd"] == pytest.approx(2 * px["assd"])
    assert px["dice"] == mm["dice"] and px["fp"] == 9 + 1
    assert (tmp_path / "confusion_matrix.png").is_file()
