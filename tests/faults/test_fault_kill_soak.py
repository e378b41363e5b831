"""The kill -9 soak: a tiny deterministic run is killed with SIGKILL at each point where a kill
can hurt (SEGBENCH_FAULT, see segbench.faults), resumed, and compared with a run never
interrupted: history.csv, TensorBoard scalars, metrics.json, status.json, split.json and
per_case.csv must be identical at every kill point, and no temporary file may be left."""

from __future__ import annotations

import signal

import pytest
from faultkit import SOAK_ARGS, assert_same_run, segbench_process, temporaries

from conftest import run_cli
from segbench.runs.rundir import RunDir

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Where each attempt is killed (one rule per attempt; the run is then resumed to its end). The
# run writes last.pt before epoch 1 (@1), after epoch 1 (@2) and after epoch 2, its last (@3).
KILL_POINTS = {
    "in the first epoch": ["train_step:kill@1"],
    "during a checkpoint write": ["write:last.pt:kill@2"],
    "between best.pt and last.pt": ["renamed:best.pt:kill@1"],
    "right after the last epoch's last.pt rename": ["renamed:last.pt:kill@3"],
    "after history.csv, before TensorBoard": ["renamed:history.csv:kill@2"],
    "during the final test": ["write:per_case.csv:kill"],
    "after metrics.json, before status.json": ["renamed:metrics.json:kill"],
    "twice in a row": ["train_step:kill@2", "renamed:last.pt:kill@1"],
    # Forked DataLoader workers outlive a killed trainer for a moment: the run's lock must not.
    "with DataLoader workers": ["renamed:last.pt:kill@2"],
}
EXTRA_ARGS = {"with DataLoader workers": ["trainer.num_workers=2", "trainer.data_on_device=false"]}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_result(deterministic_run, tmp_path,
                                                                    point):
    run = tmp_path / "run"
    for attempt, rule in enumerate(KILL_POINTS[point]):
        args = [*SOAK_ARGS, *EXTRA_ARGS.get(point, []), f"hydra.run.dir={run}"] if attempt == 0 \
            else [f"trainer.resume={run}"]
        proc = segbench_process("train", *args, cwd=tmp_path, fault=rule)
        assert proc.returncode == -signal.SIGKILL, (  # killed at that point, not before or after
            f"{rule}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        if RunDir(run).status().get("state") == "running":  # what `segbench report` shows:
            finished = (run / "metrics.json").is_file()  # its test on record, or killed
            assert RunDir(run).state() == ("finished" if finished else "killed")
    run_cli("train", f"trainer.resume={run}", cwd=tmp_path)
    assert_same_run(run, deterministic_run)
    assert temporaries(run) == []
