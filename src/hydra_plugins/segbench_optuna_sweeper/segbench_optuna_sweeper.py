"""A resumable Optuna search as a Hydra sweeper (configs/hydra/sweeper/segbench_optuna.yaml).

It reads the search space as hydra-optuna-sweeper does (`hydra.sweeper.params` in Hydra's sweep
syntax: `interval(a,b)`, `tag(log, interval(a,b))`, `choice(...)`, `range(a,b,step)`; other
values are fixed) and turns each trial into the overrides of one job of the sweep. What segbench
adds (see segbench.runs.search):

- the objective is read from each job's return value, the run's metrics.json record
  (`objective: val_best.iou`), never from the test split;
- the study is stored in <sweep_dir>/optuna.db (SQLite) with search.json beside it, and
  `n_trials` is the study's total: a re-run of the same command asks only for the missing
  trials, re-runs an interrupted trial with its own parameters (its run directory resumes), and
  seeds the sampler with seed + trials so far (a resumed search does not repeat a trial);
- the best trial's re-run command (several seeds) is logged at the end.

Why not hydra-optuna-sweeper itself: its newest release (1.3.0) accepts only optuna 2.x, whose
SQLite storage needs SQLAlchemy 1.4, and current MLflow's server (`mlflow ui`) needs SQLAlchemy
2: the two extras could not live in one environment. This sweeper needs optuna >= 3.4 only.

Trials are whole jobs and report only their final value, so Optuna's pruners cannot stop one
early; trainer.early_stopping still ends a run that stops improving.

Nothing beyond Hydra and OmegaConf is imported at module level: Hydra imports every plugin module
on start-up, of any Hydra application in the environment. Optuna (an optional extra) loads where
it is used, so that segbench without it does not warn about a missing one; segbench's own modules
load in the methods too, so that another application's start-up does not import segbench (nor
get its environment defaults, segbench/__init__.py).
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

if TYPE_CHECKING:
    from optuna import Study
    from optuna.distributions import BaseDistribution
    from optuna.trial import Trial

log = logging.getLogger("segbench.runs.search")
# optuna < 4 calls multivariate TPE experimental; the presets use it on purpose.
warnings.filterwarnings("ignore", message=".*multivariate.* option is an experimental feature")


def distribution(override: Override) -> BaseDistribution | str:
    """An Optuna distribution for a sweep override, or the fixed value of a plain one."""
    from optuna.distributions import (  # optional extra
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value: Any = override.value()  # a ChoiceSweep, RangeSweep or IntervalSweep, told apart below
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        # Transformer.encode: each choice as its override text (a str).
        choices: list[Any] = list(override.sweep_iterator(transformer=Transformer.encode))
        return CategoricalDistribution(choices)
    if override.is_range_sweep():  # Hydra's range: stop excluded
        items: list[Any] = list(override.sweep_iterator(transformer=Transformer.identity))
        if all(isinstance(x, int) for x in items):
            return IntDistribution(items[0], items[-1], step=int(value.step))
        return FloatDistribution(float(items[0]), float(items[-1]), step=float(value.step))
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: not a sweep the Optuna search understands; use "
                     "interval(a,b), tag(log, interval(a,b)), choice(...) or range(a,b,step)")


def suggest(trial: Trial, name: str, dist: BaseDistribution) -> Any:
    """The trial's value for `name` (an interrupted trial's own value when it has one)."""
    from optuna.distributions import (  # optional extra
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise TypeError(f"unsupported distribution {dist!r}")


class SegbenchOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        # Hydra passes the YAML's keys as keyword arguments; SearchSettings names them.
        from segbench.runs.search import SearchSettings, check_objective, require_optuna

        s = SearchSettings(**settings)
        require_optuna()
        self.objective = check_objective(s.objective)
        if s.direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction={s.direction}; use maximize or minimize")
        if int(s.n_trials) < 1 or int(s.n_jobs) < 1:
            raise ValueError("hydra.sweeper.n_trials and n_jobs must be >= 1")
        self.direction = cast(Literal["maximize", "minimize"], s.direction)
        self.n_trials, self.n_jobs = int(s.n_trials), int(s.n_jobs)
        self.storage, self.study_name = s.storage, s.study_name or "segbench"
        self.max_failure_rate = float(s.max_failure_rate)
        self.sampler = s.sampler
        self.params = dict(s.params or {})

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def _sampler(self, n_before: int):
        """The sampler, seeded with seed + trials already in the study: a resumed search draws
        new trials instead of the first ones again, and draws them the same way every time."""
        if not isinstance(self.sampler, functools.partial):
            return self.sampler
        seed = self.sampler.keywords.get("seed")
        return self.sampler(seed=seed + n_before) if seed is not None else self.sampler()

    def _space(self, arguments: list[str]
               ) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
        """The searched keys' distributions and the fixed keys' values, presets' `params` first
        and the command line after them."""
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        space: dict[str, BaseDistribution] = {}
        fixed: dict[str, str] = {}
        for override in OverridesParser.create().parse_overrides(lines):
            found = distribution(override)
            name = override.get_key_element()
            if isinstance(found, str):
                fixed[name] = found
                space.pop(name, None)  # the command line fixes what a preset searches
            else:
                space[name] = found
                fixed.pop(name, None)
        return space, fixed

    def _value(self, ret: JobReturn) -> float | None:
        from segbench.runs.search import objective_value

        try:
            record = ret.return_value
        except Exception as err:  # the job raised: its run directory says why
            log.warning("trial failed: %s", err)
            return None
        return objective_value(record, self.objective)

    def sweep(self, arguments: list[str]) -> None:
        import optuna  # optional extra
        from optuna.trial import Trial, TrialState

        from segbench.progress import SWEEP
        from segbench.runs.search import STUDY_FILE

        assert self.config is not None and self.launcher is not None  # Hydra calls setup() first
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space, fixed = self._space(arguments)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = self.storage or f"sqlite:///{(sweep_dir / STUDY_FILE).as_posix()}"
        study = optuna.create_study(study_name=self.study_name, storage=storage,
                                    direction=self.direction, load_if_exists=True)
        recorded = study.get_trials(deepcopy=False)
        study.sampler = self._sampler(len(recorded))
        self._write_record(sweep_dir, study, storage, space, fixed)

        finished = [t for t in recorded if t.state.is_finished()]
        interrupted = [t for t in recorded if t.state == TrialState.RUNNING]
        to_go = self.n_trials - len(finished)
        again = (f", {len(interrupted)} interrupted trial(s) to run again"
                 if interrupted and to_go > 0 else "")
        log.info("search: %s (%s) over %s; study %s in %s: %d of %d trials done%s",
                 self.objective, self.direction, ", ".join(space) or "nothing", self.study_name,
                 storage, len(finished), self.n_trials, again)
        pending = [Trial(study, t._trial_id) for t in interrupted]
        SWEEP.total, SWEEP.offset = self.n_trials, len(finished)

        job_idx, failures = 0, 0
        while to_go > 0:
            batch = min(self.n_jobs, to_go)
            trials = pending[:batch]
            pending = pending[batch:]
            trials += [study.ask() for _ in range(batch - len(trials))]
            launched, failed = self._run_trials(study, trials, space, fixed, sweep_dir, job_idx)
            job_idx += launched
            failures += failed
            to_go -= batch
            if failures / job_idx > self.max_failure_rate:
                raise RuntimeError(f"{failures} of {job_idx} trials failed (max_failure_rate="
                                   f"{self.max_failure_rate}); see their run directories")
        self._finish(study, sweep_dir)

    def _write_record(self, sweep_dir: Path, study: Study, storage: str,
                      space: dict[str, BaseDistribution], fixed: dict[str, str]) -> None:
        """search.json: the study, its objective and the space it searches."""
        from segbench.runs.search import write_record

        seeded = (isinstance(self.sampler, functools.partial)
                  and self.sampler.keywords.get("seed") is not None)
        write_record(sweep_dir, {
            "study_name": self.study_name, "storage": storage, "objective": self.objective,
            "direction": self.direction, "n_trials": self.n_trials,
            "sampler": type(study.sampler).__name__ + (
                f" (seed {self.sampler.keywords['seed']})" if seeded else ""),
            "space": {k: repr(v) for k, v in space.items()},
            "fixed": [f"{k}={v}" for k, v in fixed.items()]})

    def _run_trials(self, study: Study, trials: list[Trial], space: dict[str, BaseDistribution],
                    fixed: dict[str, str], sweep_dir: Path, job_idx: int) -> tuple[int, int]:
        """One batch of trials, launched as jobs at once and told to the study; returns how many
        jobs the launcher ran and how many of them failed."""
        from optuna.trial import TrialState  # optional extra

        assert self.launcher is not None  # Hydra calls setup() first
        jobs = []
        for trial in trials:
            values = {name: suggest(trial, name, dist) for name, dist in space.items()}
            jobs.append(tuple(f"{k}={v}" for k, v in {**values, **fixed}.items()))
        returns = self.launcher.launch(jobs, initial_job_idx=job_idx)
        failures = 0
        for trial, ret, job in zip(trials, returns, jobs):
            trial.set_user_attr("overrides", list(ret.overrides or job))
            if ret.hydra_cfg is not None:
                out_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
                trial.set_user_attr("run_dir", _relative(out_dir, sweep_dir))
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
        return len(returns), failures

    def _finish(self, study: Study, sweep_dir: Path) -> None:
        from segbench.runs.search import best, rerun_command, trials

        rows = trials(study)
        top = best(rows, self.direction)
        if top is None:
            log.warning("search: no trial completed; see the failed run directories in %s",
                        sweep_dir)
            return
        OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": top["params"],
                                         "best_value": top["value"]}),
                       sweep_dir / "optimization_results.yaml")
        log.info("search: best trial %d, %s %.4f: %s", top["number"], self.objective, top["value"],
                 " ".join(f"{k}={v}" for k, v in top["params"].items()))
        log.info("re-run the best configuration with three seeds:\n  %s",
                 rerun_command(top["overrides"]))


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)
