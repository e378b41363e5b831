"""The report's numbers: summary columns, per-case tables at the right level, comparisons with
the baseline, intervals per configuration, cross-validation summaries and the numeric axis.

Level of the statistics:
- Test cases are volumes (patients) when every finished run has per_volume.csv (LGG), else
  images (per_case.csv). A configuration's table is (runs x cases): its seeds and folds by the
  test cases all of them were scored on.
- Several runs on both sides: the two-level bootstrap over runs and cases
  (segbench.metrics.stats.hierarchical_comparison). One run on either side: the paired Wilcoxon
  test and bootstrap over cases, whose verdict says that seed-to-seed variance is not captured.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench import SegbenchError
from segbench.metrics.stats import (
    hierarchical_comparison,
    hierarchical_mean_ci,
    holm_verdicts,
    paired_comparison,
)
from segbench.report.runs import ABSENT, Configuration, make_label
from segbench.runs.rundir import PER_CASE, PER_VOLUME

LOWER_IS_BETTER = ("hd95", "assd")


@dataclass(frozen=True)
class Column:
    name: str
    paths: tuple[str, ...]      # where in metrics.json (first one present wins)
    higher_is_better: bool | None
    digits: int = 3
    scale: float = 1.0
    optional: bool = False      # shown only when some run has it
    cost: bool = False          # a cost column (parameters, FLOPs, latency, training time)
    ranked: bool = True         # bold the best: not for latency timed on a shared, busy machine
    ensembles_ranked: bool = True  # False: an ensemble's value is its members' sum, not its own


COLUMNS = (
    Column("dice", ("test.dice",), True),
    Column("iou", ("test.iou",), True),
    Column("dice_micro", ("test.dice_micro",), True),
    Column("iou_micro", ("test.iou_micro",), True),
    Column("precision", ("test.precision",), True),
    Column("recall", ("test.recall",), True),
    Column("hd95", ("test.hd95",), False, 2, optional=True),
    Column("volume_dice", ("test.volume_dice_mean",), True, optional=True),
    Column("volume_dice_median", ("test.volume_dice_median",), True, optional=True),
    Column("epochs", ("epochs_run",), None, 1, optional=True),
    Column("params_M", ("model.params",), False, 2, 1e-6, cost=True),
    Column("GFLOPs", ("model.gflops",), False, 2, optional=True, cost=True),
    Column("latency_ms", ("model.latency_ms", "latency_ms", "benchmark.latency_ms"), False, 2,
           optional=True, cost=True, ranked=False),
    Column("train_min", ("train_seconds",), False, 2, 1 / 60, cost=True, ensembles_ranked=False),
)
CV_COLUMNS = (("val_dice", "val_best.dice"), ("val_iou", "val_best.iou"))


def column_named(name: str) -> Column:
    return next((c for c in COLUMNS if c.name == name),
                Column(name, (f"test.{name}",), name not in LOWER_IS_BETTER))


def select(d, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def metric_value(metrics: dict | None, column: Column) -> float:
    for p in column.paths:
        v = select(metrics, p)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v) * column.scale
    return math.nan


def column_stats(config: Configuration, column: Column) -> tuple[float, float, int]:
    """Mean, sample std (ddof 1; NaN for one run) and count over the finished runs."""
    values = np.array([metric_value(r.metrics, column) for r in config.finished])
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan, 0
    std = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return float(values.mean()), std, int(values.size)


def class_columns(runs) -> list[Column]:
    """The test Dice of each foreground class of multi-class runs (metrics.json's `task`), in the
    order the runs name them."""
    names: dict[str, None] = {}
    for r in runs:
        task = (r.metrics or {}).get("task") or {}
        background = set(task.get("background") or [])
        names.update((n, None) for n in task.get("classes") or [] if n not in background)
    return [Column(f"dice_{n}", (f"test.dice_{n}",), True, optional=True) for n in names]


def shown_columns(configs: list[Configuration]) -> list[Column]:
    runs = [r for c in configs for r in c.finished]
    columns = [col for col in COLUMNS if not col.optional
               or any(not math.isnan(metric_value(r.metrics, col)) for r in runs)]
    first_cost = next((i for i, c in enumerate(columns) if c.cost or c.name == "epochs"),
                      len(columns))
    return columns[:first_cost] + class_columns(runs) + columns[first_cost:]


# --------------------------------------------------------------------------- per-case tables

def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def case_level(configs: list[Configuration]) -> str:
    """"volumes" when every finished run scored volumes (per_volume.csv), else "images"."""
    runs = [r for c in configs for r in c.finished]
    return "volumes" if runs and all((r.path / PER_VOLUME).is_file() for r in runs) else "images"


class CaseTables:
    """(runs x cases) tables of per-case metrics, read once per run and level."""

    def __init__(self, level: str):
        self.level = level
        self._cache: dict[tuple, list[dict]] = {}
        self.notes: list[str] = []

    def _rows(self, path: Path, level: str) -> list[dict]:
        key = (path, level)
        if key not in self._cache:
            self._cache[key] = read_rows(path / (PER_VOLUME if level == "volumes" else PER_CASE))
        return self._cache[key]

    def level_of(self, config: Configuration, metric: str) -> str:
        """The configuration's level for `metric`: volumes unless per_volume.csv lacks it."""
        if self.level == "volumes":
            rows = self._rows(config.finished[0].path, "volumes") if config.finished else []
            if rows and metric not in rows[0]:
                self.notes.append(f"{metric} is not in per_volume.csv: compared per image")
                return "images"
        return self.level

    def table(self, config: Configuration, metric: str, level: str | None = None
              ) -> tuple[list[str], np.ndarray]:
        """(case ids, (runs, cases) values) over the cases every finished run has."""
        level = level or self.level_of(config, metric)
        id_col = "volume" if level == "volumes" else "image"
        per_run = []
        for r in config.finished:
            rows = self._rows(r.path, level)
            if not rows:
                continue
            if metric not in rows[0]:
                raise SegbenchError(
                    f"{r.path / (PER_VOLUME if level == 'volumes' else PER_CASE)} has no column "
                    f"{metric!r}; report.metrics may name: "
                    + ", ".join(k for k in rows[0] if k not in ("image", "group", "volume")))
            per_run.append({row[id_col]: _float(row[metric]) for row in rows})
        if not per_run:
            return [], np.empty((0, 0))
        common = sorted(set(per_run[0]).intersection(*per_run[1:]))
        if any(len(t) != len(common) for t in per_run):
            self.notes.append(f"{config.label}: its runs were tested on different {level}; the "
                              f"tables use the {len(common)} they share")
        return common, np.array([[t[i] for i in common] for t in per_run], np.float64)


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _aligned(tables: CaseTables, a: Configuration, b: Configuration, metric: str):
    level = tables.level_of(b, metric)
    ids_a, ta = tables.table(a, metric, level)
    ids_b, tb = tables.table(b, metric, level)
    common = sorted(set(ids_a) & set(ids_b))
    pos_a, pos_b = {i: k for k, i in enumerate(ids_a)}, {i: k for k, i in enumerate(ids_b)}
    ia, ib = [pos_a[i] for i in common], [pos_b[i] for i in common]
    return level, ids_a, ids_b, common, ta[:, ia], tb[:, ib]


def compare(configs, baseline, metrics, *, alpha, n_resamples, seed, tables: CaseTables,
            notes: list[str]) -> dict:
    """{metric: {label: comparison}} of every finished configuration with the baseline."""
    out = {}
    for metric in metrics:
        higher = metric not in LOWER_IS_BETTER
        results = {}
        for c in configs:
            if c is baseline or not c.finished:
                continue
            level, ids_c, ids_b, common, tc, tb = _aligned(tables, c, baseline, metric)
            if metric == metrics[0] and (len(common) != len(ids_c) or len(common) != len(ids_b)):
                notes.append(f"{c.label}: {len(ids_c)} test {level}, baseline {len(ids_b)}; "
                             f"compared on the {len(common)} they share")
            runs = (tc.shape[0], tb.shape[0])
            if min(runs) >= 2:
                r = hierarchical_comparison(tc, tb, alpha=alpha, n_resamples=n_resamples,
                                            seed=seed, higher_is_better=higher)
                r["method"] = "bootstrap over runs and cases"
            else:
                mc = tc.mean(axis=0) if tc.size else np.array([])
                mb = tb.mean(axis=0) if tb.size else np.array([])
                r = paired_comparison(mc, mb, alpha=alpha, n_resamples=n_resamples, seed=seed,
                                      higher_is_better=higher)
                r.update(method="Wilcoxon over cases (one run)", unit=level)
            r.update(level=level, runs=runs)
            results[c.label] = r
        # The verdicts are decided here, on the Holm p printed beside them.
        holm_verdicts(list(results.values()), alpha=alpha, higher_is_better=higher)
        out[metric] = results
    return out


@dataclass
class Interval:
    low: float
    high: float
    mean: float                 # grand mean over runs and cases
    per_run: list[float]        # each run's mean over the cases
    level: str                  # images | volumes


def intervals(configs, metrics, *, alpha, n_resamples, seed, tables: CaseTables) -> dict:
    """{metric: {label: Interval}}: each finished configuration's mean per-case metric with its
    interval over runs and cases (cases only with one run)."""
    out: dict[str, dict[str, Interval]] = {}
    for metric in metrics:
        out[metric] = {}
        for c in configs:
            if not c.finished:
                continue
            level = tables.level_of(c, metric)
            _, t = tables.table(c, metric, level)
            if t.size == 0:
                out[metric][c.label] = Interval(math.nan, math.nan, math.nan, [], level)
                continue
            low, high = hierarchical_mean_ci(t, confidence=1 - alpha, n_resamples=n_resamples,
                                             seed=seed)
            out[metric][c.label] = Interval(low, high, float(np.nanmean(t)),
                                            np.nanmean(t, axis=1).tolist(), level)
    return out


# --------------------------------------------------------------------------- cross-validation

def fold_summary(config: Configuration) -> list[dict]:
    """Per fold (in order): the finished runs' seeds and their mean validation and test values."""
    by_fold: dict[str, list] = {}
    for r in config.finished:
        if r.fold is not None:
            by_fold.setdefault(r.fold, []).append(r)
    rows = []
    for fold in sorted(by_fold, key=lambda f: int(f) if f.isdigit() else 0):
        runs = by_fold[fold]
        row: dict[str, object] = {"fold": fold, "seeds": sorted(r.seed for r in runs)}
        for name, path in CV_COLUMNS:
            row[name] = _mean([_num(select(r.metrics, path)) for r in runs])
        for col in (column_named("dice"), column_named("iou"), column_named("volume_dice")):
            row[f"test_{col.name}"] = _mean([metric_value(r.metrics, col) for r in runs])
        rows.append(row)
    return rows


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _mean(values: list[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def mean_std(values: list[float]) -> tuple[float, float, int]:
    v = np.array([x for x in values if not math.isnan(x)])
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


# --------------------------------------------------------------------------- a numeric axis

@dataclass
class Axis:
    key: str                    # the resolved key (resolution.height for a resolution sweep)
    title: str                  # axis label
    values: dict[str, float]    # configuration label -> x
    series: dict[str, str]      # configuration label -> series name ("" for one series)
    log: bool


def _as_float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


AXIS_TITLES = {"dataset.train_fraction": "training-data fraction",
               "resolution.height": "resolution (px)", "optimizer.lr": "learning rate",
               "trainer.max_epochs": "epochs"}


def numeric_axis(configs: list[Configuration], label_keys: list[str]) -> Axis | None:
    """A differing key with numbers for every configuration (train_fraction, resolution, lr,
    epochs): configurations are points on a line, the other label keys name the lines."""
    done = [c for c in configs if c.finished]
    if len(done) < 2:
        return None
    keys = [k for k in label_keys if k != "resolution.width"]
    candidates = []
    for k in keys:
        xs = [_as_float(c.settings.get(k, ABSENT)) for c in done]
        if all(x is not None for x in xs) and len(set(xs)) >= 2:
            candidates.append((len(set(xs)), k))
    if not candidates:
        return None
    _, key = max(candidates, key=lambda t: (t[0], -keys.index(t[1])))
    rest = [k for k in keys if k != key]
    values = {c.label: float(c.settings[key]) for c in done}
    series = {c.label: make_label(c.settings, rest) if rest else "" for c in done}
    points = sorted(set(values.values()))
    log = points[0] > 0 and points[-1] / points[0] >= 20
    title = AXIS_TITLES.get(key, key.rsplit(".", 1)[-1])
    return Axis(key, title, values, series, log)
