"""Hyperparameter search with Optuna (`segbench train -m hparams_search=<preset>`).

The sweeper (hydra_plugins/segbench_optuna_sweeper, hydra-optuna-sweeper's syntax) runs each
trial as one job of the sweep: a run directory named after the trial's overrides, like any
sweep job. Its objective is a validation number of the run's metrics.json record (by default
`val_best.iou`, the best validation IoU; never a test metric). The study lives in
<sweep_dir>/optuna.db and search.json says how to read it, so re-running the same command
continues the study: finished trials are kept, an interrupted trial is run again with the same
parameters (its run directory resumes from last.pt), and only the trials still missing from
`n_trials` are asked for.

This module is the part `segbench report` and the sweeper share: the record, reading trials
back, and the command that re-runs the best trial with several seeds.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segbench import SegbenchError
from segbench.runs.rundir import write_json

RECORD = "search.json"
STUDY_FILE = "optuna.db"
EXTRA = 'pip install "segbench[optuna]"'
# Never an objective: the test split is looked at once, after every choice is made.
FORBIDDEN_OBJECTIVES = ("test",)



@dataclass(frozen=True)
class SearchSettings:
    """The keys of configs/hydra/sweeper/segbench_optuna.yaml, one field each: the sweeper's
    settings (an unknown key is a TypeError, as for any Hydra `_target_`)."""

    objective: str
    direction: str
    n_trials: int
    n_jobs: int
    sampler: Any                    # a partial (the presets' `_partial_: true`) or a sampler
    storage: str | None = None
    study_name: str | None = None
    max_failure_rate: float = 1.0
    params: Any = None

def check_objective(path: str) -> str:
    head = str(path).split(".", 1)[0]
    if head in FORBIDDEN_OBJECTIVES or "test" in str(path).split("."):
        raise SegbenchError(f"hydra.sweeper.objective={path}: a search must not select on the test "
                            "split; use a validation number, e.g. val_best.iou (the default)")
    return str(path)


def objective_value(record, path: str) -> float | None:
    """The number at dotted `path` in a run's metrics.json record; None when the run failed or
    the number is missing or not finite."""
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def require_optuna():
    try:
        import optuna  # optional extra
    except ImportError:
        raise SegbenchError(f"hparams_search needs Optuna: {EXTRA}") from None
    return optuna


def write_record(sweep_dir: Path, record: dict) -> None:
    write_json(Path(sweep_dir) / RECORD, record)


def read_record(sweep_dir: Path) -> dict | None:
    path = Path(sweep_dir) / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise SegbenchError(f"{path} is unreadable; it is truncated or corrupt") from None


def load_study(sweep_dir: Path, record: dict):
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=record["study_name"], storage=record["storage"])


def _shown(override: str) -> str:
    """An override for a shell command line: `resolution='64'` -> `resolution=64`, quoted for
    the shell where needed."""
    key, sep, value = override.partition("=")
    if len(value) > 1 and value[0] == value[-1] == "'" and value[1:-1].replace(".", "").isdigit():
        value = value[1:-1]
    return shlex.quote(f"{key}{sep}{value}")


def rerun_command(overrides: list[str], seeds: str = "0,1,2") -> str:
    """The command that trains a trial's configuration with several seeds (a plain sweep: the
    search preset is left out, so the basic sweeper runs it)."""
    kept = [o for o in overrides
            if o.split("=", 1)[0].lstrip("+~") not in ("hparams_search", "seed")
            and not o.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]
    return " ".join(["segbench train -m", *(_shown(o) for o in kept), f"seed={seeds}"])


def trials(study) -> list[dict]:
    """Every trial of a study: number, state, value, params, run directory, overrides, seconds."""
    out = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        out.append({"number": t.number, "state": t.state.name.lower(), "value": t.value,
                    "params": dict(t.params), "run_dir": t.user_attrs.get("run_dir"),
                    "overrides": list(t.user_attrs.get("overrides", [])), "seconds": seconds})
    return out


def best(study_trials: list[dict], direction: str) -> dict | None:
    done = [t for t in study_trials if t["state"] == "complete" and t["value"] is not None]
    if not done:
        return None
    return (max if direction == "maximize" else min)(done, key=lambda t: t["value"])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def summary(sweep_dir: Path) -> tuple[str, dict] | None:
    """The search section of a report: a markdown text (trials table, best configuration, the
    re-run command) and its facts; None when `sweep_dir` holds no search."""
    record = read_record(sweep_dir)
    if record is None:
        return None
    study = load_study(sweep_dir, record)
    rows = trials(study)
    top = best(rows, record.get("direction", "maximize"))
    names = sorted({k for t in rows for k in t["params"]})
    done = sum(t["state"] == "complete" for t in rows)
    lines = [f"## Search: {record['objective']} ({record.get('direction', 'maximize')})", "",
             f"Study `{record['study_name']}` in `{record['storage']}`: {done} of "
             f"{record.get('n_trials', '?')} trials complete ({len(rows)} recorded). Sampler: "
             f"{record.get('sampler', '?')}. Objective: `{record['objective']}` of each run's "
             "metrics.json (validation only; the test split never selects).", ""]
    header = ["trial", "state", record["objective"], *names, "minutes", "run"]
    table = [[str(t["number"]) + (" (best)" if top is not None and t is top else ""), t["state"],
              _fmt(t["value"]), *(_fmt(t["params"].get(n)) for n in names),
              _fmt(t["seconds"] / 60 if t["seconds"] is not None else None), t["run_dir"] or "-"]
             for t in rows]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
              *("| " + " | ".join(r) + " |" for r in table), ""]
    facts = {"trials": len(rows), "complete": done, "best": top}
    if top is not None:
        command = rerun_command(top["overrides"])
        facts["rerun"] = command
        lines += ["Best configuration: trial " + str(top["number"]) + ", "
                  + ", ".join(f"`{k}={_fmt(v)}`" for k, v in top["params"].items())
                  + f" ({record['objective']} {_fmt(top['value'])}).", "",
                  "Re-run it with three seeds (then `segbench report` on that sweep):", "",
                  f"    {command}", ""]
    return "\n".join(lines), facts
