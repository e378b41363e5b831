"""trainer.monitor: one validation metric picks best.pt, drives early stopping and the plateau
schedule; volumetric data monitors per-volume Dice by default."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import TINY, read_json, run_cli
from segbench import SegbenchError, metrics
from segbench.engine.early_stopping import EarlyStopping, resolve_monitor
from segbench.inference.loop import Collect, Subject, evaluate
from segbench.runs.rundir import RunDir

LGG_TINY = [a for a in TINY if not a.startswith("dataset.")] + ["dataset=lgg_mri"]

# Validation figures of a run whose slice-mean IoU peaks at epoch 1 (an "all empty" model scores
# the many empty slices 1) while per-volume Dice peaks at epoch 3.
SCRIPT = {
    1: {"iou": 0.80, "dice": 0.82, "volume_dice": 0.10, "loss": 0.50},
    2: {"iou": 0.60, "dice": 0.65, "volume_dice": 0.40, "loss": 0.40},
    3: {"iou": 0.55, "dice": 0.60, "volume_dice": 0.70, "loss": 0.45},
    4: {"iou": 0.50, "dice": 0.55, "volume_dice": 0.65, "loss": 0.46},
}


@pytest.fixture()
def scripted_validation(monkeypatch):
    """The training loop runs for real; its validation figures come from SCRIPT."""
    import segbench.engine.trainer as trainer

    seen = []

    def validate(parts, threshold, epoch, *progress):
        seen.append(parts.data.val_volumes is not None)
        s = SCRIPT[epoch]
        return {**s, "dice_micro": s["dice"], "iou_micro": s["iou"], "precision": 0.5,
                "recall": 0.5, "volume_dice_median": s["volume_dice"]}

    monkeypatch.setattr(trainer, "validate", validate)
    return seen


def _train(tmp_path, lgg, *overrides, name="run", smoothing="0"):
    run_cli("train", *LGG_TINY, f"dataset.root={lgg.root}", "trainer.max_epochs=4",
            "scheduler=none", f"trainer.monitor_smoothing={smoothing}", *overrides,
            f"hydra.run.dir={name}", cwd=tmp_path)
    return RunDir(tmp_path / name)


def test_volumetric_data_selects_best_pt_on_volume_dice_by_default(tmp_path, lgg_stand_in,
                                                                     scripted_validation):
    run = _train(tmp_path, lgg_stand_in)
    m = run.read_metrics()
    assert m["monitor"] == {"metric": "val_volume_dice", "mode": "max", "best": 0.70,
                            "smoothing": 0.0, "best_from_epoch": 1}
    assert m["best_epoch"] == 3 and m["val_best"]["volume_dice"] == 0.70
    assert run.load_checkpoint("best")["epoch"] == 3
    assert all(scripted_validation)  # the validation split came with its volumes
    history = run.read_history()
    assert [float(r["val_volume_dice"]) for r in history] == [0.1, 0.4, 0.7, 0.65]


def test_lgg_smooths_its_monitor_and_selection_can_wait(tmp_path, lgg_stand_in,
                                                       scripted_validation):
    # lgg_mri's monitor_smoothing (0.9): the moving average of 0.1, 0.4, 0.7, 0.65 rises every
    # epoch, so best.pt is the last epoch, not the noisy maximum of epoch 3.
    run = _train(tmp_path, lgg_stand_in, smoothing="auto")
    m, history = run.read_metrics(), run.read_history()
    ema = [0.1, 0.9 * 0.1 + 0.1 * 0.4]
    ema += [0.9 * ema[-1] + 0.1 * 0.7]
    ema += [0.9 * ema[-1] + 0.1 * 0.65]
    assert [float(r["val_monitor"]) for r in history] == pytest.approx(ema)
    assert m["best_epoch"] == 4 and m["monitor"]["smoothing"] == 0.9
    assert m["monitor"]["best"] == pytest.approx(ema[-1])
    # best_from_epoch: slice IoU is best in epoch 1, but epochs 1 and 2 may not be chosen.
    late = _train(tmp_path, lgg_stand_in, "trainer.monitor=val_iou", "trainer.best_from_epoch=3",
                  name="late").read_metrics()
    assert late["best_epoch"] == 3 and late["monitor"]["best_from_epoch"] == 3


def test_trainer_monitor_switches_the_selection(tmp_path, lgg_stand_in, scripted_validation):
    by_iou = _train(tmp_path, lgg_stand_in, "trainer.monitor=val_iou").read_metrics()
    assert by_iou["best_epoch"] == 1
    by_loss = _train(tmp_path, lgg_stand_in, "trainer.monitor=val_loss", name="loss").read_metrics()
    assert by_loss["best_epoch"] == 2 and by_loss["monitor"]["mode"] == "min"


def test_early_stopping_and_plateau_read_the_monitor(tmp_path, lgg_stand_in, scripted_validation):
    # Slice IoU falls from epoch 1: monitored, it stops the run after patience 2 (epoch 3) and
    # the plateau schedule (patience 0) halves the LR after each epoch without a gain.
    run = _train(tmp_path, lgg_stand_in, "trainer.monitor=val_iou",
                 "trainer.early_stopping.patience=2", "scheduler=plateau", "scheduler.patience=0",
                 "scheduler.factor=0.5")
    history = run.read_history()
    assert len(history) == 3 and run.read_metrics()["stopped_early"] is True
    assert [float(r["lr"]) for r in history] == pytest.approx([1e-3, 1e-3, 5e-4])
    # Volume Dice rises until epoch 3: the same settings run all 4 epochs and keep the LR until
    # then.
    run = _train(tmp_path, lgg_stand_in, "trainer.early_stopping.patience=2", "scheduler=plateau",
                 "scheduler.patience=0", "scheduler.factor=0.5", name="volume")
    history = run.read_history()
    assert len(history) == 4 and [float(r["lr"]) for r in history] == pytest.approx([1e-3] * 4)


def test_a_resumed_run_keeps_its_monitor(tmp_path, lgg_stand_in, scripted_validation):
    run = _train(tmp_path, lgg_stand_in, "trainer.max_epochs=2")
    assert run.read_metrics()["best_epoch"] == 2
    (run / "metrics.json").unlink()  # as if stopped after epoch 2 of 4
    run.set_status("interrupted", epoch=2)
    refused = run_cli("train", f"trainer.resume={run.path}", "trainer.monitor=val_iou",
                      cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "trainer.monitor: 'auto' -> 'val_iou'" in refused.stdout
    run_cli("train", f"trainer.resume={run.path}", "trainer.max_epochs=4", cwd=tmp_path)
    m = run.read_metrics()
    assert m["best_epoch"] == 3 and m["monitor"]["metric"] == "val_volume_dice"
    assert len(run.read_history()) == 4


def test_a_metric_the_data_cannot_give_is_a_one_line_error(tmp_path):
    proc = run_cli("train", *TINY, "trainer.monitor=val_volume_dice", "hydra.run.dir=run",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "trainer.monitor=val_volume_dice needs volumetric data" in proc.stdout
    with pytest.raises(SegbenchError, match="trainer.monitor=val_hd95: not a validation metric"):
        resolve_monitor("val_hd95", "auto", "auto", True, "lgg_mri")
    assert resolve_monitor("auto", "auto", "auto", True, "folder").metric == "val_volume_dice"
    assert resolve_monitor("auto", "auto", "auto", False, "folder").metric == "val_iou"
    assert resolve_monitor("auto", "auto", "val_iou", True, "x").metric == "val_iou"


def test_an_all_empty_model_scores_high_slice_iou_and_zero_volume_dice():
    # Two volumes of 5 slices, 3 of them empty in each: predicting nothing scores IoU 1 on every
    # empty slice (the empty rule), so the slice mean is 0.6, while both volumes have Dice 0.
    truth = torch.zeros(10, 1, 8, 8, dtype=torch.uint8)
    truth[[1, 2, 6, 7], :, 2:6, 2:6] = 1
    probs = torch.zeros(10, 1, 8, 8)

    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.full_like(x[:, :1].float(), -20.0)

    images = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)
    loader = DataLoader(TensorDataset(images, truth, torch.arange(10)), batch_size=3)
    volumes = torch.tensor([0] * 5 + [1] * 5)
    summary = evaluate(Subject(Constant(), torch.device("cpu")), loader,
                       collect=Collect(volumes=volumes)).summary()
    assert summary["iou"] == pytest.approx(0.6) and summary["volume_dice"] == 0.0
    counts = metrics.confusion(probs, truth)
    assert metrics.volume_summary(counts, volumes.tolist())["volume_dice_mean"] == 0.0


def test_per_volume_dice_pooled_on_the_device_equals_the_reference():
    rng = np.random.default_rng(3)
    n = 13
    truth = torch.from_numpy(rng.random((n, 1, 16, 16)) > 0.7).to(torch.uint8)
    logits = torch.from_numpy(rng.normal(size=(n, 1, 16, 16)).astype(np.float32))

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits[x[:, 0, 0, 0].long()]

    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 16, 16).contiguous()
    volumes = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
    loader = DataLoader(TensorDataset(images, truth, torch.arange(n)), batch_size=4)
    summary = evaluate(Subject(Fixed(), torch.device("cpu")), loader,
                       collect=Collect(volumes=volumes)).summary()
    reference = metrics.volume_summary(metrics.confusion(torch.sigmoid(logits), truth),
                                       volumes.tolist())
    assert summary["volume_dice"] == pytest.approx(reference["volume_dice_mean"], abs=1e-12)
    assert summary["volume_dice_median"] == pytest.approx(reference["volume_dice_median"],
                                                          abs=1e-12)


def test_early_stopping_counts_in_either_direction():
    down = EarlyStopping(patience=2, min_delta=0.01, mode="min")
    assert down.step(0.5, 1) and not down.step(0.495, 2) and down.step(0.4, 3)
    down.step(0.45, 4)
    down.step(0.41, 5)
    assert down.should_stop and down.best_epoch == 3 and down.best == 0.4
    assert not EarlyStopping(1).step(float("nan"), 1)  # NaN is never an improvement


def test_history_records_volume_dice_for_volumetric_data(tmp_path, lgg_stand_in):
    run_cli("train", *LGG_TINY, f"dataset.root={lgg_stand_in.root}", "trainer.max_epochs=1",
            "hydra.run.dir=run", cwd=tmp_path)
    row = RunDir(tmp_path / "run").read_history()[0]
    assert 0 <= float(row["val_volume_dice"]) <= 1
    assert read_json(tmp_path / "run" / "metrics.json")["monitor"]["metric"] == "val_volume_dice"


def test_the_report_shows_each_monitor_and_warns_when_they_differ(tmp_path, lgg_stand_in,
                                                                   scripted_validation):
    _train(tmp_path, lgg_stand_in, name="runs/volume")
    _train(tmp_path, lgg_stand_in, "trainer.monitor=val_iou", name="runs/slice")
    proc = run_cli("report", str(tmp_path / "runs"), "report.bootstrap=200", cwd=tmp_path)
    text = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert "val_volume_dice (max)" in text and "val_iou (max)" in text
    assert "chose best.pt on different validation metrics" in text
    assert "chose best.pt on different validation metrics" in proc.stdout
