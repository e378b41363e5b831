"""Two processes, one run (gloo on CPU): `torchrun --standalone --nproc-per-node=2 -m segbench
train` and `segbench train trainer.devices=2` against one process with the same global batch,
and a two-process run killed and resumed. Marked e2e (real processes): `python -m pytest -m e2e`.

Tolerance: the model has no batch norm and the loss is a per-pixel mean (BCE), so two processes
with batch 4 compute the gradient of one process's batch of 8 up to the order of floating-point
sums; history and test metrics then agree to 1e-4 (relative) and the test Dice/IoU to 1e-3
(absolute: a pixel whose probability sits within rounding of the threshold may flip). Evaluation
itself is exact: `segbench eval` of the two-process run's best.pt in one process reproduces the
test metrics it recorded bit for bit (per-image counts gathered by index, histograms summed).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import read_json, run_cli, run_subprocess
from segbench.runs.rundir import RunDir
from test_distributed import plain_args, plain_net_configs

pytestmark = pytest.mark.e2e

EPOCHS = 6
COMPARED = ("train_loss", "train_dice", "val_loss", "val_dice", "val_iou", "val_dice_micro", "lr")


def torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """(folder on the Python path of the processes, the common arguments, their env)."""
    folder = tmp_path_factory.mktemp("plain")
    configs = plain_net_configs(folder)
    env = {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # the same threads in every process: the same float sums
    return folder, [*plain_args(configs), f"trainer.max_epochs={EPOCHS}", "trainer.device=cpu"], env


@pytest.fixture(scope="module")
def one_process(plain) -> Path:
    folder, args, env = plain
    sys.path.insert(0, str(folder))
    try:
        run_cli("train", *args, "trainer.batch_size=8", "hydra.run.dir=one", cwd=folder, env=env)
    finally:
        sys.path.remove(str(folder))
    return folder / "one"


@pytest.fixture(scope="module")
def two_processes(plain) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """torchrun's two processes with the default (timestamped) run directory: (cwd, run, proc)."""
    folder, args, env = plain
    cwd = folder / "torchrun"
    cwd.mkdir()
    proc = subprocess.run([*torchrun(), "--standalone", "--nproc-per-node=2", "-m", "segbench",
                           "train", *args, "trainer.batch_size=4"], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list((cwd / "outputs" / "train").iterdir())
    assert len(runs) == 1, runs
    return cwd, runs[0], proc


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_torchrun_makes_one_run_directory_written_by_rank_0(two_processes):
    cwd, run, proc = two_processes
    assert sorted(p.name for p in cwd.iterdir()) == ["outputs"]  # rank 1 made nothing of its own
    assert sorted(p.name for p in run.iterdir()) == sorted([
        ".hydra", "cases.npz", "checkpoints", "config.yaml", "confusion_matrix.png", "curves.png",
        "history.csv",
        "metrics.json", "per_case.csv", "predictions.npz", "predictions.png", "split.json",
        "status.json", "train.log"])
    log = (run / "train.log").read_text()
    assert log.count(f"epoch 1/{EPOCHS} ") == 1 and log.count("test (best epoch") == 1
    assert "global batch 8 = batch_size 4 x 2 process(es) (torchrun, gloo)" in log
    assert proc.stdout.count(f"epoch 1/{EPOCHS} ") == 1  # one console speaks
    metrics = read_json(run / "metrics.json")
    assert metrics["world_size"] == 2 and len(metrics["device_names"]) == 2
    assert metrics["global_batch_size"] == 8
    assert read_json(run / "status.json")["state"] == "finished"


def test_two_processes_train_like_one_with_the_same_global_batch(one_process, two_processes):
    _, run, _ = two_processes
    one, two = RunDir(one_process).read_history(), RunDir(run).read_history()
    assert len(one) == len(two) == EPOCHS
    for a, b in zip(one, two, strict=True):
        for key in COMPARED:
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-6), \
                (a["epoch"], key)
    t1, t2 = (read_json(p / "metrics.json") for p in (one_process, run))
    assert t2["best_epoch"] == t1["best_epoch"]
    assert t2["test"]["n_images"] == t1["test"]["n_images"] == 8  # nothing counted twice
    assert sum(t2["test"][k] for k in ("tp", "fp", "fn", "tn")) == 8 * 64 * 64
    assert t1["test"]["dice"] > 0.05  # the plain network learns something in these epochs
    for key in ("dice", "iou", "dice_micro", "iou_micro", "auroc"):
        assert t2["test"][key] == pytest.approx(t1["test"][key], abs=1e-3), key


def test_evaluation_on_two_processes_is_exactly_one_process_evaluation(plain, two_processes):
    folder, _, env = plain
    _, run, _ = two_processes
    sys.path.insert(0, str(folder))
    # The recorded test ran with one thread (env's OMP_NUM_THREADS=1): so does this evaluation,
    # in this process, so that no convolution sums in another order (AUROC's bins would see it).
    threads = torch.get_num_threads()
    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", threads)))
    try:
        # the test's own network (ddp_parts) is code a run names: this machine's user allows it
        proc = run_cli("eval", f"run_dir={run}", cwd=folder,
                       env={**env, "SEGBENCH_TRUSTED_MODULES": "ddp_parts"})
    finally:
        sys.path.remove(str(folder))
        torch.set_num_threads(threads)
    assert proc.returncode == 0
    evaluated = read_json(next((run / "eval").glob("*/metrics.json")))["test"]
    recorded = read_json(run / "metrics.json")["test"]
    for key in ("dice", "iou", "dice_micro", "iou_micro", "precision", "recall", "auroc",
                "average_precision", "tp", "fp", "fn", "tn"):
        assert evaluated[key] == recorded[key] or (math.isnan(evaluated[key])
                                                   and math.isnan(recorded[key])), key
    with open(next((run / "eval").glob("*/per_case.csv"))) as f1, open(run / "per_case.csv") as f2:
        assert f1.read() == f2.read()


def _pids_naming(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("how", ["sigkill", "sigint"])
def test_a_stopped_two_process_run_resumes_to_the_same_history(plain, two_processes, how):
    """`trainer.devices=2` (segbench starts the processes), stopped after an epoch, then
    `segbench train trainer.resume=<dir>`: the history of the uninterrupted torchrun run, bit
    for bit, and the same test metrics. sigkill: every process killed (-9), as by a crash;
    sigint: Ctrl-C to segbench, which stops both processes at the same step (exit 130)."""
    folder, args, env = plain
    run = folder / f"stopped-{how}"
    parent = subprocess.Popen([sys.executable, "-m", "segbench", "train", *args,
                               "trainer.batch_size=4", "trainer.devices=2", f"hydra.run.dir={run}"],
                              cwd=folder, env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not ((run / "history.csv").is_file() and RunDir(run).read_history()):
            assert parent.poll() is None and time.time() < deadline, parent.communicate()[0][-3000:]
            time.sleep(0.02)
        if how == "sigkill":
            for pid in _pids_naming(str(run)):
                os.kill(pid, signal.SIGKILL)
        else:
            parent.send_signal(signal.SIGINT)
            parent.wait(timeout=120)
    finally:
        if parent.poll() is None:
            parent.kill()
        output = parent.communicate()[0]
    assert not (run / "metrics.json").exists(), "the run finished before it was stopped"
    if how == "sigint":
        assert parent.returncode == 130, output[-3000:]
        assert read_json(run / "status.json")["state"] == "interrupted"
        assert (run / "train.log").read_text().count(
            "interrupted; checkpoints/last.pt holds epoch") == 1
    time.sleep(0.5)
    assert not _pids_naming(str(run))

    # The user's own config folder is named again: a resume searches no folder a run names.
    searchpath = next(a for a in args if a.startswith("hydra.searchpath="))
    proc = run_subprocess("train", f"trainer.resume={run}", searchpath, cwd=folder, env=env)
    log = (run / "train.log").read_text()
    assert "resuming" in log and "starting 2 training processes" in proc.stdout
    _, reference, _ = two_processes
    assert without_time(RunDir(run).read_history()) \
        == without_time(RunDir(reference).read_history())
    resumed, uninterrupted = (read_json(p / "metrics.json") for p in (run, reference))
    assert {k: v for k, v in resumed["test"].items() if not k.endswith("_seconds")} == \
        {k: v for k, v in uninterrupted["test"].items() if not k.endswith("_seconds")}
    assert resumed["world_size"] == 2
