"""Shared helpers of the fault-injection tests: start a run that is killed (or fails) at a named
point (segbench.faults, SEGBENCH_FAULT), snapshot a folder, compare two runs record by record."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import SOAK_ARGS  # noqa: F401  (re-exported for the fault tests)


def segbench_process(*args: str, cwd: Path, fault: str | None = None, timeout: float = 300,
                     wait: bool = True):
    """`python -m segbench <args>` in a new process, with SEGBENCH_FAULT=`fault`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SEGBENCH_FAULT", None)
    if fault:
        env["SEGBENCH_FAULT"] = fault
    command = [sys.executable, "-m", "segbench", *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (relative name -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[str]:
    """Temporary files of atomic writes (`.<name>.tmp<pid>`) below `folder`."""
    return sorted(p.name for p in Path(folder).rglob(".*.tmp*"))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def without_timings(doc):
    """A record without its wall-clock figures (seconds), which no two runs share."""
    if isinstance(doc, dict):
        return {k: without_timings(v) for k, v in doc.items() if not k.endswith("seconds")}
    return doc


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows: every scalar tag's (step, value) points, after the purges a
    resumed run's writer asks for."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in sorted(events.Tags()["scalars"])}


def assert_same_run(run: Path, reference: Path) -> None:
    """history.csv, TensorBoard scalars, metrics.json, status.json, split.json and per_case.csv
    of `run` equal those of `reference` (wall-clock times aside)."""
    assert history(run) == history(reference)
    assert tensorboard_scalars(run) == tensorboard_scalars(reference)
    assert without_timings(read_json(run / "metrics.json")) == \
        without_timings(read_json(reference / "metrics.json"))
    assert read_json(run / "status.json") == read_json(reference / "status.json")
    assert read_json(run / "split.json") == read_json(reference / "split.json")
    assert (run / "per_case.csv").read_text() == (reference / "per_case.csv").read_text()


def unfinished_copy(run: Path, dest: Path, state: str = "interrupted") -> Path:
    """A copy of a finished run as if it had stopped after its last epoch, before its test."""
    shutil.copytree(run, dest)
    (dest / "metrics.json").unlink()
    (dest / "status.json").write_text(json.dumps({"state": state, "epoch": len(history(dest))}))
    return dest


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding the run directory's lock (as a running trainer does), until
    it is killed; returns once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)",
         str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder
