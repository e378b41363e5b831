"""Progress: the run's ETA, the terminal bar over training, validation and test, sweep sizes."""

from __future__ import annotations

import io
import logging

import pytest
from omegaconf import OmegaConf

from segbench import progress
from segbench.progress import SWEEP, RunProgress, duration, sweep_size


def fake_loader(steps: int, batch: int = 4):
    return [([0] * batch,) for _ in range(steps)]


def test_duration_reads_like_a_clock():
    assert [duration(s) for s in (None, 5, 65, 3725)] == ["?", "5s", "1m05s", "1h02m"]


def test_eta_counts_the_epochs_left_with_validation_and_test(monkeypatch):
    clock = iter(range(0, 10_000))
    monkeypatch.setattr(progress.time, "monotonic", lambda: float(next(clock)))
    p = RunProgress(first_epoch=1, max_epochs=3, train_steps=4, val_steps=2, test_steps=2,
                    bar=False, interval_s=1e9)
    assert p.eta() is None  # nothing measured yet
    for _ in p.train(fake_loader(4), 1):
        pass
    per_train = p.train_seconds / p.train_done
    # Epochs 2 and 3 to train, 3 validations and the test to evaluate, at a third of a step
    # each until an evaluation has been measured.
    assert p.eta() == pytest.approx(8 * per_train + (3 * 2 + 2) * per_train / 3)
    for _ in p.evaluation("validation", 2)(fake_loader(2)):
        pass
    per_eval = p.eval_seconds / p.eval_done
    assert p.eta() == pytest.approx(8 * per_train + (2 * 2 + 2) * per_eval)
    assert p.images_per_s() == pytest.approx(16 / p.epoch_seconds)


def test_lines_without_a_terminal_come_at_the_interval(caplog, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    p = RunProgress(first_epoch=1, max_epochs=1, train_steps=6, val_steps=1, test_steps=1,
                    bar=False, interval_s=30)
    with caplog.at_level(logging.INFO, logger="segbench.progress"):
        for _ in p.train(fake_loader(6), 1):
            now[0] += 10.0  # a 10 s step
            p.running_loss(0.25)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # 60 s of steps: a line every 30 s
    assert all(line.startswith("epoch 1/1  step ") and "loss 0.2500" in line and "ETA" in line
               for line in lines)


def test_the_terminal_bar_covers_training_validation_and_test(monkeypatch):
    out = io.StringIO()
    import tqdm.auto

    real = tqdm.auto.tqdm
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda *a, **k: real(*a, **{**k, "file": out}))
    p = RunProgress(first_epoch=1, max_epochs=2, train_steps=3, val_steps=2, test_steps=1,
                    bar=True, interval_s=30)
    assert p.bar.total == 2 * (3 + 2) + 1
    for epoch in (1, 2):
        for _ in p.train(fake_loader(3), epoch):
            pass
        assert "step 3/3" in p.bar.postfix and p.bar.desc == f"epoch {epoch}/2"
        for _ in p.evaluation("validation", 2)(fake_loader(2)):
            pass
        assert "validation 2/2" in p.bar.postfix and "ETA" in p.bar.postfix
    for _ in p.evaluation("test", 1)(fake_loader(1)):
        pass
    assert p.bar.desc == "test" and "test 1/1" in p.bar.postfix
    assert p.bar.n == p.bar.total
    p.close()


def test_sweep_size_is_the_cross_product_or_the_trials():
    basic = OmegaConf.create({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "params": {"optimizer": "adam,sgd"}},
        "overrides": {"task": ["seed=0,1,2", "model=unet"]}}})
    assert sweep_size(basic) == 6
    search = OmegaConf.create({"hydra": {"sweeper": {"_target_": "x.Search", "n_trials": 7},
                                         "overrides": {"task": []}}})
    assert sweep_size(search) == 7
    SWEEP.__init__()
    SWEEP.job, SWEEP.total, SWEEP.durations = 2, 4, [60.0, 120.0]
    assert SWEEP.prefix() == "job 2 of 4  " and SWEEP.eta(30.0) == 30.0 + 2 * 90.0
    SWEEP.__init__()
