"""Cluster launchers that have actually run: the real code of hydra-submitit-launcher with
submitit's local executor (`hydra/launcher=submitit_local`, the same path as SLURM's but with
local processes) and hydra-ray-launcher against a local Ray instance. Marked e2e (real processes;
`python -m pytest -m e2e`).

- A 2-job sweep lands in the deterministic sweep directories; one job is signalled as a cluster
  signals a preempted or timed-out job (SIGUSR2): submitit checkpoints and requeues it, the job
  resumes from last.pt and ends with the history of an uninterrupted run; re-submitting the same
  sweep skips both finished jobs.
- A job with two tasks (`hydra.launcher.tasks_per_node=2`, as on a SLURM node with 2 GPUs) trains
  one run on two processes (DDP on gloo) from submitit's job environment.
- The launchers pickle segbench's HydraTask; its unpickling registers segbench's resolvers in the
  worker (the job directories resolve there: `${segbench.jobdir:...}`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, read_json, run_cli, run_dirs
from segbench.runs.rundir import RunDir

pytestmark = pytest.mark.e2e

submitit_launcher = pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                                        reason="pip install hydra-submitit-launcher")

ARGS = [*TINY, "trainer.deterministic=true", "trainer.device=cpu"]
EPOCHS = 4
SWEEP = ["train", "-m", "seed=0,1", *ARGS, f"trainer.max_epochs={EPOCHS}",
         "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=30"]


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _job_logs(sweep: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(sweep.glob(".submitit/*/*_log.*")))


def test_submitit_sweep_requeues_a_signalled_job_that_resumes_and_a_resubmission_skips(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "segbench", *SWEEP], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 400
        job0 = None
        while job0 is None or not RunDir(job0).read_history():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
            job0 = next((p.parent for p in
                         tmp_path.glob("outputs/multirun/*/default/seed=0/status.json")), None)
            time.sleep(0.05)
        pid = read_json(job0 / "status.json")["pid"]  # the submitit task that runs the job
        os.kill(pid, signal.SIGUSR2)  # what SLURM sends before a time limit or a preemption
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    sweep = job0.parent.parent
    assert [d.relative_to(sweep).as_posix() for d in run_dirs(sweep)] \
        == ["default/seed=0", "default/seed=1"]
    logs = _job_logs(sweep)
    assert "Requeued job" in logs  # submitit's checkpoint/requeue, then the job again:
    train_log = (job0 / "train.log").read_text()
    assert "stopped by a request to exit (code 144)" in train_log
    assert "resuming" in train_log
    for job in run_dirs(sweep):
        assert read_json(job / "status.json")["state"] == "finished"

    # The requeued job ends as an uninterrupted run of its configuration ends.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the job's (OMP_NUM_THREADS=1): the same float sums
    try:
        run_cli("train", *ARGS, f"trainer.max_epochs={EPOCHS}", "seed=0", "hydra.run.dir=reference",
                cwd=tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert without_time(RunDir(job0).read_history()) == \
        without_time(RunDir(tmp_path / "reference").read_history())

    # Re-submitting the sweep: both jobs finished, both skipped (in the same directories).
    mtimes = {d: (d / "metrics.json").stat().st_mtime_ns for d in run_dirs(sweep)}
    again = subprocess.run([sys.executable, "-m", "segbench", *SWEEP], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert list((tmp_path / "outputs" / "multirun").iterdir()) == [sweep]
    assert _job_logs(sweep).count("this run already finished") == 2
    assert {d: (d / "metrics.json").stat().st_mtime_ns for d in run_dirs(sweep)} == mtimes


def test_a_submitit_job_with_two_tasks_trains_one_run_on_two_processes(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "segbench", "train", "-m", "seed=3", *ARGS, "trainer.batch_size=4",
         "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [run] = run_dirs(tmp_path / "outputs")
    assert run.name == "seed=3"
    metrics = read_json(run / "metrics.json")
    assert metrics["world_size"] == 2 and metrics["global_batch_size"] == 8
    log = (run / "train.log").read_text()
    assert "x 2 process(es) (submitit, gloo)" in log and log.count("epoch 1/2 ") == 1


def test_a_ray_sweep_runs_on_a_local_ray_instance(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher",
                        reason='pip install hydra-ray-launcher "ray[default]"')
    proc = subprocess.run(
        [sys.executable, "-m", "segbench", "train", "-m", "seed=0,1", *ARGS,
         "hydra/launcher=ray_cluster",  # num_gpus: 1 with CUDA, here 0 (segbench.gpus_per_job)
         "hydra.launcher.ray.remote.num_cpus=1", "+hydra.launcher.ray.init.num_cpus=2",
         "+hydra.launcher.ray.init.include_dashboard=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dirs = run_dirs(tmp_path / "outputs")
    sweep = dirs[0].parent.parent
    assert [d.relative_to(sweep).as_posix() for d in dirs] == ["default/seed=0", "default/seed=1"]
    for d in dirs:
        assert read_json(d / "status.json")["state"] == "finished"
        assert read_json(d / "metrics.json")["test"]["n_images"] == 8
