"""Several jobs of a sweep at once on each visible GPU: hydra-joblib-launcher's processes, one
job per GPU slot.

One small run (a 14M-parameter U-Net at 64-256 px) leaves most of a large GPU idle; K of them at
once fill it. `jobs_per_gpu` = K gives K x (visible GPUs) joblib workers (K on a machine without
a GPU). Each job takes a free slot (an OS file lock, so a crashed job frees its slot), GPUs
filled round-robin, and trains there: segbench's `trainer.device=auto` reads the slot's device
from SEGBENCH_DEVICE (runtime/device.py); a job given its own trainer.device keeps it.

Nothing of a job's configuration changes, so its results are those of the same job launched
alone, and a killed packed sweep resumes like any other: running the same command again skips
finished jobs and resumes the interrupted ones from last.pt (trainer.resume=auto in a sweep).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_joblib_launcher._core import execute_job, process_joblib_cfg
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from joblib import Parallel, delayed

# torch and segbench load where they are used, not at module level: Hydra imports every plugin
# module on start-up, of any Hydra application in the environment.

log = logging.getLogger(__name__)

DEVICE_ENV = "SEGBENCH_DEVICE"


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()  # NVML's count: CUDA itself is not started here


@contextlib.contextmanager
def gpu_slot(folder: Path, gpus: int, per_gpu: int):
    """The GPU index of a free slot, held until the block ends (None without GPUs). Slots are
    tried one per GPU first, so that K x G jobs put K on every GPU."""
    if gpus == 0:
        yield None
        return
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for slot in range(per_gpu):
            for gpu in range(gpus):
                fd = os.open(folder / f"gpu{gpu}.slot{slot}", os.O_CREAT | os.O_RDWR, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                try:
                    yield gpu
                finally:
                    os.close(fd)
                return
        time.sleep(0.2)  # every slot taken: a job of another sweep sharing the folder


def pinned_job(slots: str, gpus: int, per_gpu: int, *args) -> JobReturn:
    """hydra-joblib-launcher's job, on the GPU of a free slot."""
    with gpu_slot(Path(slots), gpus, per_gpu) as gpu:
        if gpu is None:
            os.environ.pop(DEVICE_ENV, None)
        else:
            os.environ[DEVICE_ENV] = f"cuda:{gpu}"
        try:
            return execute_job(*args)
        finally:
            os.environ.pop(DEVICE_ENV, None)


class PackedLauncher(JoblibLauncher):
    def __init__(self, jobs_per_gpu: int, **joblib) -> None:
        if not isinstance(jobs_per_gpu, int) or jobs_per_gpu < 1:
            from segbench import SegbenchError

            raise SegbenchError(f"hydra.launcher.jobs_per_gpu={jobs_per_gpu!r}: give an integer "
                                ">= 1 (the runs trained at once on each GPU)")
        super().__init__(**joblib)
        self.jobs_per_gpu = jobs_per_gpu

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        gpus = visible_gpus()
        joblib_cfg = dict(self.joblib)
        joblib_cfg.update(backend="loky", n_jobs=self.jobs_per_gpu * max(1, gpus))
        process_joblib_cfg(joblib_cfg)
        # Lock files outside the sweep directory (it holds runs only), one folder per sweep.
        key = hashlib.sha1(str(sweep_dir.resolve()).encode()).hexdigest()[:12]
        slots = str(Path(tempfile.gettempdir()) / f"segbench-gpu-slots-{key}")
        log.info("packed launcher: %d job(s), %d at once (%d per GPU x %s)", len(job_overrides),
                 joblib_cfg["n_jobs"], self.jobs_per_gpu, f"{gpus} GPU(s)" if gpus else "no GPU")
        for idx, overrides in enumerate(job_overrides):
            log.debug("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        singleton_state = Singleton.get_state()
        runs = Parallel(**joblib_cfg)(
            delayed(pinned_job)(slots, gpus, self.jobs_per_gpu, initial_job_idx + idx, overrides,
                                self.hydra_context, self.config, self.task_function,
                                singleton_state)
            for idx, overrides in enumerate(job_overrides))
        return list(runs)
