"""Optuna search: a tiny study (3 trials, 1 epoch, 64 px) interrupted and resumed to exactly 3
trials, its objective the best validation IoU, its report and re-run command."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, ctrl_c_at_test, read_json, run_cli
from segbench import SegbenchError
from segbench.runs.search import check_objective, objective_value, rerun_command

optuna = pytest.importorskip("optuna")

SEARCH = ["train", "-m", "hparams_search=lr_adam", "hydra.sweeper.n_trials=3",
          *[a for a in TINY if not a.startswith("trainer.max_epochs")], "trainer.max_epochs=1",
          "eval.surface_metrics=false"]


def sweep_dir(cwd: Path) -> Path:
    (found,) = (cwd / "outputs" / "multirun").iterdir()
    return found


def study_of(folder: Path):
    record = read_json(folder / "search.json")
    return optuna.load_study(study_name=record["study_name"], storage=record["storage"])


def check_finished_search(folder: Path) -> list:
    """Exactly 3 complete trials, each with its own run directory, valued by the best
    validation IoU of that run (never a test number)."""
    trials = study_of(folder).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    dirs = sorted(p.parent for p in folder.rglob("metrics.json") if "report" not in p.parts)
    assert len(dirs) == 3
    assert sorted(folder / t.user_attrs["run_dir"] for t in trials) == dirs
    for t in trials:
        metrics = read_json(folder / t.user_attrs["run_dir"] / "metrics.json")
        assert t.value == metrics["val_best"]["iou"] != metrics["test"]["iou"]
        assert f"optimizer.lr={t.params['optimizer.lr']}" in t.user_attrs["overrides"]
    assert len({t.params["optimizer.lr"] for t in trials}) == 3  # the resumed sampler drew anew
    return trials


def test_search_interrupted_then_resumed_has_exactly_three_trials(tmp_path, monkeypatch):
    ctrl_c_at_test(monkeypatch, 2)  # in the second trial
    first = run_cli(*SEARCH, cwd=tmp_path, check=False)
    assert first.returncode == 130
    folder = sweep_dir(tmp_path)
    assert (folder / "optuna.db").is_file()
    states = [t.state.name for t in study_of(folder).get_trials()]
    assert states == ["COMPLETE", "RUNNING"]
    interrupted = study_of(folder).get_trials()[1]

    again = run_cli(*SEARCH, cwd=tmp_path)  # the same command continues the study
    assert "1 of 3 trials done, 1 interrupted trial(s) to run again" in again.stdout
    assert "job 2 of 3" in again.stdout and "job 3 of 3" in again.stdout
    trials = check_finished_search(folder)
    # The interrupted trial ran again with its own parameters, in its own (resumed) directory.
    assert trials[1].params == interrupted.params
    assert "resuming" in (folder / trials[1].user_attrs["run_dir"] / "train.log").read_text()

    third = run_cli(*SEARCH, cwd=tmp_path)  # nothing left to do
    assert "3 of 3 trials done" in third.stdout and "Launching" not in third.stdout
    assert len(study_of(folder).get_trials()) == 3

    report = run_cli("report", str(folder), "report.bootstrap=200", cwd=tmp_path)
    best = max(trials, key=lambda t: t.value)
    assert f"| {best.number} (best) | complete | {best.value:.4g} |" in report.stdout
    command = next(line.strip() for line in report.stdout.splitlines()
                   if line.strip().startswith("segbench train -m"))
    words = shlex.split(command)
    assert "seed=0,1,2" in words and "optimizer=adam" in words
    assert f"optimizer.lr={best.params['optimizer.lr']}" in words
    assert not any(w.startswith(("hparams_search", "hydra.")) for w in words)
    assert (folder / "report" / "search.md").is_file()


def test_the_objective_is_never_a_test_metric_and_reads_metrics_json():
    with pytest.raises(SegbenchError, match="test split"):
        check_objective("test.iou")
    assert check_objective("val_best.iou") == "val_best.iou"
    record = {"val_best": {"iou": 0.5}, "test": {"iou": 0.9}}
    assert objective_value(record, "val_best.iou") == 0.5
    assert objective_value(None, "val_best.iou") is None  # a failed trial
    assert objective_value({"val_best": {"iou": float("nan")}}, "val_best.iou") is None


def test_rerun_command_drops_the_search_and_adds_seeds():
    command = rerun_command(["optimizer.lr=0.001", "hparams_search=lr_adam", "resolution='64'",
                             "model.decoder_channels=[32,16,8]", "seed=3"])
    assert command == ("segbench train -m optimizer.lr=0.001 resolution=64 "
                       "'model.decoder_channels=[32,16,8]' seed=0,1,2")


def test_a_search_needs_multirun(tmp_path):
    proc = run_cli("train", "hparams_search=lr_adam", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "add -m" in proc.stderr


@pytest.mark.e2e
def test_search_killed_with_sigkill_resumes_to_exactly_three_trials(tmp_path):
    args = [sys.executable, "-m", "segbench", *SEARCH]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # kill -9 right after the second trial's first last.pt (a trial writes last.pt before its
    # epoch 1 and after it: the first trial's two, then this one), by the fault hook.
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**env, "SEGBENCH_FAULT": "renamed:last.pt:kill@3"})
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = sweep_dir(tmp_path)
    assert [t.state.name for t in study_of(folder).get_trials()][-1] == "RUNNING"

    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    check_finished_search(folder)
