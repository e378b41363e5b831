"""Defect 7: one trainer per run directory. `train` holds an OS lock on the directory (released
by the OS when the process ends, even by SIGKILL); a second trainer is refused, naming the
process, before it writes anything; `report` tells a running run from a killed one by it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from faultkit import (
    SOAK_ARGS,
    hold_lock,
    read_json,
    segbench_process,
    snapshot,
    unfinished_copy,
)

from conftest import run_cli
from segbench.runs.rundir import RunDir, lock_held

pytestmark = pytest.mark.slow


def test_a_second_trainer_is_refused_while_the_first_holds_the_run(deterministic_run, tmp_path):
    run = unfinished_copy(deterministic_run, tmp_path / "sweep" / "run")
    shutil.copytree(deterministic_run, tmp_path / "sweep" / "done")  # something to report
    holder = hold_lock(run)  # a trainer at work in it, as far as the OS can tell
    try:
        (run / "status.json").write_text(json.dumps({"state": "running", "pid": holder.pid,
                                                     "host": "elsewhere"}))
        assert RunDir(run).state() == "running"
        before = snapshot(run)
        proc = run_cli("train", f"trainer.resume={run}", cwd=tmp_path, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
        assert f"{run} is in use: segbench process {holder.pid} on elsewhere is training in it" \
            in proc.stdout
        assert f"kill {holder.pid}" in proc.stdout
        assert snapshot(run) == before  # not one byte written

        run_cli("report", str(tmp_path / "sweep"), "report.bootstrap=100", cwd=tmp_path)
        md = (tmp_path / "sweep" / "report" / "report.md").read_text()
        assert "| running |" in md
    finally:
        holder.kill()
        holder.wait()
    assert RunDir(run).state() == "killed"  # status.json still says running; its process is gone
    run_cli("report", str(tmp_path / "sweep"), "report.bootstrap=100", cwd=tmp_path)
    assert "| killed |" in (tmp_path / "sweep" / "report" / "report.md").read_text()
    proc = run_cli("train", f"trainer.resume={run}", cwd=tmp_path)
    assert "the previous attempt" in proc.stdout and "was killed" in proc.stdout
    assert read_json(run / "status.json")["state"] == "finished"


@pytest.mark.e2e
def test_two_real_trainers_in_one_run_directory(tmp_path):
    run = tmp_path / "run"
    first = segbench_process("train", *SOAK_ARGS, "trainer.max_epochs=200", f"hydra.run.dir={run}",
                             cwd=tmp_path, wait=False)
    try:
        deadline = time.time() + 300
        while not (run / "history.csv").is_file():
            assert first.poll() is None and time.time() < deadline, first.stdout.read()
            time.sleep(0.1)
        second = segbench_process("train", f"trainer.resume={run}", cwd=tmp_path)
        assert second.returncode == 2
        assert f"is in use: segbench process {first.pid}" in second.stdout + second.stderr
        assert first.poll() is None  # the first one goes on
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    assert first.returncode == 130
    assert read_json(run / "status.json")["state"] == "interrupted"


def test_the_lock_goes_with_the_trainer_not_with_its_forked_workers(tmp_path):
    """A DataLoader worker is a fork of the trainer: after a kill -9 of the trainer, the worker
    (alive a few seconds more) must not keep the run locked."""
    script = (
        "import os, signal, sys, time\n"
        "from segbench.runs.rundir import RunDir\n"
        "with RunDir(sys.argv[1]).lock():\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        quiet = os.open(os.devnull, os.O_WRONLY)\n"
        "        os.dup2(quiet, 1)\n"
        "        os.dup2(quiet, 2)\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    print(child, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    child = int(proc.stdout)
    try:
        assert proc.returncode == -signal.SIGKILL
        os.kill(child, 0)  # the forked worker still runs ...
        assert lock_held(tmp_path) is False  # ... and the lock is free all the same
    finally:
        os.kill(child, signal.SIGKILL)
