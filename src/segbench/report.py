"""`segbench report <dir>`: every training run below a folder, as tables, figures and statistics.

Reads run directories only (config.yaml, .hydra/, metrics.json, per_case.csv, history.csv,
status.json, predictions.npz) and writes <dir>/report/: report.md, report.csv, metrics.png,
curves.png, predictions.png.

- A configuration is a run's settings without its seed: the config-group choices Hydra recorded
  (.hydra/hydra.yaml) plus the values it overrode. Settings that differ between configurations
  name them (table columns); the rest are shared and go in the header.
- Runs of one configuration (seeds) give mean ± sample std (n = finished seeds).
- Each configuration is compared with the baseline on the same test images (per_case.csv joined
  on `image`; per image, the mean over seeds): see segbench.stats.
- Finished: metrics.json with test metrics. Anything else is listed as failed or incomplete.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from segbench import SegbenchError
from segbench.rundir import RunDir
from segbench.stats import bootstrap_mean_ci, holm, paired_comparison

log = logging.getLogger(__name__)

# Settings that never make two runs different configurations.
IGNORED = ("seed", "trainer.resume", "trainer.device", "trainer.num_workers", "trainer.progress_bar",
           "trainer.log_every_steps", "paths.", "eval.num_predictions", "hydra")


@dataclass(frozen=True)
class Column:
    name: str
    paths: tuple[str, ...]      # where in metrics.json (first one present wins)
    higher_is_better: bool | None
    digits: int = 3
    scale: float = 1.0
    optional: bool = False      # shown only when some run has it


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
    Column("epochs", ("epochs_run",), None, 1),
    Column("train_min", ("train_seconds",), False, 2, 1 / 60),
    Column("params_M", ("model.params",), False, 2, 1e-6),
    Column("latency_ms", ("model.latency_ms", "latency_ms", "benchmark.latency_ms"), False, 2,
           optional=True),
)
CURVE_KEYS = ("val_dice", "val_iou", "val_loss", "train_loss")


@dataclass
class Run:
    path: Path
    settings: dict[str, str]
    order: tuple
    state: str                  # finished | failed | interrupted | running | killed | not started | broken
    metrics: dict | None = None
    epochs: int = 0
    error: str | None = None
    seed: str = "?"
    overridden: list[str] = field(default_factory=list)  # keys in the order the command gave them


@dataclass
class Configuration:
    settings: dict[str, str]
    runs: list[Run] = field(default_factory=list)
    label: str = ""

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.state == "finished"]


# --------------------------------------------------------------------------- reading run dirs

def find_run_dirs(root: Path) -> list[Path]:
    """Training run directories below root: Hydra's .hydra/ beside a run's own files."""
    found = []
    for overrides in Path(root).rglob(".hydra/overrides.yaml"):
        run = overrides.parent.parent
        if (run / "train.log").is_file() or (run / "config.yaml").is_file():
            found.append(run)
    return sorted(found)


def _ignored(key: str) -> bool:
    return key.startswith(IGNORED) or key.startswith("hydra/")


def _value(line: str) -> str:
    return line.split("=", 1)[1].replace("'", "").replace('"', "") if "=" in line else ""


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _select(d: dict | None, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def load_run(path: Path) -> Run:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_yaml = OmegaConf.load(path / ".hydra" / "hydra.yaml") if (path / ".hydra" / "hydra.yaml").is_file() else None
    settings: dict[str, str] = {}
    num = None
    if hydra_yaml is not None:
        choices = OmegaConf.select(hydra_yaml, "hydra.runtime.choices") or {}
        settings.update({k: str(v) for k, v in choices.items() if v is not None and not _ignored(k)})
        num = OmegaConf.select(hydra_yaml, "hydra.job.num")
    lines = [str(o) for o in OmegaConf.load(path / ".hydra" / "overrides.yaml")]
    seed, overridden = "0", []
    for o in OverridesParser.create().parse_overrides(lines):
        key = o.key_or_group
        if key == "seed":
            seed = _value(o.input_line)
        if not o.is_hydra_override() and not _ignored(key):
            settings[key] = _value(o.input_line)
            overridden.append(key)
    run = Run(path, settings, (num if isinstance(num, int) else 1 << 30, str(path)), "not started",
              seed=seed, overridden=overridden)
    run_dir = RunDir(path)
    run.epochs = len(_read_csv(path / "history.csv"))
    run.state = run_dir.state()  # a "running" run whose process is gone is "killed"
    metrics = run_dir.read_metrics()  # a SegbenchError where unreadable: the run is broken
    if metrics and "test" in metrics:
        run.state, run.metrics = "finished", metrics
        run.epochs = int(metrics.get("epochs_run", run.epochs))
    elif run.state == "finished":
        run.state, run.error = "failed", "metrics.json holds no test metrics"
    elif run.state == "failed":
        run.error = run_dir.status().get("error")
    return run


def load_run_or_broken(path: Path) -> Run:
    """A run, or one listed as "broken" (with what cannot be read) so the report goes on."""
    try:
        return load_run(path)
    except Exception as err:  # truncated JSON, YAML or CSV: whatever its parser raises
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return Run(path, {}, (1 << 30, str(path)), "broken", error=f"unreadable: {text}")


@functools.lru_cache(maxsize=256)
def _resolved_config(path: Path):
    return OmegaConf.load(path) if path.is_file() else None


def _config_value(run: Run, key: str) -> str:
    config = _resolved_config(run.path / "config.yaml")
    value = OmegaConf.select(config, key.lstrip("+~"), default=None) if config is not None else None
    return "-" if value is None else str(value)


def group_runs(runs: list[Run]) -> tuple[list[Configuration], list[str], dict[str, str]]:
    """Configurations in sweep order, the keys that tell them apart, and the shared settings."""
    runs = sorted(runs, key=lambda r: r.order)
    # Overridden keys in the order the sweep gave them, then the config-group choices.
    keys = list(dict.fromkeys([k for r in runs for k in r.overridden]
                              + sorted({k for r in runs for k in r.settings})))
    for r in runs:  # a key set by some runs only: the others ran with their config's value
        for k in keys:
            if k not in r.settings:
                r.settings[k] = _config_value(r, k)
    groups: dict[tuple, Configuration] = {}
    for r in runs:
        key = tuple(r.settings[k] for k in keys)
        groups.setdefault(key, Configuration({k: r.settings[k] for k in keys})).runs.append(r)
    configs = list(groups.values())
    varying = [k for k in keys if len({c.settings[k] for c in configs}) > 1]
    shared = {k: configs[0].settings[k] for k in keys if k not in varying} if configs else {}
    for c in configs:
        c.label = ", ".join(f"{k}={c.settings[k]}" for k in varying) or "all runs"
    return configs, varying, shared


def pick_baseline(configs: list[Configuration], spec: str | None) -> Configuration:
    """`report.baseline`: a configuration's label or overrides it has (`optimizer=adam`)."""
    candidates = [c for c in configs if c.finished]
    if not candidates:
        raise SegbenchError("no configuration has a finished run: nothing to report yet")
    if spec is None or str(spec).strip() == "":
        return candidates[0]
    spec = str(spec).strip()
    compact = spec.replace(" ", "")
    exact = [c for c in candidates if c.label.replace(" ", "") == compact]
    if exact:
        return exact[0]
    pairs = [p for p in compact.replace(",", " ").split() if p]
    if not all("=" in p for p in pairs):
        pairs = None
    matches = []
    if pairs:
        wanted = {p.split("=", 1)[0].lstrip("+~"): _value(p) for p in pairs}
        matches = [c for c in candidates
                   if all(c.settings.get(k, c.settings.get(f"+{k}")) == v for k, v in wanted.items())]
    if len(matches) == 1:
        return matches[0]
    labels = "; ".join(c.label for c in candidates)
    if not matches:
        raise SegbenchError(f"report.baseline={spec!r} matches no configuration with a finished "
                            f"run; use one of: {labels}")
    raise SegbenchError(f"report.baseline={spec!r} matches {len(matches)} configurations; add "
                        f"settings to pick one of: {'; '.join(c.label for c in matches)}")


# --------------------------------------------------------------------------- numbers

def _metric(metrics: dict, column: Column) -> float:
    for p in column.paths:
        v = _select(metrics, p)
        if isinstance(v, (int, float)) and v is not None:
            return float(v) * column.scale
    return math.nan


def column_stats(config: Configuration, column: Column) -> tuple[float, float, int]:
    """Mean, sample std (ddof 1; NaN for one run) and count over the finished seeds."""
    values = np.array([_metric(r.metrics, column) for r in config.finished])
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan, 0
    std = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return float(values.mean()), std, int(values.size)


def per_image(config: Configuration, metric: str, warnings: list[str]) -> dict[str, float]:
    """Per test image, the configuration's metric averaged over its finished seeds."""
    tables = []
    for r in config.finished:
        rows = _read_csv(r.path / "per_case.csv")
        if rows and metric not in rows[0]:
            raise SegbenchError(f"{r.path / 'per_case.csv'} has no column {metric!r}; "
                                f"report.metrics may name: {', '.join(k for k in rows[0] if k != 'image')}")
        if rows:
            tables.append({row["image"]: float(row[metric]) for row in rows})
    if not tables:
        return {}
    common = set(tables[0]).intersection(*tables[1:])
    if any(len(t) != len(common) for t in tables):
        warnings.append(f"{config.label}: its seeds were tested on different images; "
                        f"per-image means use the {len(common)} they share")
    return {i: float(np.mean([t[i] for t in tables])) for i in sorted(common)}


def compare(configs, baseline, metrics, alpha, n_resamples, seed, warnings):
    """{metric: {label: comparison dict}} for every configuration against the baseline."""
    out = {}
    for metric in metrics:
        higher = metric not in ("hd95", "assd")
        base = per_image(baseline, metric, warnings)
        results = {}
        for c in configs:
            if c is baseline or not c.finished:
                continue
            values = per_image(c, metric, warnings)
            common = sorted(set(values) & set(base))
            if metric == metrics[0] and (len(common) != len(values) or len(common) != len(base)):
                warnings.append(f"{c.label}: {len(values)} test images, baseline {len(base)}; "
                                f"compared on the {len(common)} they share")
            results[c.label] = paired_comparison(
                [values[i] for i in common], [base[i] for i in common], alpha=alpha,
                n_resamples=n_resamples, seed=seed, higher_is_better=higher)
        labels = list(results)
        for label, p in zip(labels, holm([results[k]["p_value"] for k in labels])):
            results[label]["p_holm"] = p
        out[metric] = results
    return out


# --------------------------------------------------------------------------- formatting

def _fmt(v: float, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _best(values: list[float], higher: bool | None) -> float | None:
    ok = [v for v in values if not math.isnan(v)]
    if higher is None or len(set(ok)) < 2:  # nothing to rank when all are equal
        return None
    return max(ok) if higher else min(ok)


# --------------------------------------------------------------------------- figures

def _short(label: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(label, width)) or label


def plot_metric_bars(configs, baseline, metrics, cis, path: Path) -> None:
    from matplotlib.figure import Figure

    shown = [c for c in configs if c.finished]
    fig = Figure(figsize=(5.5 * len(metrics), 0.55 * len(shown) + 1.6))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    y = np.arange(len(shown))
    for ax, metric in zip(axes[0], metrics):
        column = next((col for col in COLUMNS if col.name == metric), Column(metric, (f"test.{metric}",), True))
        means = [column_stats(c, column)[0] for c in shown]
        lows = [cis[metric][c.label][0] for c in shown]
        highs = [cis[metric][c.label][1] for c in shown]
        err = np.array([[max(0.0, m - lo) if not math.isnan(lo) else 0 for m, lo in zip(means, lows)],
                        [max(0.0, hi - m) if not math.isnan(hi) else 0 for m, hi in zip(means, highs)]])
        colours = ["#d98c2b" if c is baseline else "#4c78a8" for c in shown]
        ax.barh(y, means, xerr=err, color=colours, capsize=3, alpha=0.9)
        for row, c in enumerate(shown):  # each seed's own test value
            seeds = [_metric(r.metrics, column) for r in c.finished]
            ax.plot(seeds, [row] * len(seeds), "k.", ms=4)
        ax.set_yticks(y, [_short(c.label) for c in shown], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"test {metric} (bar: mean over seeds; line: 95% CI over images; dots: seeds)",
                      fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_curves(configs, path: Path) -> bool:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    histories = {c.label: [_read_csv(r.path / "history.csv") for r in c.runs] for c in configs}
    keys = [k for k in CURVE_KEYS if any(h and k in h[0] for hs in histories.values() for h in hs)]
    if not keys:
        return False
    fig = Figure(figsize=(4.6 * len(keys), 3.8))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, hs in histories.items():
            by_epoch = defaultdict(list)
            for h in hs:
                for row in h:
                    if row.get(key) not in (None, ""):
                        by_epoch[int(row["epoch"])].append(float(row[key]))
            if not by_epoch:
                continue
            epochs = sorted(by_epoch)
            mean = [np.mean(by_epoch[e]) for e in epochs]
            line, = ax.plot(epochs, mean, marker="." if len(epochs) < 30 else None, lw=1.4,
                            label=_short(label, 40))
            if any(len(by_epoch[e]) > 1 for e in epochs):
                ax.fill_between(epochs, [min(by_epoch[e]) for e in epochs],
                                [max(by_epoch[e]) for e in epochs], color=line.get_color(), alpha=0.15)
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("mean over seeds (band: min to max)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def _load_samples(config: Configuration):
    for r in sorted(config.finished, key=lambda r: r.seed):
        f = r.path / "predictions.npz"
        if f.is_file():
            with np.load(f) as z:
                return {k: z[k] for k in z.files}
    return None


def plot_prediction_grid(configs, path: Path, max_rows: int) -> bool:
    """The same test images across configurations: image, ground truth, then each configuration's
    prediction over the image (true positives green, false positives red, false negatives blue)."""
    from matplotlib.figure import Figure

    from segbench.viz import overlay

    samples = [(c, s) for c in configs if c.finished and (s := _load_samples(c)) is not None]
    if not samples:
        return False
    index = [{str(i): k for k, i in enumerate(s["ids"])} for _, s in samples]
    common = [i for i in index[0] if all(i in ix for ix in index)][:max_rows]
    if not common:
        return False
    cols = 2 + len(samples)
    fig = Figure(figsize=(2.2 * cols, 2.2 * len(common) + 0.5))
    axes = fig.subplots(len(common), cols, squeeze=False)
    for row, image_id in enumerate(common):
        first, k = samples[0][1], index[0][image_id]
        image = first["images"][k]
        panels = [(image[..., 0] if image.shape[-1] == 1 else image, "image", ""),
                  (first["masks"][k], "ground truth", "")]
        for (c, s), ix in zip(samples, index, strict=True):
            j = ix[image_id]
            pred = (s["probs"][j] >= round(float(s["threshold"]) * 255)).astype(np.uint8)
            panels.append((overlay(s["images"][j], s["masks"][j], pred), _short(c.label, 24),
                           f"Dice {float(s['dice'][j]):.3f}"))
        for col, (panel, title, note) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=7)
            ax.set_xlabel(note, fontsize=7)
        axes[row, 0].set_ylabel(image_id, fontsize=7)
    fig.suptitle("test images across configurations (TP green, FP red, FN blue; Dice at full size)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


# --------------------------------------------------------------------------- the report

def axis_tables(configs, baseline, varying, primary, comparisons) -> str:
    """One table per axis when every configuration differs from the baseline in one setting;
    a grid of means when two axes are fully crossed."""
    done = [c for c in configs if c.finished]
    if len(varying) < 2 or len(done) < 2:
        return ""
    column = next(col for col in COLUMNS if col.name == primary) if primary in {c.name for c in COLUMNS} \
        else Column(primary, (f"test.{primary}",), True)
    diffs = {c.label: [k for k in varying if c.settings[k] != baseline.settings[k]] for c in done}
    out = []
    if all(len(d) <= 1 for d in diffs.values()):
        out.append(f"Every configuration changes one setting of the baseline ({baseline.label}); "
                   f"test {primary} per axis:\n")
        for axis in varying:
            rows = []
            for c in done:
                if c is baseline or diffs[c.label] == [axis]:
                    mean, std, n = column_stats(c, column)
                    comp = comparisons.get(primary, {}).get(c.label)
                    rows.append([c.settings[axis] + (" (baseline)" if c is baseline else ""),
                                 f"{_fmt(mean)} ± {_fmt(std)}", str(n),
                                 _fmt(comp["mean_diff"]) if comp else "-",
                                 _p(comp["p_value"]) if comp else "-"])
            out.append(f"**{axis}**\n\n" + _md_table([axis, primary, "n", "Δ vs baseline", "p"], rows) + "\n")
    elif len(varying) == 2:
        a, b = varying
        values_a = list(dict.fromkeys(c.settings[a] for c in done))
        values_b = list(dict.fromkeys(c.settings[b] for c in done))
        cell = {(c.settings[a], c.settings[b]): column_stats(c, column)[0] for c in done}
        if len(cell) == len(values_a) * len(values_b):
            rows = [[va, *(_fmt(cell[(va, vb)]) for vb in values_b)] for va in values_a]
            out.append(f"Test {primary} (mean over seeds), {a} down, {b} across:\n\n"
                       + _md_table([f"{a} \\ {b}", *values_b], rows) + "\n")
    return "\n".join(out)


def build_report(root: Path, out_dir: Path, *, baseline: str | None = None,
                 metrics: tuple[str, ...] = ("dice", "iou"), alpha: float = 0.05,
                 n_resamples: int = 10_000, seed: int = 0, max_predictions: int = 6) -> dict:
    root = Path(root)
    if not root.is_dir():
        raise SegbenchError(f"{root} is not a folder; pass a sweep directory or a parent of run directories")
    run_paths = [p for p in find_run_dirs(root) if out_dir not in p.parents and p != out_dir]
    if not run_paths:
        raise SegbenchError(f"no segbench run directories below {root} (a run directory holds "
                            ".hydra/overrides.yaml and train.log); pass a sweep or training output folder")
    if not metrics:
        raise SegbenchError("report.metrics is empty; name per-case metrics to compare, e.g. [dice, iou]")
    runs = [load_run_or_broken(p) for p in run_paths]
    configs, varying, shared = group_runs([r for r in runs if r.state != "broken"])
    base = pick_baseline(configs, baseline)
    warnings: list[str] = []
    comparisons = compare(configs, base, list(metrics), alpha, n_resamples, seed, warnings)
    cis = {m: {c.label: bootstrap_mean_ci(list(per_image(c, m, []).values()), confidence=1 - alpha,
                                          n_resamples=n_resamples, seed=seed)
               for c in configs if c.finished} for m in metrics}
    columns = [col for col in COLUMNS
               if not col.optional or any(not math.isnan(_metric(r.metrics, col)) for c in configs for r in c.finished)]
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {"metrics.png": "test metrics with 95% confidence intervals"}
    plot_metric_bars(configs, base, list(metrics), cis, out_dir / "metrics.png")
    if plot_curves(configs, out_dir / "curves.png"):
        figures["curves.png"] = "learning curves, every configuration"
    if plot_prediction_grid(configs, out_dir / "predictions.png", max_predictions):
        figures["predictions.png"] = "the same test images across configurations"
    else:
        warnings.append("no run holds predictions.npz (runs older than this report): no prediction grid")
    warnings[:] = list(dict.fromkeys(warnings))  # each metric compared meets the same mismatch
    _write_csv(out_dir / "report.csv", configs, base, varying, columns, comparisons)
    text = _markdown(root, runs, configs, base, baseline, varying, shared, columns, comparisons,
                     metrics, alpha, n_resamples, seed, figures, warnings)
    (out_dir / "report.md").write_text(text)
    for w in warnings:
        log.warning("%s", w)
    return {"runs": len(runs), "configurations": len(configs), "baseline": base.label,
            "finished": sum(len(c.finished) for c in configs), "comparisons": comparisons,
            "warnings": warnings}


def _write_csv(path, configs, base, varying, columns, comparisons) -> None:
    header = ["configuration", *varying, "baseline", "n_runs", "n_finished"]
    for col in columns:
        header += [f"{col.name}_mean", f"{col.name}_std", f"{col.name}_n"]
    for m in comparisons:
        header += [f"{m}_diff", f"{m}_ci_low", f"{m}_ci_high", f"{m}_p", f"{m}_p_holm", f"{m}_pairs",
                   f"{m}_verdict"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for c in configs:
            row = [c.label, *(c.settings[k] for k in varying), c is base, len(c.runs), len(c.finished)]
            for col in columns:
                mean, std, n = column_stats(c, col)
                row += [_num(mean), _num(std), n]
            for comp in comparisons.values():
                r = comp.get(c.label)
                row += ([_num(r["mean_diff"]), _num(r["ci_low"]), _num(r["ci_high"]), _num(r["p_value"]),
                         _num(r["p_holm"]), r["n_pairs"], r["verdict"]] if r else
                        ["", "", "", "", "", "", "baseline" if c is base else "no finished run"])
            w.writerow(row)


def _num(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"


def _markdown(root, runs, configs, base, baseline_spec, varying, shared, columns, comparisons,
              metrics, alpha, n_resamples, seed, figures, warnings) -> str:
    states = defaultdict(int)
    for r in runs:
        states[r.state] += 1
    lines = [f"# segbench report: {root.resolve().name}", "",
             f"{len(runs)} runs in {len(configs)} configurations under `{root}`: "
             + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ".", ""]
    if shared:
        lines += ["## Shared settings", "", "Every run used: "
                  + ", ".join(f"`{k}={v}`" for k, v in shared.items()) + ".", ""]
    # Results table.
    header = [*(varying or ["configuration"]), "n"] + [c.name for c in columns]
    stats_by = {c.label: [column_stats(c, col) for col in columns] for c in configs if c.finished}
    best = [_best([s[i][0] for s in stats_by.values()], col.higher_is_better) for i, col in enumerate(columns)]
    rows = []
    for c in configs:
        if not c.finished:
            continue
        cells = [c.settings[k] for k in varying] if varying else [c.label]
        cells[0] = cells[0] + (" (baseline)" if c is base else "")
        cells.append(str(len(c.finished)))
        for i, col in enumerate(columns):
            mean, std, n = stats_by[c.label][i]
            text = _fmt(mean, col.digits) + (f" ± {_fmt(std, col.digits)}" if not math.isnan(std) else "")
            if best[i] is not None and not math.isnan(mean) and mean == best[i]:
                text = f"**{text}**"
            cells.append(text)
        rows.append(cells)
    lines += ["## Results", "",
              "Test split, mean ± sample standard deviation over seeds (n finished seeds); "
              "best value per column in bold (higher is better except hd95, train_min, params_M, "
              "latency_ms; epochs not ranked). `dice`/`iou` average per-image values, `_micro` pool "
              "pixels over the split.", "", _md_table(header, rows), ""]
    # Paired comparisons.
    lines += ["## Paired comparison with the baseline", "",
              f"Baseline: **{base.label}**"
              + (" (chosen with `report.baseline`)." if baseline_spec else
                 " (the first configuration; choose another with `report.baseline=<setting=value>`)."),
              "",
              "Per test image, each configuration's value (mean over its seeds) minus the baseline's, "
              f"on the images both were tested on: mean difference, {100 * (1 - alpha):g}% percentile "
              f"bootstrap interval ({n_resamples} resamples, seed {seed}), two-sided Wilcoxon "
              "signed-rank p-value and its Holm adjustment over the comparisons of this table.", ""]
    for metric, results in comparisons.items():
        rows = [[label, str(r["n_pairs"]), _fmt(r["mean_diff"], 4),
                 f"[{_fmt(r['ci_low'], 4)}, {_fmt(r['ci_high'], 4)}]", _p(r["p_value"]),
                 _p(r["p_holm"]), r["verdict"]] for label, r in results.items()]
        lines += [f"### {metric}", "",
                  _md_table(["configuration", "images", f"Δ {metric}", "95% CI", "p", "p (Holm)",
                             "verdict"], rows) if rows else "Only the baseline has finished runs.", ""]
    axis = axis_tables(configs, base, varying, metrics[0], comparisons)
    if axis:
        lines += ["## Per axis", "", axis, ""]
    lines += ["## Figures", ""]
    for name, caption in figures.items():
        lines += [f"![{caption}]({name})", "", f"*{name}: {caption}.*", ""]
    problems = [r for r in runs if r.state != "finished"]
    if problems:
        rows = [[f"`{r.path.relative_to(root) if root in r.path.parents else r.path}`", r.state, str(r.epochs),
                 (r.error or "").replace("\n", " ")[:300]] for r in problems]
        lines += ["## Incomplete and failed runs", "",
                  "Not in the tables above. Re-run the sweep command to resume interrupted runs.", "",
                  _md_table(["run", "state", "epochs done", "error"], rows), ""]
    if warnings:
        lines += ["## Notes", "", *(f"- {w}" for w in warnings), ""]
    return "\n".join(lines)
