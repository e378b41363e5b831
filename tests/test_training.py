"""The shared training loop end to end: artifacts, checkpoints, resume, early stopping, failures."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY, read_json, run_cli

pytestmark = pytest.mark.slow


def read_history(run: Path) -> list[dict]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_run_directory_follows_the_contract(tiny_run):
    for name in ("config.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml", "train.log",
                 "history.csv", "metrics.json", "per_case.csv", "split.json", "curves.png",
                 "predictions.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tiny_run / name).is_file(), name
    assert list((tiny_run / "tb").glob("events.out.tfevents.*"))
    history = read_history(tiny_run)
    assert [int(r["epoch"]) for r in history] == [1, 2]
    for column in ("lr", "train_loss", "val_loss", "val_dice", "val_iou", "train_dice", "seconds"):
        assert column in history[0]
    log = (tiny_run / "train.log").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log and "test (best epoch" in log

    metrics = read_json(tiny_run / "metrics.json")
    test = metrics["test"]
    assert test["n_images"] == 8
    for key in ("dice", "iou", "dice_micro", "iou_micro", "precision", "recall", "accuracy"):
        assert 0.0 <= test[key] <= 1.0
    assert test["iou"] <= test["dice"] + 1e-12
    assert metrics["model"]["params"] > 0 and metrics["device"] == "cpu"
    assert metrics["split_sizes"] == {"train": 19, "val": 5, "test": 8}  # round(24 * 0.2) held out
    assert metrics["threshold"] == 0.5 and "both empty" in metrics["empty_rule"]
    assert "torch" in metrics["versions"] and metrics["seed"] == 0

    with open(tiny_run / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    mean_dice = sum(float(r["dice"]) for r in rows) / len(rows)
    assert mean_dice == pytest.approx(test["dice"], abs=1e-5)

    split = read_json(tiny_run / "split.json")
    ids = {k: set(v) for k, v in split["splits"].items()}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"])
    assert not (ids["val"] & ids["test"])
    assert {r["image"] for r in rows} == ids["test"]
    assert all(i.startswith("test_") for i in ids["test"])  # validation never comes from test


def test_checkpoints_load_weights_only_and_best_is_the_best_epoch(tiny_run):
    last = torch.load(tiny_run / "checkpoints/last.pt", weights_only=True)
    best = torch.load(tiny_run / "checkpoints/best.pt", weights_only=True)
    history = read_history(tiny_run)
    val_iou = [float(r["val_iou"]) for r in history]
    assert best["epoch"] == 1 + val_iou.index(max(val_iou))
    assert best["val"]["iou"] == pytest.approx(max(val_iou))
    assert last["epoch"] == 2 and len(last["history"]) == 2
    assert read_json(tiny_run / "metrics.json")["best_epoch"] == best["epoch"]
    assert not list((tiny_run / "checkpoints").glob(".*tmp*"))  # no temporary files left


def test_eval_reproduces_the_training_test_metrics(tiny_run, tmp_path):
    run_cli("eval", f"run_dir={tiny_run}", cwd=tmp_path)
    out = sorted((tiny_run / "eval").iterdir())[-1]
    evaluated = read_json(out / "metrics.json")["test"]
    trained = read_json(tiny_run / "metrics.json")["test"]
    for key in ("dice", "iou", "dice_micro", "iou_micro", "precision", "recall", "accuracy"):
        assert evaluated[key] == trained[key], key
    assert (out / "per_case.csv").read_text() == (tiny_run / "per_case.csv").read_text()
    assert "test metrics recorded at the end of training" in (out / "eval.log").read_text()
    assert "differs" not in (out / "eval.log").read_text()


def test_eval_names_a_corrupt_checkpoint(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    (copy / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    proc = run_cli("eval", f"run_dir={copy}", cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert "cannot load checkpoint" in out and "best.pt" in out and "Traceback" not in out


def test_a_finished_run_dir_is_not_overwritten(tiny_run, tmp_path):
    proc = run_cli("train", *TINY, f"hydra.run.dir={tiny_run}", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "already holds a run" in proc.stdout and "trainer.resume" in proc.stdout


def _start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "segbench", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for_epochs(run: Path, n: int, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "history.csv").is_file() and len(read_history(run)) >= n:
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise TimeoutError(f"no {n} epochs in {run}")


RESUME_ARGS = [*TINY, "trainer.max_epochs=4", "augmentation=basic", "trainer.deterministic=true",
               "scheduler=cosine"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("full")
    run_cli("train", *RESUME_ARGS, "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_and_resumed_run_has_the_same_history(uninterrupted, tmp_path, sig):
    run = tmp_path / "run"
    proc = _start(["train", *RESUME_ARGS, f"hydra.run.dir={run}"], tmp_path)
    _wait_for_epochs(run, 1, proc)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert not (run / "metrics.json").exists(), "the run finished before it was interrupted"
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert f"segbench train trainer.resume={run}" in output
        assert read_json(run / "status.json")["state"] == "interrupted"
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["epoch"] >= 1

    proc = run_cli("train", f"trainer.resume={run}", cwd=tmp_path)
    assert "resuming" in proc.stdout
    assert without_time(read_history(run)) == without_time(read_history(uninterrupted))
    def figures(path):
        return {k: v for k, v in read_json(path)["test"].items() if not k.endswith("_seconds")}

    assert figures(run / "metrics.json") == figures(uninterrupted / "metrics.json")
    assert read_json(run / "status.json")["state"] == "finished"


def test_resume_refuses_a_different_configuration(uninterrupted, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    (run / "metrics.json").unlink()
    proc = run_cli("train", f"trainer.resume={run}", "optimizer=sgd", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "optimizer.name: 'adam' -> 'sgd'" in proc.stdout


def test_resume_of_a_finished_run_skips_it(uninterrupted, tmp_path):
    before = (uninterrupted / "metrics.json").stat().st_mtime_ns
    proc = run_cli("train", f"trainer.resume={uninterrupted}", cwd=tmp_path)
    assert "already finished" in proc.stdout
    assert (uninterrupted / "metrics.json").stat().st_mtime_ns == before


def test_early_stopping_stops_when_validation_iou_stalls(tmp_path):
    # No gain can exceed min_delta=1 (IoU <= 1): only epoch 1 counts as an improvement.
    run_cli("train", *TINY, "trainer.max_epochs=10", "trainer.early_stopping.patience=2",
            "trainer.early_stopping.min_delta=1.0", "hydra.run.dir=run", cwd=tmp_path)
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["stopped_early"] is True
    assert metrics["epochs_run"] == 3
    assert "early stopping" in (tmp_path / "run" / "train.log").read_text()


def test_diverging_loss_stops_with_a_clear_message(tmp_path):
    proc = run_cli("train", *TINY, "optimizer=sgd", "optimizer.lr=1e25", "scheduler=none",
                   "trainer.log_every_steps=1", "trainer.max_epochs=3", "hydra.run.dir=run",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert ("the training loss became nan" in proc.stdout
            or "the training loss became inf" in proc.stdout)
    assert "Traceback" not in proc.stdout + proc.stderr
    status = read_json(tmp_path / "run" / "status.json")
    assert status["state"] == "failed"
    last = torch.load(tmp_path / "run" / "checkpoints/last.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


def test_deterministic_cpu_runs_repeat_bit_for_bit(uninterrupted, tmp_path):
    run_cli("train", *RESUME_ARGS, "hydra.run.dir=again", cwd=tmp_path)
    assert without_time(read_history(tmp_path / "again")) \
        == without_time(read_history(uninterrupted))


def test_config_yaml_is_the_resolved_config(tiny_run):
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert "${" not in (tiny_run / "config.yaml").read_text()
    assert cfg["model"]["in_channels"] == 3 and cfg["resolution"] == {"height": 64, "width": 64}


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("refused", [
    ["optimizer.lr=1e-4"],            # a resume with another setting
    ["model=fpn", "HYDRA_RUN_DIR"],   # another configuration pointed at the run's directory
])
def test_a_refused_command_changes_nothing_and_the_resume_still_works(tmp_path, refused):
    run = tmp_path / "run"
    run_cli("train", *TINY, "trainer.max_epochs=3", f"hydra.run.dir={run}", cwd=tmp_path)
    (run / "metrics.json").unlink()  # as if interrupted after its last epoch
    (run / "status.json").write_text('{"state": "interrupted", "epoch": 3}')
    before = _snapshot(run)
    args = [f"hydra.run.dir={run}" if a == "HYDRA_RUN_DIR" else a for a in refused]
    if "HYDRA_RUN_DIR" in refused:
        proc = run_cli("train", *TINY, "trainer.resume=true", *args, cwd=tmp_path, check=False)
    else:
        proc = run_cli("train", f"trainer.resume={run}", *args, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "differs from the run being resumed" in proc.stdout
    assert _snapshot(run) == before  # not one byte of the run changed
    run_cli("train", f"trainer.resume={run}", cwd=tmp_path)
    assert read_json(run / "status.json")["state"] == "finished"


def test_data_loader_workers_end_with_the_run(tmp_path):
    # Persistent workers ignore SIGTERM (they leave stopping to the main process): a run must end
    # them itself, or the interpreter's exit waits for them forever.
    import multiprocessing

    run_cli("train", *TINY, "trainer.num_workers=2", "trainer.data_on_device=false",
            "hydra.run.dir=run", cwd=tmp_path)
    assert read_json(tmp_path / "run" / "status.json")["state"] == "finished"
    assert multiprocessing.active_children() == []
