"""A sweep that survives: run, kill, re-run the same command, then report (CPU, tiny settings)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import TINY, read_json, run_cli, run_dirs

SWEEP = ["train", "-m", "optimizer=adam,sgd", "seed=0,1", *TINY, "trainer.max_epochs=1"]


@pytest.mark.e2e
@pytest.mark.slow
def test_sweep_is_interrupted_resumed_and_reported(tmp_path):
    outputs = tmp_path / "outputs"
    # kill -9 of the sweep's process right after the second job's first last.pt is in place (a
    # job writes last.pt before its epoch 1 and after it: the first job's two, then this one):
    # the fault hook picks that moment exactly, where watching the folder from here raced it.
    proc = subprocess.run([sys.executable, "-m", "segbench", *SWEEP], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "SEGBENCH_FAULT": "renamed:last.pt:kill@3"})
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:] + proc.stderr[-3000:]
    first = next(p.parent for p in outputs.rglob("metrics.json"))
    second = next(p.parent.parent for p in outputs.rglob("checkpoints/last.pt")
                  if p.parent.parent != first)
    sweeps = list((outputs / "multirun").iterdir())
    assert len(sweeps) == 1  # named after the command, not the time
    sweep = sweeps[0]
    assert first.relative_to(sweep).as_posix() == "optimizer=adam/seed=0"
    assert second.relative_to(sweep).as_posix() == "optimizer=adam/seed=1"
    assert not (second / "metrics.json").exists()
    finished_mtime = (first / "metrics.json").stat().st_mtime_ns

    again = run_cli(*SWEEP, cwd=tmp_path)
    log = again.stdout + again.stderr
    assert f"skipping {first}: this run already finished" in log
    assert f"resuming {second} after epoch 0" in log
    assert f"starting {sweep / 'optimizer=sgd' / 'seed=0'} (no earlier attempt" in log
    assert (first / "metrics.json").stat().st_mtime_ns == finished_mtime  # not redone
    assert list((outputs / "multirun").iterdir()) == [sweep]
    dirs = run_dirs(sweep)
    assert [d.relative_to(sweep).as_posix() for d in dirs] == [
        "optimizer=adam/seed=0", "optimizer=adam/seed=1",
        "optimizer=sgd/seed=0", "optimizer=sgd/seed=1"]
    for d in dirs:
        assert read_json(d / "metrics.json")["test"]["n_images"] == 8
        assert read_json(d / "status.json")["state"] == "finished"
        assert (d / "predictions.npz").is_file()

    rep = run_cli("report", str(sweep), cwd=tmp_path)
    assert "4 runs, 2 configurations (4 finished runs); baseline: optimizer=adam" in rep.stdout
    out = sweep / "report"
    for name in ("report.md", "report.csv", "metrics.png", "curves.png", "predictions.png"):
        assert (out / name).is_file(), name
    md = (out / "report.md").read_text()
    assert "| optimizer | n | dice | iou |" in md and "| sgd | 2 |" in md
    assert "95% CI" in md and "p (Holm)" in md
    with open(out / "report.csv", newline="") as f:
        rows = {r["configuration"]: r for r in csv.DictReader(f)}
    sgd = rows["optimizer=sgd"]
    assert sgd["n_finished"] == "2" and sgd["dice_pairs"] == "8"
    assert float(sgd["dice_ci_low"]) <= float(sgd["dice_diff"]) <= float(sgd["dice_ci_high"])
    assert 0 < float(sgd["dice_p"]) <= 1
    for r in rows.values():  # docs/metrics.md: IoU never above Dice
        assert float(r["iou_mean"]) <= float(r["dice_mean"]) + 1e-9


def test_a_failed_job_records_its_error_for_the_report(tmp_path, tiny_run):
    proc = run_cli("train", *TINY, "trainer.batch_size=0", "hydra.run.dir=run", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    status = read_json(tmp_path / "run" / "status.json")
    assert status["state"] == "failed"
    assert "trainer.batch_size=0: use an integer >= 1" in status["error"]
    # A refusal to touch another run's directory is not that run's failure.
    copy = tmp_path / "finished"
    shutil.copytree(tiny_run, copy)
    refused = run_cli("train", *TINY, f"hydra.run.dir={copy}", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "already holds a run" in refused.stdout + refused.stderr
    assert read_json(copy / "status.json")["state"] == "finished"
