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
from pathlib import Path

from segbench import SegbenchError
from segbench.cli_args import has_flag, merge_overrides, override_key, quote

CONFIG = "train"
HELP = "train, validate and test one configuration (a sweep with -m)"
OWN_LOG_FILE = True  # train.log opens once the run is accepted (a refusal changes no file)

log = logging.getLogger("segbench.train")


def prepare(argv: list[str]) -> list[str]:
    """`trainer.resume=<run_dir>`: continue that run in its own directory with its own
    overrides; a multirun command line gets its deterministic sweep directory."""
    from segbench.sweeps import prepare_sweep

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
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            raise SegbenchError(f"cannot resume from {run_dir}: it is not a segbench run directory "
                                f"({overrides_file} is missing)")
        from omegaconf import OmegaConf

        old = [o for o in OmegaConf.to_container(OmegaConf.load(overrides_file))
               if override_key(o) not in ("trainer.resume", "hydra.run.dir")]
        new = argv[:i] + argv[i + 1:]
        return merge_overrides(old, new) + ["trainer.resume=true",
                                            quote("hydra.run.dir", str(run_dir.resolve()))]
    return prepare_sweep(argv)


def run(cfg) -> dict | None:
    from hydra.core.hydra_config import HydraConfig

    from segbench.rundir import RunDir

    hydra_cfg = HydraConfig.get()
    run_dir = RunDir(hydra_cfg.runtime.output_dir)
    if os.environ.get("RANK", "0") != "0":  # a secondary process of a distributed run
        return _run(cfg, hydra_cfg, run_dir)
    with run_dir.lock():  # one writer per run directory: a second trainer is refused here
        return _run(cfg, hydra_cfg, run_dir)


def _run(cfg, hydra_cfg, run_dir) -> dict | None:
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from segbench.commands import log_file
    from segbench.rundir import LOG, running_status
    from segbench.settings import check_train

    try:
        settings = check_train(cfg)  # a wrong type or value stops here, before training
    except SegbenchError as err:
        if not run_dir.holds_run():  # a new job of a sweep: the report lists it as failed
            with contextlib.suppress(OSError):  # the setting's error is the one to show
                run_dir.write_hydra(cfg, hydra_cfg)
                run_dir.set_status("failed", error=str(err))
        raise
    resume = settings.trainer.resume
    if resume == "auto":  # a sweep re-run skips its finished jobs and resumes its interrupted ones
        resume = hydra_cfg.mode == RunMode.MULTIRUN
    if resume not in (True, False, None):
        raise SegbenchError(f"trainer.resume={resume!r}; use true, false, auto or a run directory")
    config = OmegaConf.to_container(cfg, resolve=True)
    plan = run_dir.plan(bool(resume), config)
    if plan == "skip":
        log.info("skipping %s: this run already finished (metrics.json is there)", run_dir.path)
        metrics = run_dir.read_metrics()
        if run_dir.status().get("state") != "finished":  # killed between metrics.json and status
            run_dir.record_final("finished", epoch=metrics.get("epochs_run"))
        return metrics
    if resume and plan == "start":
        log.info("starting %s (no earlier attempt to resume there)", run_dir.path)
    if plan == "resume":  # the data must be what the run was split from; nothing written yet
        from segbench.data.pinning import recorded_splits

        recorded_splits(cfg, run_dir.read_split(), where=f"run {run_dir.path}", quiet=True)
    if plan == "resume" and run_dir.status().get("state") == "running":  # and we hold the lock
        log.info("the previous attempt in %s was killed (status.json still said running)",
                 run_dir.path)
    # Accepted: from here on the run directory is this process's (it holds the lock).
    with _os_errors(run_dir, cfg, started=plan == "resume"):
        run_dir.remove_stale_temporaries()
        run_dir.write_hydra(cfg, hydra_cfg)
        run_dir.write_config(config)
        run_dir.set_status("running", **running_status())
        with log_file(run_dir / LOG):
            return _train(cfg, settings, run_dir, resuming=plan == "resume")


def _train(cfg, settings, run_dir, resuming: bool) -> dict:
    """The engine's fit, with the run's final state recorded on every way out."""
    from segbench.engine.trainer import Interrupted, fit
    from segbench.rundir import signals_held

    try:
        with _sigterm_interrupts():
            result = fit(cfg, settings, run_dir, resuming)
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
    except BaseException as err:
        run_dir.record_final("failed", epoch=_last_epoch(run_dir), error=f"{type(err).__name__}: {err}")
        raise
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
    from segbench.atomic import os_error_message

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
