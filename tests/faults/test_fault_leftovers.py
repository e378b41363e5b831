"""Defect 8: temporary files of a killed write are removed on the next start; commands given a
mistyped run directory create nothing; a run without best.pt points at checkpoint=last; eval,
predict and export warn about an unfinished run; a corrupt or foreign checkpoint is one plain
line (no torch advice to turn off weights_only, no terminal colour codes in status.json)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from faultkit import dead_pid, read_json, snapshot, unfinished_copy

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_temporary_files_of_a_killed_write_go_on_the_next_start(deterministic_run, tmp_path):
    run = unfinished_copy(deterministic_run, tmp_path / "run")
    gone = dead_pid()
    stale = [run / "checkpoints" / f".last.pt.tmp{gone}", run / f".history.csv.tmp{gone}"]
    for path in stale:
        path.write_bytes(b"\0" * 4096)  # a write cut short by kill -9
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        busy = run / f".metrics.json.tmp{alive.pid}"  # another live process's: left alone
        busy.write_bytes(b"{")
        proc = run_cli("train", f"trainer.resume={run}", cwd=tmp_path)
        assert "removed 2 temporary file(s)" in proc.stdout
        assert not any(p.exists() for p in stale) and busy.exists()
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.parametrize("command", [
    ["eval", "run_dir=typo"], ["export", "run_dir=typo"], ["report", "typo"],
    ["predict", "run_dir=typo", "input=typo_in", "output=masks"],
])
def test_a_mistyped_path_creates_nothing(tmp_path, command):
    proc = run_cli(*command, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "typo" in proc.stderr + proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_unfinished_runs_warn_and_a_missing_best_pt_points_at_last(deterministic_run, tmp_path):
    run = unfinished_copy(deterministic_run, tmp_path / "run")
    frames = tmp_path / "in"
    frames.mkdir()
    cv2.imwrite(str(frames / "f.png"), np.full((40, 40, 3), 100, np.uint8))
    for command in (["eval", f"run_dir={run}"], ["export", f"run_dir={run}", "format=torchscript"],
                    ["predict", f"run_dir={run}", f"input={frames}", f"output={tmp_path / 'out'}"]):
        proc = run_cli(*command, cwd=tmp_path)
        assert "this run has not finished training (interrupted, 2 epoch(s)" in proc.stdout
        assert f"segbench train trainer.resume={run}" in proc.stdout
    proc = run_cli("eval", f"run_dir={deterministic_run}", cwd=tmp_path)
    assert "has not finished training" not in proc.stdout

    (run / "checkpoints" / "best.pt").unlink()
    proc = run_cli("eval", f"run_dir={run}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "or use checkpoint=last" in proc.stdout


def test_a_foreign_checkpoint_is_one_plain_line(deterministic_run, tmp_path):
    run = unfinished_copy(deterministic_run, tmp_path / "run")
    torch.save({"epoch": 2, "model": argparse.Namespace(lr=1)}, run / "checkpoints" / "last.pt")
    proc = run_cli("train", f"trainer.resume={run}", cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out
    assert "it holds Python objects, not only tensors" in out
    assert "weights_only" not in out and "\x1b" not in out
    status = (run / "status.json").read_text()
    assert read_json(run / "status.json")["state"] == "failed"
    assert "\x1b" not in status and "\\u001b" not in status and "weights_only" not in status

    before = snapshot(run)
    (run / "checkpoints" / "last.pt").write_bytes(before["checkpoints/best.pt"][:5000])
    proc = run_cli("eval", f"run_dir={run}", "checkpoint=last", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "last.pt: it is truncated or corrupt" in proc.stdout
    assert ("restore it from a copy, or train the configuration again in a new run directory"
            in proc.stdout)
