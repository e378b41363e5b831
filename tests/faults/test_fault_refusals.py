"""Defect 3: a refused command changes nothing on disk. (The resume with another setting and
`trainer.resume=true model=fpn` are in tests/test_training.py; the lock and changed-data
refusals in test_fault_lock.py and test_fault_split_pinning.py.)"""

from __future__ import annotations

import pytest
from faultkit import SOAK_ARGS, read_json, snapshot, unfinished_copy

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_another_model_pointed_at_an_interrupted_run_changes_nothing(deterministic_run, tmp_path):
    run = unfinished_copy(deterministic_run, tmp_path / "run")
    before = snapshot(run)
    proc = run_cli("train", *SOAK_ARGS, "model=fpn", f"hydra.run.dir={run}", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and "already holds a run" in proc.stdout
    assert f"segbench train trainer.resume={run}" in proc.stdout
    assert snapshot(run) == before  # .hydra/, config.yaml, status.json, train.log untouched
    run_cli("train", f"trainer.resume={run}", cwd=tmp_path)  # the documented resume still works
    assert read_json(run / "status.json")["state"] == "finished"
