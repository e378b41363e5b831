"""Defect 4: everything an epoch records comes back from last.pt. A run stopped right after its
last epoch's last.pt was renamed into place (before history.csv and TensorBoard saw that epoch)
resumes to the uninterrupted run's history.csv and TensorBoard scalars. (The same kill with
SIGKILL, and the other kill points, are in the e2e soak, test_fault_kill_soak.py.)"""

from __future__ import annotations

import pytest
import torch
from faultkit import (
    SOAK_ARGS,
    assert_same_run,
    history,
    read_json,
    tensorboard_scalars,
)

from conftest import run_cli
from segbench import faults

pytestmark = pytest.mark.slow


def test_an_epoch_after_last_pt_is_replayed_into_history_and_tensorboard(
        deterministic_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    # The run stops right after epoch 2's last.pt (the third: one is written before epoch 1).
    monkeypatch.setenv("SEGBENCH_FAULT", "renamed:last.pt:eio@3")
    faults.reset()
    run_cli("train", *SOAK_ARGS, f"hydra.run.dir={run}", cwd=tmp_path, check=False)
    monkeypatch.delenv("SEGBENCH_FAULT")
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    assert len(history(run)) == 1  # epoch 2 is in last.pt only
    assert {step for points in tensorboard_scalars(run).values() for step, _ in points} == {1}
    assert read_json(run / "status.json")["state"] == "failed"

    run_cli("train", f"trainer.resume={run}", cwd=tmp_path)
    assert_same_run(run, deterministic_run)  # history.csv, TensorBoard, metrics, status, split
