"""Checkpoint atomicity, RNG round trips, early stopping, the warm-up cosine schedule, the
history row and the run directory's imports."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from segbench import SegbenchError
from segbench.engine.early_stopping import EarlyStopping
from segbench.engine.trainer import history_row
from segbench.optim import WarmupCosine
from segbench.runs import checkpoint
from segbench.runtime.device import rng_state, set_rng_state


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    assert checkpoint.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class Foreign:
    pass


def test_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": Foreign()}, path)
    with pytest.raises(SegbenchError, match="cannot load checkpoint"):
        checkpoint.load_checkpoint(path)


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    checkpoint.save_checkpoint({"rng": rng_state()}, tmp_path / "s.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(checkpoint.load_checkpoint(tmp_path / "s.pt")["rng"])
    assert (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(1).item()) == expected


def test_early_stopping_counts_epochs_without_min_delta_gain():
    es = EarlyStopping(patience=2, min_delta=0.01)
    assert es.step(0.5, 1) is True
    assert es.step(0.505, 2) is False and not es.should_stop  # below min_delta
    assert es.step(0.52, 3) is True and es.bad_epochs == 0
    es.step(0.52, 4)
    es.step(0.3, 5)
    assert es.should_stop and es.best_epoch == 3
    clone = EarlyStopping(patience=2)
    clone.load_state_dict(es.state_dict())
    assert clone.should_stop and clone.best == 0.52


def test_warmup_cosine_shape():
    f = WarmupCosine(warmup=4, total=20, floor=0.01)
    assert [f(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(12) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(20) == pytest.approx(0.01) and f(100) == pytest.approx(0.01)


def test_the_history_row_keeps_the_columns_of_history_csv_in_order():
    train = {"loss": 0.5, "dice": 0.6, "iou": 0.4}
    val = {"loss": 0.7, "dice": 0.3, "iou": 0.2, "dice_micro": 0.35, "iou_micro": 0.21,
           "precision": 0.4, "recall": 0.25, "specificity": 0.9, "n_images": 5}
    row = history_row(3, 1e-3, train, val)
    assert list(row) == ["epoch", "lr", "train_loss", "train_dice", "train_iou", "val_loss",
                         "val_dice", "val_iou", "val_dice_micro", "val_iou_micro", "val_precision",
                         "val_recall"]  # the rest of the validation summary stays out
    assert row["epoch"] == 3 and row["val_recall"] == 0.25 and row["train_iou"] == 0.4
    volumetric = history_row(1, 1e-3, train, {**val, "volume_dice": 0.5, "volume_dice_median": 0.6})
    assert list(volumetric)[-2:] == ["val_volume_dice", "val_volume_dice_median"]


