"""Defect 6, signals: Ctrl-C twice, Ctrl-C or SIGTERM during the final test, SIGTERM before the
first epoch. Each leaves status.json "interrupted" (never a stale "running"), exits 130, and the
run resumes to the uninterrupted result."""

from __future__ import annotations

import pytest
from faultkit import SOAK_ARGS, assert_same_run, read_json, segbench_process, temporaries

from conftest import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SIGNALS = {
    # The first Ctrl-C stops the loop; the second lands while the final state is being written.
    "double Ctrl-C": "train_step:interrupt@1,write:status.json:interrupt@2",
    "Ctrl-C during the final test": "write:per_case.csv:interrupt",
    "SIGTERM during the final test": "write:per_case.csv:terminate",
    "SIGTERM before the first epoch": "write:split.json:terminate",
}


@pytest.mark.parametrize("what", SIGNALS)
def test_every_signal_records_interrupted_and_the_run_resumes(deterministic_run, tmp_path, what):
    run = tmp_path / "run"
    proc = segbench_process("train", *SOAK_ARGS, f"hydra.run.dir={run}", cwd=tmp_path,
                            fault=SIGNALS[what])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 130, out[-3000:]
    assert read_json(run / "status.json")["state"] == "interrupted"
    assert "Traceback" not in out
    run_cli("train", f"trainer.resume={run}", cwd=tmp_path)
    assert_same_run(run, deterministic_run)
    assert temporaries(run) == []
