"""`segbench train [overrides]`: train, validate and test one configuration (a sweep with -m).

The settings are typed and checked before the run directory is touched; the run directory then
decides whether this is a new run, a resume or a finished run to skip; the engine trains; every
way out (done, refused, failed, interrupted) leaves status.json saying which.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from segbench import SegbenchError
from segbench.cli_args import asks_for_help, has_flag, merge_overrides, override_key, quote

CONFIG = "train"
HELP = "train, validate and test one configuration (a sweep with -m)"
OWN_LOG_FILE = True  # train.log opens once the run is accepted (a refusal changes no file)

log = logging.getLogger("segbench.train")


def prepare(argv: list[str]) -> list[str]:
    """`trainer.resume=<run_dir>`: continue that run in its own directory with its own
    overrides; a multirun command line gets its deterministic sweep directory."""
    from segbench.sweeps import prepare_sweep

    if any(override_key(a) == "hparams_search" and not a.endswith(("=null", "=none")) for a in argv
           if "=" in a) and not asks_for_help(argv):
        if not has_flag(argv, "-m", "--multirun"):
            raise SegbenchError("hparams_search runs a search, one job per trial: add -m "
                                "(segbench train -m hparams_search=<preset>)")
        from segbench.search import require_optuna

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
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from segbench.commands import log_file
    from segbench.loggers import check_loggers
    from segbench.rundir import LOG, RunDir
    from segbench.settings import check_train

    hydra_cfg = HydraConfig.get()
    run_dir = RunDir(hydra_cfg.runtime.output_dir)
    try:
        settings = check_train(cfg)  # a wrong type or value stops here, before training
        check_loggers(cfg.get("logger"))  # an unknown tracker or a missing extra, too
    except SegbenchError as err:
        if not run_dir.holds_run():  # a new job of a sweep: the report lists it as failed
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
        return run_dir.read_metrics()
    if resume and plan == "start":
        log.info("starting %s (no earlier attempt to resume there)", run_dir.path)
    # Accepted: from here on the run directory is this process's.
    run_dir.write_hydra(cfg, hydra_cfg)
    run_dir.write_config(config)
    run_dir.set_status("running", pid=os.getpid())
    with log_file(run_dir / LOG):
        return _train(cfg, settings, run_dir, resuming=plan == "resume")


def _train(cfg, settings, run_dir, resuming: bool) -> dict:
    """The engine's fit, with the run's final state recorded on every way out."""
    from segbench.engine.trainer import Interrupted, fit

    try:
        result = fit(cfg, settings, run_dir, resuming)
    except Interrupted as stop:
        run_dir.set_status("interrupted", epoch=stop.epoch)
        log.warning("interrupted; checkpoints/last.pt holds epoch %d. Resume with:\n"
                    "  segbench train trainer.resume=%s", stop.epoch, run_dir.path)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        run_dir.set_status("interrupted", epoch=_last_epoch(run_dir))
        log.warning("interrupted. Resume with:\n  segbench train trainer.resume=%s", run_dir.path)
        raise SystemExit(130) from None
    except SegbenchError as err:
        run_dir.set_status("failed", epoch=_last_epoch(run_dir), error=str(err))
        raise
    except BaseException as err:
        run_dir.set_status("failed", epoch=_last_epoch(run_dir), error=f"{type(err).__name__}: {err}")
        raise
    run_dir.set_status("finished", epoch=result["epochs_run"])
    log.info("run directory: %s", run_dir.path)
    return result


def _last_epoch(run_dir) -> int:
    return len(run_dir.read_history())
