"""Defect 6: every way out of a run records a final state, and the OS errors a user can fix
(disk full, read-only or forbidden folder, a damaged cache entry) are one line with the fix.
The faults are injected where the operating system would raise them (segbench.faults); the
signals (double Ctrl-C, Ctrl-C and SIGTERM during the final test) are in test_fault_signals.py."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import torch
from faultkit import dead_pid, read_json, temporaries

from conftest import TINY, run_cli
from datasets_util import compose_cfg
from segbench import faults
from segbench.data import build_datasets, list_splits

pytestmark = pytest.mark.slow


@pytest.fixture()
def fault(monkeypatch):
    def set_fault(rule: str) -> None:
        monkeypatch.setenv("SEGBENCH_FAULT", rule)
        faults.reset()
    yield set_fault
    monkeypatch.delenv("SEGBENCH_FAULT", raising=False)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_run_resumes(tmp_path, fault):
    run = tmp_path / "run"
    fault("write:last.pt:enospc@2")  # the disk fills up while epoch 1's last.pt is written
    proc = run_cli("train", *TINY, f"hydra.run.dir={run}", cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out
    line = next(x for x in proc.stdout.splitlines() if "no space left" in x)
    assert f"no space left on the disk writing {run}/checkpoints/last.pt" in line
    assert "free some space" in line and f"segbench train trainer.resume={run}" in line
    status = read_json(run / "status.json")
    assert status["state"] == "failed" and "no space left" in status["error"]
    assert temporaries(run) == []  # the half-written checkpoint is gone
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 0

    fault("")
    run_cli("train", f"trainer.resume={run}", cwd=tmp_path)
    assert read_json(run / "status.json") == {"state": "finished", "epoch": 2}


def test_a_full_disk_in_the_cache_names_paths_cache(tmp_path, fault):
    cache = tmp_path / "cache"
    fault("write:meta.json:enospc")
    proc = run_cli("train", *TINY, f"paths.cache={cache}", "hydra.run.dir=run", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert "no space left on the disk writing" in proc.stdout and "paths.cache=" in proc.stdout
    assert read_json(tmp_path / "run" / "status.json")["state"] == "failed"
    assert list((cache / "arrays").iterdir()) == []  # no half-built entry


def test_a_read_only_run_directory_is_one_line(tmp_path, fault):
    fault("write:config.yaml:erofs")  # the first file a run writes (.hydra/config.yaml)
    proc = run_cli("train", *TINY, "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert "the file system is read-only writing" in proc.stdout
    assert "hydra.run.dir=<a folder on another disk>" in proc.stdout
    fault("write:config.yaml:eacces")
    proc = run_cli("train", *TINY, "hydra.run.dir=run2", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "permission denied writing" in proc.stdout


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.mark.e2e
@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -rm` (mount namespaces)")
def test_a_real_full_disk_and_read_only_disk(tmp_path):
    """The same on real file systems: a 1 MB tmpfs fills up (the run's first checkpoint is
    9 MB), and a read-only mount cannot hold a run directory."""
    import sys

    disk = tmp_path / "disk"
    disk.mkdir()
    args = " ".join(f"'{a}'" for a in TINY)
    script = (f"mount -t tmpfs -o size=1m tmpfs {disk} && cd {tmp_path} && "
              f"{sys.executable} -m segbench train {args} hydra.run.dir={disk}/run; echo rc=$?; "
              f"mount -o remount,ro {disk} && "
              f"{sys.executable} -m segbench train {args} hydra.run.dir={disk}/other; echo rc=$?; "
              f"cat {disk}/run/status.json")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                          env={**os.environ, "SEGBENCH_FAULT": ""}, timeout=300)
    out = proc.stdout + proc.stderr
    assert out.count("rc=2") == 2, out[-3000:]
    assert "no space left on the disk writing" in out and "Traceback" not in out
    assert f"the file system is read-only writing {disk}/other" in out
    assert '"state": "failed"' in out


def test_a_damaged_array_cache_entry_is_rebuilt_with_a_warning(tmp_path, caplog):
    """A truncated .npy (a full disk, a copy cut short) or meta.json is rebuilt, not a crash;
    the folder a killed build left behind goes too."""
    cfg = compose_cfg(*[a for a in TINY if "resolution" not in a], "resolution='64'",
                      f"paths.cache={tmp_path / 'cache'}")
    splits = list_splits(cfg)
    first = build_datasets(cfg, splits, tmp_path / "cache")
    expected = {name: np.array(first[name].images) for name in splits}
    entry = next(p for p in (tmp_path / "cache" / "arrays").iterdir()
                 if np.load(p / "images.npy", mmap_mode="r").shape[0] == len(splits["train"]))
    size = (entry / "images.npy").stat().st_size
    os.truncate(entry / "images.npy", size // 2)  # "mmap length is greater than file size"
    abandoned = entry.with_name(f"0123456789abcdef.tmp{dead_pid()}")  # a killed build's
    abandoned.mkdir()
    (abandoned / "images.npy").write_bytes(b"\0" * 1000)
    again = build_datasets(cfg, splits, tmp_path / "cache")
    assert not abandoned.exists()
    assert np.array_equal(np.array(again["train"].images), expected["train"])
    assert f"the array cache entry {entry} is damaged" in caplog.text
    assert "rebuilding it" in caplog.text
    assert (entry / "images.npy").stat().st_size == size

    (entry / "meta.json").write_text("{")  # a meta.json cut short
    assert np.array_equal(np.array(build_datasets(cfg, splits, tmp_path / "cache")["train"].images),
                          expected["train"])
