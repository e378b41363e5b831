"""The packed launcher (hydra/launcher=packed): K jobs of a sweep at once per GPU, each on a GPU
slot, with the results of the same jobs run one by one. Without a GPU it runs K jobs at once on
the CPU, which is what is tested here; the slot choice is tested with a pretend GPU count."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from conftest import TINY, read_json, run_cli, run_dirs

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason='pip install "segbench[joblib]"')

from hydra_plugins.segbench_packed_launcher.packed_launcher import gpu_slot  # noqa: E402

ARGS = [*TINY, "trainer.deterministic=true", "augmentation=basic", "trainer.data_on_device=true"]


def _tests(sweep):
    return {run.name: {k: v for k, v in read_json(run / "metrics.json")["test"].items()
                       if not k.endswith("_seconds")} for run in run_dirs(sweep)}


@pytest.mark.e2e
def test_packed_jobs_give_the_results_of_jobs_run_one_by_one(tmp_path):
    # joblib gives each of K jobs on this 2-core machine cores / K threads; the same number here
    # keeps the sums in the same order, so the results are equal bit for bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        run_cli("train", "-m", "seed=0,1", *ARGS, "hydra.sweep.dir=one_by_one", cwd=tmp_path)
    finally:
        torch.set_num_threads(threads)
    packed = run_cli("train", "-m", "seed=0,1", *ARGS, "hydra/launcher=packed",
                     "hydra.launcher.jobs_per_gpu=2", "hydra.sweep.dir=packed", cwd=tmp_path)
    assert "packed launcher: 2 job(s), 2 at once (2 per GPU x no GPU)" \
        in packed.stdout + packed.stderr
    alone, together = _tests(tmp_path / "one_by_one"), _tests(tmp_path / "packed")
    assert len(alone) == 2 and alone == together


def test_slots_put_k_jobs_on_every_gpu_and_free_them(tmp_path):
    held, release = [], threading.Event()

    def job():
        with gpu_slot(tmp_path, gpus=3, per_gpu=2) as gpu:
            held.append(gpu)
            release.wait(10)

    threads = [threading.Thread(target=job) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.time() + 10
    while len(held) < 6 and time.time() < deadline:
        time.sleep(0.01)
    assert sorted(held) == [0, 0, 1, 1, 2, 2]
    release.set()
    for t in threads:
        t.join()
    with gpu_slot(tmp_path, gpus=3, per_gpu=2) as gpu:  # every slot free again: the first GPU
        assert gpu == 0
    with gpu_slot(tmp_path, gpus=0, per_gpu=2) as gpu:
        assert gpu is None
