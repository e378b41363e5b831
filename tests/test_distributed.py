"""Training on several processes (runtime/distributed.py), in one process: the samplers, the
gathering of evaluation rows, the command line of torchrun's ranks, the read-only run directory
of ranks other than 0, the checks of trainer.devices and sync_batchnorm, gradient accumulation,
and the AMP bookkeeping on CPU (bf16 autocast, an enabled GradScaler).

The runs on real process groups (torchrun and `trainer.devices=2` with gloo, kill and resume,
submitit and Ray launchers) are end-to-end tests in test_distributed_e2e.py and test_launchers.py.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, read_json, run_cli
from segbench import SegbenchError
from segbench.cli_args import worker_argv
from segbench.data.dataset import SeededShuffleSampler
from segbench.runs.rundir import RunDir
from segbench.runtime import distributed

# A network without batch norm and a per-pixel mean loss: a global batch split into parts (over
# processes or accumulated batches) then gives the same gradient as the whole batch, up to the
# order of floating-point sums (batch norm's statistics would be those of each part instead).
PLAIN_NET = '''
from torch import nn


class PlainNet(nn.Module):
    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, 1, 1))

    def forward(self, x):
        return self.body(x)
'''


def plain_net_configs(folder: Path) -> Path:
    """A config folder with model=plain (PlainNet; its module written beside it) for
    hydra.searchpath; the caller puts `folder` on the Python path."""
    (folder / "ddp_parts.py").write_text(PLAIN_NET)
    configs = folder / "configs"
    (configs / "model").mkdir(parents=True, exist_ok=True)
    (configs / "model" / "plain.yaml").write_text(textwrap.dedent("""\
        name: plain
        _target_: ddp_parts.PlainNet
        in_channels: ${dataset.channels}
        width: 16
        """))
    return configs


def plain_args(configs: Path) -> list[str]:
    return [*(a for a in TINY if not a.startswith("model.")),
            f"hydra.searchpath=[file://{configs}]",
            "model=plain", "loss=bce", "optimizer.lr=0.01", "augmentation=basic",
            "trainer.deterministic=true", "eval.surface_metrics=false"]


# --- The training sampler: one process's batches, dealt to the ranks -----------------------------

def test_ranks_together_draw_one_process_batches_of_the_global_size():
    length, b, world = 23, 3, 2
    single = SeededShuffleSampler(length)
    ranks = [SeededShuffleSampler(length, r, world) for r in range(world)]
    for s in (single, *ranks):
        s.set_seed(1234)
    one = list(single)
    dealt = [list(r) for r in ranks]
    assert [len(d) for d in dealt] == [11, 11] and all(len(r) == 11 for r in ranks)
    # step k: the ranks' batches make up one process's batch k of b x world
    for k in range(11 // b):
        together = sorted(p for d in dealt for p in d[k * b:(k + 1) * b])
        assert together == sorted(one[k * b * world:(k + 1) * b * world])
    everything = [p for d in dealt for p in d]
    assert len({i for i, _ in everything}) == len(everything) == 22  # none twice, 1 dropped
    # (index, augmentation seed) pairs are the lone process's: the same images, augmented alike
    assert set(everything) <= set(one)


def test_one_process_sampler_is_unchanged():
    s = SeededShuffleSampler(10)
    s.set_seed(7)
    rng = np.random.default_rng(7)
    order, seeds = rng.permutation(10), rng.integers(0, 2**31 - 1, 10)
    assert list(s) == list(zip(order.tolist(), seeds.tolist()))


def test_evaluation_shards_cover_a_split_once_without_padding():
    shards = [list(distributed.ShardSampler(11, r, 3)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 3]
    assert sorted(i for s in shards for i in s) == list(range(11))


def test_gathered_rows_are_in_dataset_order_and_a_padding_duplicate_counts_once():
    rows = torch.tensor([[3, 0], [1, 0], [2, 0], [1, 0]])
    index = torch.tensor([3, 1, 2, 1])  # item 1 twice, as DistributedSampler pads
    with pytest.raises(RuntimeError, match="1 of 4 items were evaluated by no process"):
        distributed.gather_rows(rows, index, 4)  # item 0 missing
    out = distributed.gather_rows(torch.cat([rows, torch.tensor([[0, 0]])]),
                                  torch.cat([index, torch.tensor([0])]), 4)
    assert out.tolist() == [[0, 0], [1, 0], [2, 0], [3, 0]]


# --- One run directory: the command line of torchrun's ranks, and who writes ------------------

def test_ranks_other_than_0_leave_the_run_directory_to_rank_0(monkeypatch):
    argv = ["model=unet", "hydra.run.dir=mine", "--cfg", "job"]
    assert worker_argv(argv) == argv  # not under torchrun
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert worker_argv(argv) == argv
    monkeypatch.setenv("RANK", "1")
    assert worker_argv(["model=unet", "hydra.run.dir=mine"]) == [
        "hydra.run.dir=.", "hydra.output_subdir=null", "model=unet"]
    with pytest.raises(SegbenchError, match="a sweep .-m. cannot run under torchrun"):
        worker_argv(["-m", "seed=0,1"])


def test_rank_1_under_torchrun_creates_no_directory(tmp_path, monkeypatch):
    # What Hydra makes of rank 1's command line: no folder, no file (refused before training).
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    proc = run_cli("train", "trainer.max_epochs=abc", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert list(tmp_path.iterdir()) == []


def test_other_ranks_read_the_run_directory_and_write_nothing(tmp_path):
    run = RunDir(tmp_path)
    run.write_history([{"epoch": 1, "val_iou": 0.5}])
    view = distributed.FollowerRun(run)
    view.write_history([{"epoch": 2}])
    view.set_status("failed")
    view.save_checkpoint("last", {"x": 1})
    view.write_metrics({"test": {}})
    view.write_trackers({"tensorboard": {}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]
    assert view.read_history() == [{"epoch": "1", "val_iou": "0.5"}]
    assert view.path == tmp_path and view / "x" == tmp_path / "x"
    assert distributed.writer(run) is run  # rank 0 (one process) writes
    with pytest.raises(AttributeError, match="not for ranks other than 0"):
        view.lock()
    with pytest.raises(AttributeError, match="FollowerRun.READS or WRITES"):
        view.write_something_new  # noqa: B018  (an undeclared writer never writes from every rank)


def test_every_run_directory_method_is_declared_a_read_or_a_write_for_other_ranks(tmp_path):
    """A new RunDir method must be sorted into FollowerRun's lists before another rank uses it."""
    members = {name for name in dir(RunDir) if not name.startswith("_")} | {"path"}
    v = distributed.FollowerRun
    assert not (v.READS & v.WRITES or v.READS & v.RANK_ZERO_ONLY or v.WRITES & v.RANK_ZERO_ONLY)
    assert members == v.READS | v.WRITES | v.RANK_ZERO_ONLY


# --- Checks -----------------------------------------------------------------------------------

@pytest.fixture()
def fake_ranks(monkeypatch):
    """This process as rank 0 of 2 on CPU, without a process group (for the checks only)."""
    monkeypatch.setattr(distributed, "_context", distributed.Context(
        rank=0, world_size=2, local_world_size=2, device=torch.device("cpu"), backend="gloo"))


def test_sync_batchnorm_on_cpus_is_refused(fake_ranks):
    with pytest.raises(SegbenchError, match="trainer.sync_batchnorm=true needs CUDA GPUs"):
        distributed.wrap(torch.nn.BatchNorm2d(2), sync_batchnorm=True)


def test_a_run_resumes_on_as_many_processes_as_it_ran_on(fake_ranks):
    distributed.check_resume({"world_size": 2})
    with pytest.raises(SegbenchError, match="trained on 1 process.es. and is resumed on 2"):
        distributed.check_resume({})  # checkpoints of one process hold no world_size


def test_devices_must_match_the_processes_a_launcher_started(monkeypatch):
    for k, v in {"RANK": "0", "WORLD_SIZE": "2",
                 "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SegbenchError, match="trainer.devices=3 but torchrun started 2 processes"):
        distributed.setup("cpu", 3)
    with pytest.raises(SegbenchError, match="names one GPU|no CUDA GPU"):
        distributed.setup("cuda:1", "auto")
    assert not torch.distributed.is_initialized()


def test_devices_beyond_the_visible_gpus_is_one_line(tmp_path):
    proc = run_cli("train", *TINY, "trainer.devices=2", "trainer.device=cuda", "hydra.run.dir=run",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert ("no CUDA GPU is available" in proc.stdout or "CUDA GPU(s) are visible" in proc.stdout)


# --- Gradient accumulation --------------------------------------------------------------------

def test_accumulated_batches_train_like_one_batch_of_their_size(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    args = plain_args(plain_net_configs(tmp_path))
    run_cli("train", *args, "trainer.batch_size=8", "hydra.run.dir=whole", cwd=tmp_path)
    run_cli("train", *args, "trainer.batch_size=4", "trainer.accumulate_grad_batches=2",
            "hydra.run.dir=parts", cwd=tmp_path)
    whole, parts = (RunDir(tmp_path / n) for n in ("whole", "parts"))
    for a, b in zip(whole.read_history(), parts.read_history(), strict=True):
        for key in ("train_loss", "val_loss", "val_dice", "val_iou", "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-5), key
    test_a, test_b = (read_json(tmp_path / n / "metrics.json") for n in ("whole", "parts"))
    assert test_b["global_batch_size"] == test_a["global_batch_size"] == 8
    assert test_b["test"]["dice"] == pytest.approx(test_a["test"]["dice"], abs=1e-3)
    assert test_a["world_size"] == 1 and len(test_a["device_names"]) == 1


def test_accumulation_steps_the_optimizer_once_per_group_and_after_the_last_batch():
    from segbench.engine.trainer import train_one_epoch

    steps = []

    class CountingSGD(torch.optim.SGD):
        def step(self, closure=None):
            steps.append(sum(p.grad.abs().sum().item() > 0 for p in self.param_groups[0]["params"]))
            return super().step(closure)

    model = torch.nn.Conv2d(3, 1, 1)
    loader = [(torch.rand(2, 3, 4, 4), (torch.rand(2, 1, 4, 4) > 0.5).to(torch.uint8), None)] * 5
    optimizer = CountingSGD(model.parameters(), lr=0.1)
    _epoch(train_one_epoch, model, loader, optimizer, accumulate=2)
    assert len(steps) == 3  # batches 1-2, 3-4, and 5 alone


class _Schedule:
    def step_batch(self):
        pass


def _epoch(train_one_epoch, model, loader, optimizer, accumulate=1, scaler=None, loss_fn=None,
           amp_dtype=None):
    from segbench.engine.trainer import Compute, Optimisation, StepSettings

    opt = Optimisation(loss_fn or torch.nn.BCEWithLogitsLoss(), optimizer, _Schedule(),
                       scaler or torch.amp.GradScaler("cpu", enabled=False))
    return train_one_epoch(model, loader, opt, Compute(torch.device("cpu"), amp_dtype, False),
                           StepSettings(grad_clip=None, accumulate=accumulate, log_every=1),
                           epoch=1)


# --- AMP bookkeeping on CPU -------------------------------------------------------------------

def test_an_enabled_grad_scaler_skips_a_step_with_infinite_gradients_and_lowers_its_scale():
    from segbench.engine.trainer import train_one_epoch

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 1)
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def loss_fn(logits, target):  # the first batch's gradients overflow, the second's do not
        calls.append(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        return loss * float("inf") if len(calls) == 1 else loss

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=True)
    batch = (torch.rand(2, 3, 4, 4), (torch.rand(2, 1, 4, 4) > 0.5).to(torch.uint8), None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(Exception, match="training loss became (nan|inf)"):
        _epoch(train_one_epoch, model, [batch], optimizer, scaler=scaler, loss_fn=loss_fn)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # step skipped
    assert scaler.get_scale() == 2.0**9  # and the scale halved
    _epoch(train_one_epoch, model, [batch], optimizer, scaler=scaler, loss_fn=loss_fn)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    state = scaler.state_dict()
    restored = torch.amp.GradScaler("cpu", enabled=True)
    restored.load_state_dict(state)
    assert restored.get_scale() == scaler.get_scale() and state["_growth_tracker"] == 1


def test_bf16_autocast_trains_on_cpu_and_is_recorded(tmp_path):
    run_cli("train", *TINY, "trainer.precision=bf16", "trainer.max_epochs=1", "hydra.run.dir=run",
            cwd=tmp_path)
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["precision"] == "bfloat16"
    assert 0 < metrics["test"]["dice"] <= 1
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["scaler"] == {} or last["scaler"].get("scale") is None  # no scaler without fp16
    assert all(t.dtype == torch.float32 for t in last["model"].values() if t.is_floating_point())


def test_precision_choices_and_the_scaler_they_imply():
    from segbench.runtime.device import autocast, autocast_dtype

    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") is None and autocast_dtype(cpu, "bf16") is torch.bfloat16
    with pytest.raises(SegbenchError, match="fp16 needs a GPU"):
        autocast_dtype(cpu, "fp16")
    with autocast(cpu, torch.bfloat16):
        y = torch.nn.Conv2d(3, 1, 1)(torch.rand(1, 3, 4, 4))
    assert y.dtype == torch.bfloat16


def test_sync_batchnorm_on_cpu_processes_is_refused_before_any_starts(tmp_path):
    proc = run_cli("train", *TINY, "trainer.devices=2", "trainer.device=cpu",
                   "trainer.sync_batchnorm=true", "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "trainer.sync_batchnorm=true needs CUDA GPUs" in proc.stdout
    assert "starting 2 training processes" not in proc.stdout
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


class _SignalsItself(torch.utils.data.Dataset):
    """Each item sends Ctrl-C, then SIGTERM, to the process that loads it (as a terminal or
    torchrun signals every process of a group, DataLoader workers included)."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGINT if i % 2 else signal.SIGTERM)
        return torch.tensor(i)


def test_data_loader_workers_leave_stop_signals_to_the_main_process():
    from segbench.data.dataset import ignore_stop_signals

    loader = torch.utils.data.DataLoader(_SignalsItself(), num_workers=1,
                                         worker_init_fn=ignore_stop_signals)
    assert [int(x) for x in loader] == [0, 1, 2, 3]  # the worker survived its signals
