"""Shared test helpers: an isolated cache per session, offline hubs, and the real CLI (in this
process, or in a subprocess for the end-to-end tests marked e2e)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# The smallest settings that still run the real training loop end to end on CPU.
TINY = [
    "dataset.num_train=24",
    "dataset.num_test=8",
    "dataset.image_size=64",
    "resolution=64",
    "model.encoder=resnet18",
    "model.encoder_depth=3",
    "model.decoder_channels=[32,16,8]",
    "trainer.max_epochs=2",
    "trainer.batch_size=8",
    "augmentation=none",
    "logger=none",
]


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory):
    """Every test (and every CLI subprocess) uses a fresh cache and never reaches a model hub."""
    cache = tmp_path_factory.mktemp("segbench-cache")
    os.environ["SEGBENCH_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
    yield cache


def run_cli(*args: str, cwd: Path, check: bool = True, timeout: float = 600, env: dict | None = None):
    """`segbench <args>` in `cwd`, in this process (the CLI's own entry point, without paying for
    a Python start-up); returns a CompletedProcess with the exit code and the captured output.
    An uncaught exception counts as a crash: exit code 1, its traceback in stderr."""
    from segbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    here = os.getcwd()
    os.chdir(cwd)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except Exception:
                code = 1
                traceback.print_exc(file=err)
    finally:
        os.chdir(here)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        logging.shutdown()  # close the run's log file handlers (Hydra opens new ones per job)
        logging.getLogger().handlers.clear()
    proc = subprocess.CompletedProcess(["segbench", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"segbench {' '.join(args)} exited {code}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def run_subprocess(*args: str, cwd: Path, check: bool = True, timeout: float = 600,
                   env: dict | None = None):
    """`python -m segbench <args>` in a new process: for the end-to-end tests (marked e2e) of
    what only a real process shows (argv, exit codes, signals, start-up)."""
    proc = subprocess.run(
        [sys.executable, "-m", "segbench", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"segbench {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def run_dirs(root: Path) -> list[Path]:
    """Training run directories below root (those holding a config.yaml and a split.json)."""
    return sorted(p.parent for p in Path(root).rglob("split.json") if (p.parent / "config.yaml").is_file())


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One finished tiny training run, shared by tests that only read its artifacts."""
    cwd = tmp_path_factory.mktemp("tiny-run")
    run_cli("train", *TINY, "logger=tensorboard", "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"
