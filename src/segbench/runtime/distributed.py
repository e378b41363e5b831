"""Several processes, one run: DistributedDataParallel on torch.distributed.

One configuration trains on N devices with one process per device, each holding a replica of the
model; DDP averages the gradients every optimizer step. The processes come from

- torchrun: `torchrun --nproc-per-node=N -m segbench train ...` (RANK, WORLD_SIZE, ... in the env);
- segbench: `segbench train trainer.devices=N` starts N workers with torchrun's own launcher
  (`launch()`), passing them its run directory;
- a SLURM job with several tasks through submitit (`hydra/launcher=slurm
  hydra.launcher.tasks_per_node=N`), or submitit's local executor: `setup()` reads submitit's
  job environment.

What keeps a run on N processes one run, equal to one process with N times the batch:

- One run directory: rank 0's. Other ranks never use their own Hydra output directory (the CLI
  points it at the working directory, where Hydra then creates nothing) and receive rank 0's;
  rank 0 decides for all whether to start, resume or skip (`decide()`).
- Rank 0 writes every file and log line: the other ranks get a RunDir that writes nothing
  (`writer()`), no trackers, no progress bar, and log nothing below CRITICAL.
- Every epoch's global batches are one process's batches of batch_size x world size: the
  training sampler deals the same seeded permutation (and per-item augmentation seeds) to the
  ranks, dropping the remainder instead of padding (data.dataset.SeededShuffleSampler).
- Evaluation shards a split without padding (`ShardSampler`); per-image confusion counts are
  gathered by dataset index (an item evaluated twice would still count once) and the pixel-score
  histogram, per-volume counts and loss sums are all-reduced, so validation metrics, the monitor,
  early stopping and test metrics are those of one process on the same data.
- Control messages (the run directory, decisions, a stop request) go through a CPU (gloo) group,
  so that agreeing to stop after Ctrl-C or SIGTERM costs no GPU synchronisation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from torch.nn.parallel import DistributedDataParallel

from segbench import SegbenchError
from segbench.runtime.device import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """This process's place in the run (one process: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    launcher: str | None = None       # torchrun | submitit
    device: torch.device | None = None
    backend: str | None = None         # nccl | gloo

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_SINGLE = Context()
_context = _SINGLE
# The gloo group for control messages (None: the default group is gloo).
_control: dist.ProcessGroup | None = None


def current() -> Context:
    return _context


# ----------------------------------------------------------------------------- joining the run

def launcher_environment() -> Context | None:
    """The rank and world a launcher gave this process, or None for a lone process."""
    if os.environ.get("SUBMITIT_EXECUTOR"):  # a submitit job (SLURM or local) with several tasks
        import submitit  # optional extra

        if submitit.JobEnvironment().num_tasks > 1:
            env = submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=False, overwrite=True)  # RANK, WORLD_SIZE, MASTER_*
            return Context(rank=env.rank, local_rank=env.local_rank, world_size=env.world_size,
                           local_world_size=env.local_world_size, launcher="submitit")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun (and anything like it)
        world = int(os.environ["WORLD_SIZE"])
        if world <= 1:
            return None
        return Context(rank=int(os.environ["RANK"]),
                       local_rank=int(os.environ.get("LOCAL_RANK", 0)), world_size=world,
                       local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)),
                       launcher="torchrun")
    return None


def setup(device_spec: str, devices) -> Context:
    """Join the process group when a launcher started several processes (one process: nothing
    to join). `devices`: trainer.devices, checked against the processes started on this node."""
    global _context, _control
    env = launcher_environment()
    if env is None:
        return _context
    if devices != "auto" and int(devices) != env.local_world_size:
        raise SegbenchError(
            f"trainer.devices={devices} but {env.launcher} started {env.local_world_size} "
            "processes on this machine; leave trainer.devices=auto under a launcher, or make "
            "the two agree")
    device = resolve_device(device_spec)
    if device.type == "cuda":
        if device.index is not None:
            raise SegbenchError(
                f"trainer.device={device_spec} names one GPU, but each process of a run on "
                f"several devices takes its own (cuda:<local rank>); use trainer.device=cuda "
                "or auto, and CUDA_VISIBLE_DEVICES to choose the GPUs")
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise SegbenchError(f"training on several processes runs on CUDA GPUs or on CPUs, not on "
                            f"{device.type}; use trainer.device=cuda or cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
    # A group of every rank: never GroupMember.NON_GROUP_MEMBER, which new_group's type allows.
    _control = (cast(dist.ProcessGroup, dist.new_group(backend="gloo")) if backend != "gloo"
                else None)
    _context = Context(env.rank, env.local_rank, env.world_size, env.local_world_size,
                       env.launcher, device, backend)
    if not _context.is_main:  # rank 0 speaks for the run (until this process ends)
        logging.getLogger().setLevel(logging.CRITICAL + 1)
    return _context


def teardown() -> None:
    """Leave the process group (after the run, on every way out)."""
    global _context, _control
    if dist.is_available() and dist.is_initialized() and _context.enabled:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    _context, _control = _SINGLE, None


# ----------------------------------------------------------------------------- control messages

def broadcast(obj):
    """Rank 0's `obj` on every rank."""
    if not _context.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def decide(fn):
    """Rank 0 runs `fn()`; every rank returns its value, or raises its error (a SegbenchError
    keeps its message), so that the ranks never part ways over a decision."""
    if not _context.enabled:
        return fn()
    if not _context.is_main:
        return _hear()
    with _tell_outcome() as box:
        box.append(fn())
    return box[0]


@contextlib.contextmanager
def rank_zero_first():
    """Rank 0 runs the block first (e.g. writing a shared cache), then the others; an error on
    rank 0 is raised on every rank instead of leaving them waiting."""
    if not _context.enabled:
        yield
        return
    if not _context.is_main:
        _hear()
        yield
        return
    with _tell_outcome():
        yield


@contextlib.contextmanager
def _tell_outcome() -> Iterator[list]:
    """On rank 0: run the block, then send its outcome (its value, or its error) to the others."""
    box: list = []
    try:
        yield box
    except SegbenchError as err:
        broadcast(("refused", str(err)))
        raise
    except BaseException as err:
        broadcast(("failed", f"{type(err).__name__}: {err}"))
        raise
    broadcast(("ok", box[0] if box else None))


def _hear():
    """On the other ranks: rank 0's outcome; its error raised here too."""
    kind, value = broadcast(None)
    if kind == "refused":
        raise SegbenchError(value)
    if kind == "failed":
        raise SegbenchError(f"rank 0 failed: {value}")
    return value


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any (a stop request: all stop at the same step)."""
    if not _context.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control)
    return bool(t.item())


def barrier() -> None:
    if _context.enabled:
        dist.barrier(group=_control)


def gather_objects(obj) -> list | None:
    """[obj of rank 0, of rank 1, ...] on rank 0; None on the others."""
    if not _context.enabled:
        return [obj]
    out = [None] * _context.world_size if _context.is_main else None
    dist.gather_object(obj, out, dst=0, group=_control)
    return out


# ----------------------------------------------------------------------------- tensors

def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of `t` (a new tensor; `t` itself in one process)."""
    if not _context.enabled:
        return t
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def _all_gather_padded(t: torch.Tensor, fill) -> torch.Tensor:
    """Every rank's rows of `t` (any number per rank) concatenated; rows are padded to the
    longest with `fill` and returned padded (callers drop them by their index)."""
    n = torch.tensor([len(t)], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(_context.world_size)]
    dist.all_gather(sizes, n)
    longest = max(int(s) for s in sizes)
    padded = torch.full((longest, *t.shape[1:]), fill, dtype=t.dtype, device=t.device)
    padded[:len(t)] = t
    parts = [torch.empty_like(padded) for _ in range(_context.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat(parts)


def gather_rows(rows: torch.Tensor, index: torch.Tensor, total: int) -> torch.Tensor:
    """Per-item rows each rank computed for dataset items `index`, as one (total, ...) tensor in
    dataset order on every rank. An item computed by several ranks (the padding of torch's
    DistributedSampler) is kept once; an item no rank computed is an error."""
    index = index.to(rows.device, torch.long)
    if _context.enabled:
        every_index = _all_gather_padded(index, -1)
        every_row = _all_gather_padded(rows, 0)
    else:
        every_index, every_row = index, rows
    real = every_index >= 0
    every_index, every_row = every_index[real], every_row[real]
    out = torch.zeros((total, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    out[every_index] = every_row
    covered = torch.zeros(total, dtype=torch.bool, device=rows.device)
    covered[every_index] = True
    if not bool(covered.all()):
        raise RuntimeError(f"{int((~covered).sum())} of {total} items were evaluated by no process")
    return out


def gather_cat(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order (rows of distinct items, e.g. an epoch's
    training images: the training sampler never hands an item to two ranks)."""
    if not _context.enabled:
        return rows
    index = torch.arange(len(rows), device=rows.device)
    everything = _all_gather_padded(torch.cat([index[:, None], rows.long()], 1), -1)
    return everything[everything[:, 0] >= 0, 1:].to(rows.dtype)


class ShardSampler(torch.utils.data.Sampler):
    """This rank's share of a split for evaluation: items rank, rank + W, rank + 2W, ... in
    order, no padding (ranks may get one item fewer; evaluation has no gradients to keep in step,
    and nothing is evaluated twice)."""

    def __init__(self, length: int, rank: int | None = None, world_size: int | None = None):
        self.length = length
        self.rank = _context.rank if rank is None else rank
        self.world_size = _context.world_size if world_size is None else world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))

    def __iter__(self):
        return iter(range(self.rank, self.length, self.world_size))


# ------------------------------------------------------------------------- the model and the run

def wrap(model: torch.nn.Module, sync_batchnorm: bool):
    """(model, the module to train through): DDP over `model` when several processes run, with
    batch norm synchronised across them when asked (CUDA only: PyTorch's SyncBatchNorm)."""
    if not _context.enabled:
        return model, model
    device = _context.device
    assert device is not None  # setup() gives every process of several its device
    if sync_batchnorm:
        if device.type != "cuda":
            raise SegbenchError("trainer.sync_batchnorm=true needs CUDA GPUs (PyTorch's "
                                "SyncBatchNorm runs on GPUs only); set it to false on CPUs")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return model, DistributedDataParallel(model, device_ids=device_ids)


def no_sync(model, skip: bool):
    """DDP's no_sync() while `skip` (gradient accumulation: one all-reduce per optimizer step)."""
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


class FollowerRun:
    """The run directory as ranks other than 0 use it: what they read of it, and its records as
    writes that do nothing (rank 0 writes them). Every attribute is named in READS or WRITES;
    any other is an AttributeError, so a new RunDir method is declared here before another rank
    can call it, instead of being trusted (or silenced) by its name."""

    READS = frozenset({"path", "name", "settings", "holds_run", "is_run", "read_config", "status",
                       "state", "read_metrics", "read_split", "read_history", "read_trackers",
                       "checkpoint_path", "has_checkpoint", "load_checkpoint"})
    WRITES = frozenset({"write_config", "write_hydra", "set_status", "record_final",
                        "remove_stale_temporaries", "write_metrics", "write_split",
                        "write_history", "write_trackers", "save_checkpoint"})
    # Rank 0's alone (the decisions it broadcasts, its lock, its messages): an AttributeError here.
    RANK_ZERO_ONLY = frozenset({"open", "plan", "lock", "warn_if_unfinished"})

    def __init__(self, run):
        self._run = run

    def __getattr__(self, name):
        if name in self.WRITES:
            return _nothing
        if name in self.READS:
            return getattr(self._run, name)
        raise AttributeError(f"RunDir.{name} is not for ranks other than 0 (or not declared: "
                             "add it to distributed.FollowerRun.READS or WRITES)")

    def __truediv__(self, name):
        return self._run / name

    def __repr__(self) -> str:
        return f"read-only {self._run!r}"


def _nothing(*args, **kwargs) -> None:
    return None


def writer(run):
    """`run` on rank 0; on the other ranks a FollowerRun of it, which writes nothing."""
    if _context.is_main or isinstance(run, FollowerRun):
        return run
    return FollowerRun(run)


def check_resume(saved: dict) -> None:
    """A run resumes on as many processes as it ran on (its global batch and its batch-norm
    statistics depend on them)."""
    before = int(saved.get("world_size", 1))
    if before != _context.world_size:
        raise SegbenchError(
            f"this run trained on {before} process(es) and is resumed on {_context.world_size}; "
            f"resume it on {before} (trainer.devices={before}, or torchrun --nproc-per-node="
            f"{before}), since the global batch and batch-norm statistics depend on it")


# ----------------------------------------------------------------------------- starting N processes

def launch(nproc: int, argv: list[str], cpu: bool) -> None:
    """Run `python -m segbench <argv>` in `nproc` processes on this machine with torchrun's
    launcher (torch.distributed.launcher), inheriting this process's console; returns when they
    all finished. Ctrl-C or SIGTERM reaches each worker once (they stop together at the next
    step). Raises SegbenchError when a worker failed, SystemExit(130) when they were
    interrupted."""
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                          run_id=f"segbench-{uuid.uuid4().hex[:8]}", rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    env = {}
    if cpu and "OMP_NUM_THREADS" not in os.environ:  # the cores shared out, not each taking all
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    elastic = logging.getLogger("torch.distributed.elastic")
    saved_level, saved_handlers = elastic.level, {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        with contextlib.suppress(ValueError):  # only the main thread can touch signals
            saved_handlers[sig] = signal.getsignal(sig)
    elastic.setLevel(logging.CRITICAL)  # rank 0 reports; the agent's own log is noise here
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "segbench", *argv)
    except ChildFailedError as err:
        codes = {rank: failure.exitcode for rank, failure in err.failures.items()}
        first = min(codes)
        if codes[first] == 130 or codes[first] == -signal.SIGINT:
            raise SystemExit(130) from None
        raise SegbenchError(
            f"training on {nproc} processes failed: rank {first} exited with code {codes[first]}"
            " (its output is above; the run directory's train.log has rank 0's log)") from None
    except SignalException as err:
        log.warning("%s: the %d training processes were asked to stop", err.sigval.name, nproc)
        raise SystemExit(130) from None
    finally:
        elastic.setLevel(saved_level)
        for sig, handler in saved_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def global_batch(batch_size: int, accumulate: int) -> int:
    return batch_size * accumulate * _context.world_size


def steps_per_epoch(batches: int, accumulate: int) -> int:
    return math.ceil(batches / accumulate)
