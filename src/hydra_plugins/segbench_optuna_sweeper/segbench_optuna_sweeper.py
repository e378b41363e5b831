"""A resumable Optuna search as a Hydra sweeper, on top of hydra-optuna-sweeper.

hydra-optuna-sweeper turns the search space (`hydra.sweeper.params`, Hydra's interval/choice
syntax) into Optuna distributions and trials into job overrides; this sweeper reuses that and
adds what segbench needs (see segbench.search):

- the objective is read from each job's return value, the run's metrics.json record
  (`objective: val_best.iou`), never from the test split;
- the study is stored in <sweep_dir>/optuna.db (SQLite) with search.json beside it, and
  `n_trials` is the study's total: a re-run of the same command asks only for the missing
  trials, re-runs an interrupted trial with its own parameters (its run directory resumes), and
  reseeds the sampler with seed + trials so far (a resumed search does not repeat a trial);
- the best trial's re-run command (several seeds) is logged at the end.

Trials are whole jobs and report only their final value, so Optuna's pruners cannot stop one
early; trainer.early_stopping still ends a run that stops improving.

Nothing beyond Hydra is imported here at module level: Hydra imports every plugin module on
start-up, and segbench without its optuna extra must not warn about a missing one.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper

log = logging.getLogger("segbench.search")
# The presets' TPE models learning rate and weight decay together (multivariate), an option
# Optuna still calls experimental: say so once in the docs, not on every search.
warnings.filterwarnings("ignore", message=".*multivariate.* option is an experimental feature")


class SegbenchOptunaSweeper(Sweeper):
    def __init__(self, objective: str, direction: str, n_trials: int, n_jobs: int,
                 sampler: Any, storage: str | None = None, study_name: str | None = None,
                 max_failure_rate: float = 1.0, params: Any = None, seed: int | None = None,
                 search_space: Any = None, custom_search_space: str | None = None) -> None:
        from segbench.search import check_objective, require_optuna

        require_optuna()
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

        self.objective = check_objective(objective)
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction={direction}; use maximize or minimize")
        if int(n_trials) < 1 or int(n_jobs) < 1:
            raise ValueError("hydra.sweeper.n_trials and n_jobs must be >= 1")
        self.direction, self.n_trials, self.n_jobs = direction, int(n_trials), int(n_jobs)
        self.storage, self.study_name, self.seed = storage, study_name or "segbench", seed
        self.max_failure_rate = float(max_failure_rate)
        # The plugin's own sweeper holds the search-space logic (params, search_space,
        # custom_search_space) and turns trials into overrides.
        self.impl = OptunaSweeperImpl(sampler, direction, storage, study_name, n_trials, n_jobs,
                                      max_failure_rate, search_space, custom_search_space, params)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.config = config

    # ------------------------------------------------------------------ helpers

    def _reseed(self, n_before: int) -> None:
        """A resumed search must not draw the first trials' parameters again."""
        import numpy as np

        sampler = self.impl.sampler
        if n_before == 0 or self.seed is None:
            return
        seed = int(self.seed) + n_before
        for owner in (sampler, getattr(sampler, "_random_sampler", None)):
            if owner is not None and hasattr(owner, "_rng"):
                owner._rng = np.random.RandomState(seed)

    def _value(self, ret) -> float | None:
        from segbench.search import objective_value

        try:
            record = ret.return_value
        except Exception as err:  # the job raised: its run directory says why
            log.warning("trial failed: %s", err)
            return None
        return objective_value(record, self.objective)

    # ------------------------------------------------------------------ the search

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
        from optuna.trial import Trial, TrialState

        from segbench import search
        from segbench.progress import SWEEP

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        impl = self.impl
        impl._process_searchspace_config()
        space, fixed = create_params_from_overrides(impl._parse_sweeper_params_config() + list(arguments))
        space = {**(impl.search_space_distributions or {}), **space}
        for name in fixed:
            space.pop(name, None)

        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = self.storage or f"sqlite:///{(sweep_dir / search.STUDY_FILE).as_posix()}"
        study = optuna.create_study(study_name=self.study_name, storage=storage,
                                    sampler=impl.sampler, direction=self.direction,
                                    load_if_exists=True)
        search.write_record(sweep_dir, {
            "study_name": self.study_name, "storage": storage, "objective": self.objective,
            "direction": self.direction, "n_trials": self.n_trials,
            "sampler": type(impl.sampler).__name__ + (f" (seed {self.seed})" if self.seed is not None else ""),
            "space": {k: str(v) for k, v in space.items()}, "fixed": [f"{k}={v}" for k, v in fixed.items()]})

        recorded = study.get_trials(deepcopy=False)
        finished = [t for t in recorded if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
        interrupted = [t for t in recorded if t.state == TrialState.RUNNING]
        to_go = self.n_trials - len(finished)
        self._reseed(len(recorded))
        log.info("search: %s (%s) over %s; study %s in %s: %d of %d trials done%s",
                 self.objective, self.direction, ", ".join(space) or "nothing", self.study_name,
                 storage, len(finished), self.n_trials,
                 f", {len(interrupted)} interrupted trial(s) to run again" if interrupted and to_go > 0 else "")
        pending = [Trial(study, t._trial_id) for t in interrupted]
        SWEEP.total, SWEEP.offset = self.n_trials, len(finished)

        job_idx, failures, ran = 0, 0, 0
        while to_go > 0:
            batch = min(self.n_jobs, to_go)
            trials = pending[:batch]
            pending = pending[batch:]
            trials += [study.ask() for _ in range(batch - len(trials))]
            overrides = impl._configure_trials(trials, space, fixed)
            returns = impl.launcher.launch(overrides, initial_job_idx=job_idx)
            job_idx += len(returns)
            for trial, ret, job in zip(trials, returns, overrides):
                out_dir = ret.hydra_cfg.hydra.runtime.output_dir if ret.hydra_cfg is not None else None
                trial.set_user_attr("overrides", list(ret.overrides or job))
                if out_dir:
                    trial.set_user_attr("run_dir", _relative(Path(out_dir), sweep_dir))
                value = self._value(ret)
                if value is None:
                    failures += 1
                    study.tell(trial, state=TrialState.FAIL)
                    log.warning("trial %d failed or has no %s; it counts as failed", trial.number,
                                self.objective)
                else:
                    study.tell(trial, value)
                    log.info("trial %d: %s %.4f (best so far %.4f, trial %d)", trial.number,
                             self.objective, value, study.best_value, study.best_trial.number)
            ran += len(returns)
            to_go -= batch
            if failures / ran > self.max_failure_rate:
                raise RuntimeError(f"{failures} of {ran} trials failed (max_failure_rate="
                                   f"{self.max_failure_rate}); see their run directories")
        self._finish(study, sweep_dir)

    def _finish(self, study, sweep_dir: Path) -> None:
        from omegaconf import OmegaConf

        from segbench import search

        rows = search.trials(study)
        top = search.best(rows, self.direction)
        if top is None:
            log.warning("search: no trial completed; see the failed run directories in %s", sweep_dir)
            return
        OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": top["params"],
                                         "best_value": top["value"]}),
                       sweep_dir / "optimization_results.yaml")
        log.info("search: best trial %d, %s %.4f: %s", top["number"], self.objective, top["value"],
                 " ".join(f"{k}={v}" for k, v in top["params"].items()))
        log.info("re-run the best configuration with three seeds:\n  %s", search.rerun_command(top["overrides"]))


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)
