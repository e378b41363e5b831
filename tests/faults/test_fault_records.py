"""Defect 5: every record of a run is written atomically (temporary file, fsync, rename, fsync of
the folder), a damaged metrics.json is tested again on resume, and `report` lists a run whose
records cannot be read as broken and goes on."""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from faultkit import assert_same_run, read_json, temporaries

from conftest import TINY, run_cli
from segbench import faults
from segbench.atomic import TEMPORARY, write_atomic

pytestmark = pytest.mark.slow

APPENDED = ("train.log", "eval.log", "masks.predict.log", "export.log")  # logs grow line by line


def test_no_record_is_ever_written_in_place(tmp_path, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "frame.png"), np.full((50, 70, 3), 90, np.uint8))
    opened: list[tuple[Path, str]] = []
    real_open, real_io_open = builtins.open, io.open

    def spying(real):
        def open_(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+"):
                opened.append((Path(file).absolute(), mode))
            return real(file, mode, *args, **kwargs)
        return open_

    monkeypatch.setattr(builtins, "open", spying(real_open))
    monkeypatch.setattr(io, "open", spying(real_io_open))
    run_cli("train", *TINY, "logger=tensorboard", "hydra.run.dir=run", cwd=tmp_path)
    run_cli("eval", "run_dir=run", cwd=tmp_path)
    run_cli("predict", "run_dir=run", f"input={inputs}", "output=masks", cwd=tmp_path)
    run_cli("export", "run_dir=run", "format=torchscript", cwd=tmp_path)
    monkeypatch.undo()

    mine = [(p, m) for p, m in opened if tmp_path in p.parents]
    assert any(p.name == "metrics.json" or TEMPORARY.match(p.name) for p, _ in mine)
    in_place = [f"{p.relative_to(tmp_path)} ({m})" for p, m in mine
                if not TEMPORARY.match(p.name) and p.name not in APPENDED
                and "tfevents" not in p.name]
    assert in_place == []
    assert temporaries(tmp_path) == []


def test_write_atomic_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text('{"old": true}')

    def half_then_crash(f):
        f.write(b'{"new": ')
        raise RuntimeError("the writer failed half-way")

    with pytest.raises(RuntimeError):
        write_atomic(target, half_then_crash)
    assert target.read_text() == '{"old": true}' and temporaries(tmp_path) == []

    # A full disk under a library that reports it as an error of its own (older torch.save:
    # "unexpected pos") is the OSError, named by the file being replaced.
    def library(f):
        try:
            f.write(b"x" * 100)
        except OSError:
            raise RuntimeError("unexpected pos 64 vs 0") from None

    monkeypatch.setenv("SEGBENCH_FAULT", "write:metrics.json:enospc")
    faults.reset()
    with pytest.raises(OSError) as err:
        write_atomic(target, library)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert target.read_text() == '{"old": true}' and temporaries(tmp_path) == []


def test_a_resume_tests_again_when_metrics_json_is_damaged(deterministic_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(deterministic_run, run)
    os.truncate(run / "metrics.json", 100)
    proc = run_cli("train", f"trainer.resume={run}", cwd=tmp_path)
    assert "metrics.json is unreadable" in proc.stdout
    assert "testing the run's best checkpoint" in proc.stdout
    assert_same_run(run, deterministic_run)


def test_report_lists_unreadable_runs_as_broken_and_goes_on(deterministic_run, tmp_path):
    sweep = tmp_path / "sweep"
    for name in ("good", "cut_metrics", "cut_overrides"):
        shutil.copytree(deterministic_run, sweep / name)
    os.truncate(sweep / "cut_metrics" / "metrics.json", 100)
    (sweep / "cut_overrides" / ".hydra" / "overrides.yaml").write_text("- 'model=unet\n  - [")
    proc = run_cli("report", str(sweep), cwd=tmp_path)
    assert "3 runs" in proc.stdout or "3 runs" in (sweep / "report" / "report.md").read_text()
    md = (sweep / "report" / "report.md").read_text()
    # The report reads a run's results from config.yaml and metrics.json: a cut command-line
    # record (.hydra/overrides.yaml) costs nothing, a cut metrics.json makes the run broken.
    assert "2 finished" in md and "1 broken" in md
    assert "`cut_metrics` | broken |" in md and "unreadable" in md
    assert f"`segbench train trainer.resume={sweep / 'cut_metrics'}` tests its best.pt again" in md
    assert read_json(sweep / "good" / "status.json")["state"] == "finished"

    # Nothing left to compare: the error says what each run is and what to do, not just "nothing".
    for name in ("good", "cut_overrides"):
        shutil.rmtree(sweep / name)
    proc = run_cli("report", str(sweep), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "nothing to report yet (1 run(s): 1 broken; " in proc.stdout
    assert "tests its best.pt again" in proc.stdout
    assert "cut_metrics/metrics.json is unreadable" in proc.stdout
