"""Which runs there are and what each one actually ran.

A run's configuration is its resolved `config.yaml` (read through `RunDir`), flattened to
`dotted.key -> value`, without bookkeeping (paths, devices, logging; `rundir.BOOKKEEPING`) and
without the keys that tell repeats apart (`seed`, `dataset.fold`). Runs with equal
configurations are pooled (their seeds and folds are replicates); runs that differ in any other
resolved key are different configurations, whatever their command lines said.

Labels: the keys that differ between configurations, shortened (`optimizer.name` -> optimizer,
`dataset.train_fraction` -> train_fraction, resolution.height x width -> resolution). Keys of
a group that differ only because the group's option differs (sgd's momentum beside
`optimizer=sgd`) stay out of the label unless they tell two configurations apart.

Preset values: when a swept group's key has a value other than its option file's (say
`experiment=quickstart` sets `optimizer.lr=0.003` for sgd, whose sgd.yaml says 0.01) and the
command line did not set it, the report says so.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from segbench import SegbenchError, config_dir
from segbench.runs.rundir import (
    CONFIG,
    ENSEMBLE,
    HISTORY,
    METRICS,
    REPLICATE_KEYS,
    STATUS,
    RunDir,
    flatten,
    load_yaml,
    read_json,
    value_text,
)

ABSENT = "-"  # a key a configuration does not have


@dataclass
class Run:
    path: Path
    settings: dict[str, str]        # the resolved config (bookkeeping left out); {} if unknown
    order: tuple
    # finished | failed | interrupted | running | killed | not started | broken
    state: str
    metrics: dict | None = None
    epochs: int = 0
    error: str | None = None
    overrides: list[str] = field(default_factory=list)  # the command line (.hydra/overrides.yaml)
    choices: dict[str, str] = field(default_factory=dict)  # Hydra's group choices
    ensemble: bool = False
    external: dict[str, dict] = field(default_factory=dict)  # external set -> its test metrics

    @property
    def seed(self) -> str:
        return self.settings.get("seed", "?")

    @property
    def fold(self) -> str | None:
        """The cross-validation fold, None without cross-validation."""
        if self.settings.get("dataset.folds", "null") in ("null", ABSENT):
            return None
        fold = self.settings.get("dataset.fold", "null")
        return None if fold == "null" else fold

    @property
    def identity(self) -> tuple:
        """The configuration: settings without seed and fold; a null key counts as absent (a
        run from before a key existed ran as if it were null)."""
        return tuple(sorted((k, v) for k, v in self.settings.items()
                            if k not in REPLICATE_KEYS and v != "null"))

    def replicate(self) -> str:
        if self.fold is not None:
            return f"fold {self.fold}, seed {self.seed}"
        return f"seed {self.seed}"


@dataclass
class Configuration:
    settings: dict[str, str]        # without seed and fold
    runs: list[Run] = field(default_factory=list)
    label: str = ""
    short: str = ""                 # the label's values only (one differing key), for figures

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.state == "finished"]

    @property
    def folds(self) -> int | None:
        value = self.settings.get("dataset.folds", "null")
        return None if value in ("null", ABSENT) else int(value)

    @property
    def is_ensemble(self) -> bool:
        return any(r.ensemble for r in self.runs)


@dataclass
class Grouping:
    configs: list[Configuration]
    varying: list[str]              # resolved keys whose values differ between configurations
    label_keys: list[str]           # the ones that name configurations
    shared: dict[str, str]          # every resolved key all configurations share
    unidentified: list[Run]         # runs without a readable config.yaml
    notes: list[str]                # preset values, pooled duplicates
    preset_keys: list[str]          # swept groups' keys set by a preset (shown per configuration)


# --------------------------------------------------------------------------- reading run dirs

def find_run_dirs(root: Path, exclude: Path | None = None) -> list[Path]:
    """Run directories below root: a resolved config.yaml with a run's records beside it, or
    a job Hydra started that failed before writing one (.hydra/overrides.yaml, status.json)."""
    found = set()
    for config in Path(root).rglob(CONFIG):
        run = config.parent
        if run.name == ".hydra":
            continue
        if any((run / n).is_file() for n in ("train.log", METRICS, STATUS)):
            found.add(run)
    for overrides in Path(root).rglob(".hydra/overrides.yaml"):
        run = overrides.parent.parent
        if (run / "train.log").is_file() or (run / STATUS).is_file():
            found.add(run)
    if exclude is not None:
        found = {p for p in found if p != exclude and exclude not in p.parents}
    return sorted(found)


def _read_yaml_list(path: Path) -> list[str]:
    try:
        return [str(o) for o in load_yaml(path)] if path.is_file() else []
    except Exception:  # a truncated file: the run is listed, its command line is not
        return []


def load_run(path: Path) -> Run:
    run_dir = RunDir(path)
    settings: dict[str, str] = {}
    if (path / CONFIG).is_file():
        try:
            settings = run_dir.settings()
        except SegbenchError:
            settings = {}
    num, choices = None, {}
    hydra_yaml = path / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        try:
            h = load_yaml(hydra_yaml)  # a run's file: size and aliases checked first
            num = OmegaConf.select(h, "hydra.job.num")
            raw = OmegaConf.select(h, "hydra.runtime.choices") or {}
            choices = {str(k): str(v) for k, v in raw.items() if v is not None}
        except Exception:
            pass
    run = Run(path, settings, (num if isinstance(num, int) else 1 << 30, str(path)), "not started",
              overrides=_read_yaml_list(path / ".hydra" / "overrides.yaml"), choices=choices,
              ensemble=(path / ENSEMBLE).is_file())
    try:
        run.epochs = len(run_dir.read_history()) if (path / HISTORY).is_file() else 0
        metrics = run_dir.read_metrics()
    except Exception as err:  # a truncated record: list the run as broken and go on
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        fix = (f" (`segbench train trainer.resume={path}` tests its best.pt again)"
               if run_dir.has_checkpoint("last") else "")
        run.state, run.error = "broken", f"unreadable{fix}: {text}"  # the fix first: tables cut it
        return run
    run.external = external_results(path)
    state = run_dir.state()  # a "running" run whose process is gone is "killed"
    if metrics and "test" in metrics:
        run.state, run.metrics = "finished", metrics
        run.epochs = int(metrics.get("epochs_run") or run.epochs)
    elif state == "finished":
        run.state, run.error = "failed", "metrics.json holds no test metrics"
    else:
        run.state = state
        if state == "failed":
            run.error = run_dir.status().get("error")
    return run


def external_results(path: Path) -> dict[str, dict]:
    """The run's evaluations on external sets (`segbench eval ... dataset=<name>
    dataset.root=<dir>`, in <run>/eval/<time>/metrics.json): set name -> its test metrics, the
    latest evaluation of each set (its dataset, folder and fingerprint name it)."""
    out: dict[str, dict] = {}
    for record in sorted((path / "eval").glob(f"*/{METRICS}")):
        try:
            doc = read_json(record)
        except SegbenchError:
            continue  # a cut record of one evaluation: the others still count
        about = doc.get("external")
        if about and isinstance(doc.get("test"), dict):
            name = f"{Path(str(about.get('root'))).name} ({about.get('fingerprint', '?')[:8]})"
            out[name] = doc["test"]
    return out


# --------------------------------------------------------------------------- configurations

def _group(key: str) -> str:
    return key.split(".", 1)[0]


def _is_name(key: str) -> bool:
    return key.count(".") == 1 and key.endswith(".name")


def _command_line_rank(key: str, runs: list[Run]) -> int:
    """Where a key (or its group's choice) first appears on the runs' command lines: labels
    follow the order the sweep was typed in; keys no command line named come after."""
    for r in runs:
        names = [o.split("=", 1)[0].lstrip("+~") for o in r.overrides if "=" in o]
        for i, name in enumerate(names):
            if name == key or (name == _group(key) and "." not in name):
                return i
    return 1 << 20


def choose_label_keys(configs: list[Configuration], varying: list[str]) -> list[str]:
    """The differing keys that name configurations: a group's `name` stands for the keys of
    that group that only follow it; those join the label only to tell configurations apart."""
    named = {_group(k) for k in varying if _is_name(k)}
    primary = [k for k in varying if _group(k) not in named or _is_name(k)]
    keys = list(primary)

    def distinct(ks):
        return len({tuple(c.settings.get(k, ABSENT) for k in ks) for c in configs})

    for k in varying:
        if k in keys:
            continue
        if distinct(keys) == len(configs):
            break
        if distinct(keys + [k]) > distinct(keys):
            keys.append(k)
    return [k for k in varying if k in keys]


def short_key(key: str, keys: list[str]) -> str:
    if _is_name(key):
        return _group(key)
    last = key.rsplit(".", 1)[-1]
    clash = sum(1 for k in keys if k.rsplit(".", 1)[-1] == last and not _is_name(k)) > 1
    return key if clash or last in {_group(k) for k in keys if _is_name(k)} else last


def label_parts(settings: dict[str, str], keys: list[str]) -> list[tuple[str, str]]:
    """(short key, value) pairs naming a configuration; height and width of `resolution` as one."""
    parts, done = [], set()
    keys = sorted(keys, key=lambda k: _group(k) != "ensemble")  # "ensemble of 3" first
    for k in keys:
        if k in done:
            continue
        value = settings.get(k, ABSENT)
        if _group(k) == "ensemble":
            members = settings.get("ensemble.members", ABSENT)
            parts.append(("", "single model" if members == ABSENT else f"ensemble of {members}"))
            done |= {x for x in keys if _group(x) == "ensemble"}
            continue
        if k in ("resolution.height", "resolution.width"):
            h = settings.get("resolution.height", ABSENT)
            w = settings.get("resolution.width", ABSENT)
            parts.append(("resolution", h if h == w else f"{h}x{w}"))
            done |= {"resolution.height", "resolution.width"}
            continue
        parts.append((short_key(k, keys), value))
        done.add(k)
    return parts


def make_label(settings: dict[str, str], keys: list[str]) -> str:
    parts = label_parts(settings, keys)
    return ", ".join(f"{k}={v}" if k else v for k, v in parts) or "all runs"


def group_runs(runs: list[Run]) -> Grouping:
    """Configurations in run order, their differing and shared resolved keys, and labels."""
    runs = sorted(runs, key=lambda r: r.order)
    identified = [r for r in runs if r.settings]
    groups: dict[tuple, Configuration] = {}
    for r in identified:
        c = groups.setdefault(r.identity, Configuration(
            {k: v for k, v in r.settings.items() if k not in REPLICATE_KEYS}))
        c.runs.append(r)
    configs = list(groups.values())
    keys = list(dict.fromkeys(k for c in configs for k in c.settings))
    varying = [k for k in keys if len({c.settings.get(k, "null") for c in configs}) > 1]
    varying.sort(key=lambda k: (_command_line_rank(k, identified), keys.index(k)))
    shared = {k: configs[0].settings.get(k, "null") for k in keys if k not in varying}
    label_keys = choose_label_keys(configs, varying)
    for c in configs:
        c.label = make_label(c.settings, label_keys)
        parts = label_parts(c.settings, label_keys)
        c.short = parts[0][1] if len(parts) == 1 else c.label
    notes, preset_keys = preset_notes(configs, varying)
    for c in configs:
        seen = Counter((r.fold, r.seed) for r in c.runs)
        for (fold, seed), n in seen.items():
            if n > 1:
                where = ", ".join(str(r.path) for r in c.runs if (r.fold, r.seed) == (fold, seed))
                notes.append(f"{c.label}: {n} runs of "
                             + (f"fold {fold}, " if fold is not None else "") + f"seed {seed} "
                             f"({where}) are pooled as separate runs; remove the copies if they "
                             "are re-runs of one job")
    return Grouping(configs, varying, label_keys, shared,
                    [r for r in runs if not r.settings], notes, preset_keys)


# --------------------------------------------------------------------------- preset values

@functools.lru_cache(maxsize=256)
def option_defaults(group: str, option: str) -> dict[str, str] | None:
    """The values an option file of segbench's config tree sets (configs/<group>/<option>.yaml),
    None when there is no such file (a user's own config directory)."""
    path = config_dir() / group / f"{option}.yaml"
    if not path.is_file():
        return None
    try:
        doc = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:
        return None
    if not isinstance(doc, dict):
        return None
    doc.pop("defaults", None)
    return {f"{group}.{k}": value_text(v) for k, v in flatten(doc).items()
            if not (isinstance(v, str) and "${" in v)}


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except ValueError:
        return False


def preset_notes(configs: list[Configuration], varying: list[str]) -> tuple[list[str], list[str]]:
    """Notes on swept groups whose keys a preset set away from the option files' values, and
    those keys."""
    swept = {_group(k) for k in varying if _is_name(k)}
    found: dict[str, dict] = {}
    for c in configs:
        for r in c.runs:
            if not r.choices:
                continue
            given = {o.split("=", 1)[0].lstrip("+~") for o in r.overrides if "=" in o}
            for group in sorted(swept):
                option = r.choices.get(group)
                defaults = option_defaults(group, option) if option else None
                if not defaults:
                    continue
                for key, default in defaults.items():
                    actual = r.settings.get(key)
                    if actual is None or _same(actual, default) or key in given:
                        continue
                    entry = found.setdefault(key, {"options": {}, "actual": {}, "by": set()})
                    entry["options"][option] = default
                    entry["actual"].setdefault(c.label, actual)
                    preset = r.choices.get("experiment")
                    entry["by"].add(f"experiment={preset}" if preset else "another config file")
    notes = []
    for key, e in found.items():
        ran = sorted(set(e["actual"].values()))
        where = (f"is {ran[0]} in every configuration" if len(ran) == 1 and
                 len(e["actual"]) == len(configs) else
                 "is " + ", ".join(f"{v} for {lbl}" for lbl, v in e["actual"].items()))
        options = ", ".join(f"{o} {v}" for o, v in sorted(e["options"].items()))
        notes.append(f"`{key}` {where}, set by {' and '.join(sorted(e['by']))}; the option files "
                     f"say {options}. The swept options ran with the preset's value, not their "
                     "own.")
    return notes, list(found)


# --------------------------------------------------------------------------- the baseline

def pick_baseline(configs: list[Configuration], spec: str | None) -> Configuration:
    """`report.baseline`: a configuration's label, or settings it has (`optimizer=adam`,
    `optimizer.lr=0.001`; short or full keys)."""
    candidates = [c for c in configs if c.finished]
    if not candidates:
        runs = [r for c in configs for r in c.runs]
        states = Counter(r.state for r in runs)
        why = ", ".join(f"{n} {state}" for state, n in states.most_common())
        first = next((r for r in runs if r.error), None)
        detail = f"; {first.path}: {first.error}" if first else ""
        raise SegbenchError(f"no configuration has a finished run: nothing to report yet "
                            f"({len(runs)} run(s): {why}{detail})")
    if spec is None or str(spec).strip() == "":
        return candidates[0]
    spec = str(spec).strip()
    compact = spec.replace(" ", "")
    exact = [c for c in candidates if c.label.replace(" ", "") == compact]
    if exact:
        return exact[0]
    pairs = [p for p in compact.replace(",", " ").split() if p]
    matches = []
    if pairs and all("=" in p for p in pairs):
        wanted = [(p.split("=", 1)[0].lstrip("+~"), p.split("=", 1)[1].strip("'\"")) for p in pairs]
        matches = [c for c in candidates if all(_has(c, k, v) for k, v in wanted)]
    if len(matches) == 1:
        return matches[0]
    labels = "; ".join(c.label for c in candidates)
    if not matches:
        raise SegbenchError(f"report.baseline={spec!r} matches no configuration with a finished "
                            f"run; use one of: {labels}")
    raise SegbenchError(f"report.baseline={spec!r} matches {len(matches)} configurations; add "
                        f"settings to pick one of: {'; '.join(c.label for c in matches)}")


def _has(c: Configuration, key: str, value: str) -> bool:
    if key == "resolution":
        h, w = c.settings.get("resolution.height"), c.settings.get("resolution.width")
        return value in (f"{h}x{w}",) + ((h,) if h == w else ())
    if f"{key}.name" in c.settings:  # `optimizer=adam`: a group's option
        return _same(c.settings[f"{key}.name"], value)
    if key in c.settings:
        return _same(c.settings[key], value)
    ends = [k for k in c.settings if k.endswith(f".{key}")]
    return len(ends) == 1 and _same(c.settings[ends[0]], value)
