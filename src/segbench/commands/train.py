"""`segbench train [overrides]`: train, validate and test one configuration (a sweep with -m).

The settings are typed and checked before the run directory is touched; the run directory then
decides whether this is a new run, a resume or a finished run to skip; the engine trains; every
way out (done, refused, failed, interrupted) leaves status.json saying which.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from segbench import SegbenchError
from segbench.atomic import os_error_message
from segbench.cli_args import (
    asks_for_help,
    has_flag,
    merge_overrides,
    override_key,
    quote,
    worker_argv,
)
from segbench.commands import log_file
from segbench.commands.auto_options import resolve_auto_options
from segbench.runs.rundir import LOG, RERUN_HINT, RunDir, load_yaml, running_status, signals_held
from segbench.runs.search import require_optuna
from segbench.settings import check_train
from segbench.tracking import check_trackers

# torch, Hydra, OmegaConf and the segbench modules that import them load inside the functions that
# use them, so that `segbench --help` and argument errors answer at once.

CONFIG = "train"
HELP = "train, validate and test one configuration (a sweep with -m)"
OWN_LOG_FILE = True  # train.log opens once the run is accepted (a refusal changes no file)

log = logging.getLogger("segbench.train")


def prepare(argv: list[str]) -> list[str]:
    """`trainer.resume=<run_dir>`: continue that run in its own directory with its own
    overrides; a multirun command line gets its deterministic sweep directory; under torchrun,
    ranks other than 0 leave the run directory to rank 0."""
    return worker_argv(_prepare(argv))


def _prepare(argv: list[str]) -> list[str]:
    from segbench.runs.sweeps import prepare_sweep

    if any(override_key(a) == "hparams_search" and not a.endswith(("=null", "=none")) for a in argv
           if "=" in a) and not asks_for_help(argv):
        if not has_flag(argv, "-m", "--multirun"):
            raise SegbenchError("hparams_search runs a search, one job per trial: add -m "
                                "(segbench train -m hparams_search=<preset>)")
        require_optuna()  # a missing extra is one line here, not a plugin traceback later
    for i, arg in enumerate(argv):
        if not arg.startswith("trainer.resume="):
            continue
        value = arg.split("=", 1)[1]
        if value.lower() in ("auto", "true", "false", "null", "none", ""):
            return prepare_sweep(argv)
        if has_flag(argv, "-m", "--multirun"):
            raise SegbenchError(
                "trainer.resume=<run_dir> resumes one run; to resume a sweep, re-run the same "
                "sweep command (finished runs are skipped, interrupted ones resume)")
        run_dir = Path(value).expanduser()
        new = argv[:i] + argv[i + 1:]
        return merge_overrides(_replayed_overrides(run_dir, new), new) + [
            "trainer.resume=true", quote("hydra.run.dir", str(run_dir.resolve()))]
    return prepare_sweep(argv)


def _replayed_overrides(run_dir: Path, new: list[str]) -> list[str]:
    """The run's own overrides (.hydra/overrides.yaml) for its resume. A run directory is data:
    Hydra's own keys (callbacks, launchers, search paths) are never replayed from it, and an
    override naming an import path only where this machine's user allowed its module."""
    from segbench.registry import TRUSTED_MODULES, is_trusted

    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise SegbenchError(f"cannot resume from {run_dir}: it is not a segbench run directory "
                            f"({overrides_file} is missing)")
    old = load_yaml(overrides_file)
    if not isinstance(old, Sequence):
        raise SegbenchError(f"{overrides_file} is not a list of overrides; it is not a file "
                            "segbench wrote")
    kept = []
    for line in map(str, old):
        key = override_key(line)
        if key in ("trainer.resume", "hydra.run.dir") or key.split(".")[0].split("/")[0] == "hydra":
            continue
        trusted = key.endswith("._target_") and is_trusted(line.split("=", 1)[1])
        if "_target_" in line and not trusted:
            raise SegbenchError(
                f"{overrides_file}: {line} names an import path, and a resume does not replay "
                f"code named by a run directory; if you trust it, export "
                f"{TRUSTED_MODULES}=<its package> (see docs/guarantees.md)")
        kept.append(line)
    _check_search_path(run_dir, new)
    return kept


def _check_search_path(run_dir: Path, new: list[str]) -> None:
    """A run composed with the user's own config folders (hydra.searchpath) is resumed with them
    given again on the command line: the folders a run directory names are not searched."""
    from omegaconf import OmegaConf

    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file() or any(override_key(o) == "hydra.searchpath" for o in new):
        return
    recorded = [str(o) for o in OmegaConf.select(load_yaml(hydra_file), "hydra.overrides.hydra",
                                                 default=None) or []
                if override_key(str(o)) == "hydra.searchpath"]
    if recorded:
        raise SegbenchError(
            f"{run_dir} was trained with {recorded[0]}; a resume does not search config folders "
            "named by a run directory: give it again if you trust it: segbench train "
            f"trainer.resume={run_dir} '{recorded[0]}'")


def absolute_root(cfg) -> None:
    """Record dataset.root as an absolute path: `eval`, `ensemble` and `report` read the run's
    data from its config.yaml, from whatever folder they are started in."""
    dataset = cfg.get("dataset")
    root = dataset.get("root") if dataset else None
    if isinstance(root, str) and root and "://" not in root:
        absolute = os.path.abspath(os.path.expanduser(root))
        if absolute != root:
            dataset.root = absolute


def run(cfg) -> dict | None:
    from hydra.core.hydra_config import HydraConfig

    from segbench.runtime import distributed

    hydra_cfg = HydraConfig.get()
    run_dir = RunDir(hydra_cfg.runtime.output_dir)
    absolute_root(cfg)
    launched = distributed.launcher_environment()  # torchrun's or submitit's tasks, or None
    rank = launched.rank if launched is not None else 0
    try:
        resolve_auto_options(cfg, hydra_cfg)  # augmentation=auto, scheduler=auto: the dataset's
        settings = check_train(cfg)  # a wrong type or value stops here, before training
        check_trackers(cfg.get("logger"))  # an unknown tracker or a missing extra, too
    except SegbenchError as err:
        # A new job of a sweep: the report lists it as failed (rank 0 only: the others' output
        # directory is not the run's).
        if rank == 0 and not run_dir.holds_run():
            with contextlib.suppress(OSError):  # the setting's error is the one to show
                run_dir.write_hydra(cfg, hydra_cfg)
                run_dir.set_status("failed", error=str(err))
        raise
    t = settings.trainer
    if t.devices != "auto" and t.devices > 1 and launched is None:
        # This process starts the N workers; their rank 0 holds the run directory's lock.
        return _launch(cfg, settings, hydra_cfg, run_dir)
    if rank != 0:  # a secondary process of a run on several: rank 0 holds the lock
        return _joined(cfg, settings, hydra_cfg, run_dir)
    with run_dir.lock():  # one writer per run directory: a second trainer is refused here
        return _joined(cfg, settings, hydra_cfg, run_dir)


def _joined(cfg, settings, hydra_cfg, run_dir) -> dict | None:
    """Join the run's processes (one: nothing to do) and run it in rank 0's run directory."""
    from segbench.runtime import distributed

    t = settings.trainer
    distributed.setup(t.device, t.devices)
    try:
        # One run directory: rank 0's (the others' Hydra output directory is not the run's).
        return _run(cfg, settings, hydra_cfg, RunDir(distributed.broadcast(str(run_dir.path))))
    finally:
        distributed.teardown()


def _resume(settings, hydra_cfg) -> bool:
    from hydra.types import RunMode

    resume = settings.trainer.resume
    if resume == "auto":  # a sweep re-run skips its finished jobs and resumes its interrupted ones
        resume = hydra_cfg.mode == RunMode.MULTIRUN
    if resume not in (True, False, None):
        raise SegbenchError(f"trainer.resume={resume!r}; use true, false, auto or a run directory")
    return bool(resume)


def _run(cfg, settings, hydra_cfg, run_dir) -> dict | None:
    """Decide (rank 0 for all), record the accepted run, train."""
    from omegaconf import OmegaConf

    from segbench.runtime import distributed

    resume = _resume(settings, hydra_cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    main = distributed.current().is_main
    plan = distributed.decide(lambda: run_dir.plan(resume, config))
    if plan == "skip":
        _check_skipped_data(cfg, run_dir)
        log.info("skipping %s: this run already finished (metrics.json is there)", run_dir.path)
        metrics = run_dir.read_metrics()
        if main and run_dir.status().get("state") != "finished":  # killed between the two
            run_dir.record_final("finished", epoch=metrics.get("epochs_run"))
        return metrics
    if resume and plan == "start":
        log.info("starting %s (no earlier attempt to resume there)", run_dir.path)
    if plan == "resume":  # the data must be what the run was split from; nothing written yet
        from segbench.data.pinning import recorded_splits

        distributed.decide(lambda: recorded_splits(
            cfg, run_dir.read_split(), where=f"run {run_dir.path}", quiet=True) and None)
        if main and run_dir.status().get("state") == "running":  # and this process holds the lock
            log.info("the previous attempt in %s was killed (status.json still said running)",
                     run_dir.path)
    # Accepted: from here on the run directory is this run's (rank 0 holds its lock and writes).
    with _os_errors(run_dir, cfg, started=plan == "resume"):
        if main:
            run_dir.remove_stale_temporaries()
            run_dir.write_hydra(cfg, hydra_cfg)
            run_dir.write_config(config)
            run_dir.set_status("running", **running_status())
        with log_file(run_dir / LOG) if main else contextlib.nullcontext():
            return _train(cfg, settings, distributed.writer(run_dir), resuming=plan == "resume")


def _check_skipped_data(cfg, run_dir) -> None:
    """A finished run is skipped only when the data is the data it was split from (its recorded
    files): a sweep re-run on another copy of the data would otherwise keep the old results."""
    from segbench.data.pinning import recorded_splits
    from segbench.runtime import distributed

    if (run_dir / "split.json").is_file():
        distributed.decide(lambda: recorded_splits(
            cfg, run_dir.read_split(), where=f"finished run {run_dir.path}", quiet=True,
            fix=f"its results belong to the data it was trained on. {RERUN_HINT}; or restore "
                "that data") and None)


def _launch(cfg, settings, hydra_cfg, run_dir) -> dict | None:
    """`trainer.devices=N` in a lone process: refuse or skip here, once, then start N workers
    (torchrun's launcher) that train in this job's run directory; their rank 0 logs and writes."""
    import torch
    from omegaconf import OmegaConf

    from segbench.runtime import distributed
    from segbench.runtime.device import resolve_device

    n = settings.trainer.devices
    device = resolve_device(settings.trainer.device)
    if device.type == "cuda" and torch.cuda.device_count() < n:
        raise SegbenchError(f"trainer.devices={n} but {torch.cuda.device_count()} CUDA GPU(s) are "
                            "visible; use at most that many (or trainer.device=cpu)")
    if device.type not in ("cuda", "cpu"):
        raise SegbenchError(f"trainer.devices={n}: several processes run on CUDA GPUs or CPUs, "
                            f"not on {device.type}; use trainer.device=cuda or cpu")
    if settings.trainer.sync_batchnorm and device.type != "cuda":
        raise SegbenchError("trainer.sync_batchnorm=true needs CUDA GPUs (PyTorch's SyncBatchNorm "
                            "runs on GPUs only); set it to false on CPUs")
    resume = _resume(settings, hydra_cfg)
    if run_dir.plan(resume, OmegaConf.to_container(cfg, resolve=True)) == "skip":
        log.info("skipping %s: this run already finished (metrics.json is there)", run_dir.path)
        return run_dir.read_metrics()
    keep_hydra = ("hydra.searchpath", "hydra.job_logging", "hydra/job_logging", "hydra.verbose")
    argv = ["train",
            *(o for o in hydra_cfg.overrides.task if override_key(o) != "trainer.resume"),
            *(o for o in hydra_cfg.overrides.hydra if override_key(o).startswith(keep_hydra)),
            f"trainer.resume={str(resume).lower()}",
            quote("hydra.run.dir", str(run_dir.path.resolve()))]
    log.info("starting %d training processes on %s (torchrun's launcher) for %s", n, device.type,
             run_dir.path)
    distributed.launch(n, argv, cpu=device.type == "cpu")
    return run_dir.read_metrics()


def _train(cfg, settings, run_dir, resuming: bool) -> dict:
    """The engine's fit, with the run's final state recorded on every way out (rank 0 records;
    on other ranks `run_dir` writes nothing)."""
    from segbench.engine.trainer import Interrupted, fit

    try:
        with _sigterm_interrupts():
            result = fit(settings, run_dir, resuming)
    except Interrupted as stop:
        with signals_held():  # a second Ctrl-C stops the process after these two lines
            run_dir.record_final("interrupted", epoch=stop.epoch)
            log.warning("interrupted; checkpoints/last.pt holds epoch %d. Resume with:\n"
                        "  segbench train trainer.resume=%s", stop.epoch, run_dir.path)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        with signals_held():
            run_dir.record_final("interrupted", epoch=_last_epoch(run_dir))
            log.warning("interrupted. Resume with:\n  segbench train trainer.resume=%s",
                        run_dir.path)
        raise SystemExit(130) from None
    except SegbenchError as err:
        run_dir.record_final("failed", epoch=_last_epoch(run_dir), error=str(err))
        raise
    except OSError as err:
        message = _os_error_message(err, run_dir, cfg, started=True)
        run_dir.record_final("failed", epoch=_last_epoch(run_dir),
                             error=message or f"{type(err).__name__}: {err}")
        if message:
            raise SegbenchError(message) from None
        raise
    except SystemExit as exit_:  # asked to exit, e.g. by submitit's requeue on preemption
        run_dir.record_final("interrupted", epoch=_last_epoch(run_dir), exit_code=exit_.code)
        log.warning("stopped by a request to exit (code %s); checkpoints/last.pt holds the last "
                    "finished epoch. A requeued job resumes from it, or resume with:\n"
                    "  segbench train trainer.resume=%s", exit_.code, run_dir.path)
        raise
    except BaseException as err:
        run_dir.record_final("failed", epoch=_last_epoch(run_dir),
                             error=f"{type(err).__name__}: {err}")
        raise
    if not result:  # ranks other than 0 of a run on several processes: rank 0 records it
        return result
    run_dir.record_final("finished", epoch=result["epochs_run"])
    log.info("run directory: %s", run_dir.path)
    return result


def _last_epoch(run_dir) -> int:
    try:
        return len(run_dir.read_history())
    except (OSError, ValueError):
        return 0


def _os_error_message(err: OSError, run_dir, cfg, started: bool) -> str | None:
    """One line for disk full, quota, permission and read-only errors: which file, what to do."""
    name = str(err.filename or "")
    cache = str(Path(str(cfg.paths.cache)).expanduser().resolve()) if "paths" in cfg else None
    if cache and name and str(Path(name).resolve()).startswith(cache):
        where = "paths.cache=<a folder on another disk> for the decoded-image cache"
    else:
        where = "hydra.run.dir=<a folder on another disk>"
    message = os_error_message(err, where)
    if message and started:
        message += f"; then resume with `segbench train trainer.resume={run_dir.path}`"
    return message


@contextlib.contextmanager
def _os_errors(run_dir, cfg, started: bool = False):
    """Known OS errors of the run's own writes as one-line SegbenchErrors."""
    try:
        yield
    except OSError as err:
        message = _os_error_message(err, run_dir, cfg, started)
        if message is None:
            raise
        raise SegbenchError(message) from None


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM stops a run as Ctrl-C does, so that it records "interrupted" wherever it lands
    (the epoch loop has its own handler, which stops at the next step)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (a launcher's worker): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
