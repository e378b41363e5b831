"""A sweep that survives: run, kill, re-run the same command, then report (CPU, tiny settings)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import TINY, read_json, run_cli, run_dirs

SWEEP = ["train", "-m", "optimizer=adam,sgd", "seed=0,1", *TINY, "trainer.max_epochs=1"]


def _wait_for(predicate, proc, timeout: float = 240):
    start = time.time()
    while time.time() - start < timeout:
        found = predicate()
        if found:
            return found
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the sweep ended before it could be interrupted:\n{out[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the sweep")


@pytest.mark.e2e
@pytest.mark.slow
def test_sweep_is_interrupted_resumed_and_reported(tmp_path):
    outputs = tmp_path / "outputs"
    proc = subprocess.Popen([sys.executable, "-m", "segbench", *SWEEP], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        first = _wait_for(lambda: [p.parent for p in outputs.rglob("metrics.json")], proc)[0]
        # Kill the sweep once the second job has started training (its epoch-0 last.pt exists).
        second = _wait_for(lambda: [p.parent.parent for p in outputs.rglob("checkpoints/last.pt")
                                    if p.parent.parent != first], proc)[0]
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
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
    # epoch 0 (killed while training) or 1 (killed while testing: a fast machine gets there
    # between two looks for last.pt); either way it resumes, not starts again.
    assert re.search(re.escape(f"resuming {second} after epoch ") + "[01]\\b", log), log[-3000:]
    assert f"starting {sweep / 'optimizer=sgd' / 'seed=0'} (no earlier attempt" in log
    assert (first / "metrics.json").stat().st_mtime_ns == finished_mtime  # not redone
    assert list((outputs / "multirun").iterdir()) == [sweep]
    dirs = run_dirs(sweep)
    assert [d.relative_to(sweep).as_posix() for d in dirs] == [
        "optimizer=adam/seed=0", "optimizer=adam/seed=1", "optimizer=sgd/seed=0", "optimizer=sgd/seed=1"]
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
    proc = run_cli("train", *TINY, "trainer.batch_size=0", "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    status = read_json(tmp_path / "run" / "status.json")
    assert status["state"] == "failed" and "trainer.batch_size=0: use an integer >= 1" in status["error"]
    # A refusal to touch another run's directory is not that run's failure.
    copy = tmp_path / "finished"
    shutil.copytree(tiny_run, copy)
    refused = run_cli("train", *TINY, f"hydra.run.dir={copy}", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "already holds a run" in refused.stdout + refused.stderr
    assert read_json(copy / "status.json")["state"] == "finished"
