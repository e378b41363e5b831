"""build_report(): read the runs, group them, compute, and write report.md, report.csv,
tables/ (CSV and LaTeX of every table), the figures, and index.html with its case galleries."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import cast

from segbench import SegbenchError
from segbench.atomic import write_atomic
from segbench.report import analysis, figures, gallery, page
from segbench.report.analysis import Axis, CaseTables, Column, column_named, column_stats, mean_std
from segbench.report.gallery import Section
from segbench.report.runs import (
    ABSENT,
    Configuration,
    Grouping,
    Run,
    find_run_dirs,
    group_runs,
    label_parts,
    load_run,
    pick_baseline,
)
from segbench.report.study import Study
from segbench.report.tables import Table, best_value, fmt, fmt_p, num
from segbench.runs.sweeps import RECORD

log = logging.getLogger(__name__)


def build_report(root: Path, out_dir: Path, *, baseline: str | None = None,
                 metrics: tuple[str, ...] = ("dice", "iou"), alpha: float = 0.05,
                 n_resamples: int = 10_000, seed: int = 0, max_predictions: int = 6) -> dict:
    """The report of every run below `root`, written to `out_dir`; returns what it holds (runs,
    configurations, baseline, comparisons, warnings, tables, figures, galleries)."""
    root, out_dir = Path(root), Path(out_dir)
    runs = _read_runs(root, out_dir, metrics)
    g = group_runs(runs)
    if not g.configs:
        raise SegbenchError(f"none of the {len(runs)} run directories below {root} has a readable "
                            "config.yaml; nothing to compare")
    base = pick_baseline(g.configs, baseline)
    metrics = _compared_metrics(g, tuple(metrics))
    notes = [*g.notes, *_monitor_notes(g)]
    cases = CaseTables(analysis.case_level(g.configs))
    comparisons = analysis.compare(g.configs, base, list(metrics), alpha=alpha,
                                   n_resamples=n_resamples, seed=seed, tables=cases, notes=notes)
    cis = analysis.intervals(g.configs, list(metrics), alpha=alpha, n_resamples=n_resamples,
                             seed=seed, tables=cases)
    columns = analysis.shown_columns(g.configs)
    axis = analysis.numeric_axis(g.configs, g.label_keys)

    out_dir.mkdir(parents=True, exist_ok=True)
    figures_made = _draw_figures(g, base, metrics, cis, axis, out_dir, max_predictions)
    if "predictions.png" not in figures_made:
        notes.append("no run holds predictions.npz: no prediction grid")
    notes += cases.notes
    notes = list(dict.fromkeys(notes))  # each metric compared meets the same mismatch

    made = [configurations_table(g, base), results_table(g, base, columns), *cv_tables(g)]
    external = external_table(g, metrics)
    if external is not None:
        made.append(external)
    made += [comparison_table(metric, results, cases.level, alpha, n_resamples, seed)
             for metric, results in comparisons.items()]
    study = Study(root, runs, g, base, baseline, made, comparisons, metrics, figures_made, notes)
    sections = _write(study, out_dir, columns, max_predictions)
    for n in notes:
        log.warning("%s", n)
    return {"runs": len(runs), "configurations": len(g.configs), "baseline": base.label,
            "finished": sum(len(c.finished) for c in g.configs), "comparisons": comparisons,
            "warnings": notes, "level": cases.level, "axis": axis.key if axis else None,
            "labels": [c.label for c in g.configs], "tables": [t.name for t in made],
            "figures": list(figures_made), "page": "index.html",
            "galleries": [s.gallery for s in sections]}


def _read_runs(root: Path, out_dir: Path, metrics: tuple[str, ...]) -> list[Run]:
    """Every run directory below `root` (out_dir left out), read; a one-line SegbenchError when
    there is nothing to report on."""
    if not root.is_dir():
        raise SegbenchError(f"{root} is not a folder; pass a sweep directory or a parent of run "
                            "directories")
    run_paths = find_run_dirs(root, exclude=out_dir)
    if not run_paths:
        raise SegbenchError(f"no segbench run directories below {root} (a run directory holds "
                            "config.yaml and train.log); pass a sweep or training output folder")
    if not metrics:
        raise SegbenchError("report.metrics is empty; name per-case metrics to compare, e.g. "
                            "[dice, iou]")
    return [load_run(p) for p in run_paths]


def _compared_metrics(g: Grouping, metrics: tuple[str, ...]) -> tuple[str, ...]:
    """The metrics asked for and, with several classes, each foreground class's Dice (compared
    with the same statistics)."""
    finished = [r for c in g.configs for r in c.finished]
    return metrics + tuple(c.name for c in analysis.class_columns(finished)
                           if c.name not in metrics)


def _monitor_notes(g: Grouping) -> list[str]:
    """A note when the configurations chose best.pt on different validation metrics."""
    monitors = {c.label: monitor_of(c) for c in g.configs if c.finished and not c.is_ensemble}
    if len(set(monitors.values())) <= 1:
        return []
    return ["the configurations chose best.pt on different validation metrics ("
            + "; ".join(f"{k}: {v}" for k, v in monitors.items()) + "): their test "
            "figures come from checkpoints selected on different quantities; set "
            "trainer.monitor alike to compare like with like"]


def _draw_figures(g: Grouping, base: Configuration, metrics: tuple[str, ...], cis: dict,
                  axis: Axis | None, out_dir: Path, max_predictions: int) -> dict[str, str]:
    """metrics.png, curves.png and predictions.png (those there is data for): file -> caption."""
    parts = [k or "model" for k, _ in _parts(g)] if g.label_keys else []
    axis_title = parts[0] if len(parts) == 1 else "configuration"
    figures_made = {"metrics.png": figures.plot_metrics(
        g.configs, base, list(metrics), cis, out_dir / "metrics.png", axis, axis_title)}
    if figures.plot_curves(g.configs, out_dir / "curves.png",
                           axis_title if axis_title != "configuration" else None):
        figures_made["curves.png"] = "learning curves of every configuration"
    if figures.plot_prediction_grid(g.configs, out_dir / "predictions.png", max_predictions):
        figures_made["predictions.png"] = "the same test images across configurations"
    return figures_made


def _write(study: Study, out_dir: Path, columns: list[Column], max_predictions: int
           ) -> list[Section]:
    """tables/, report.csv, report.md, the case galleries and index.html; returns the galleries'
    sections."""
    for t in study.tables:
        t.write(out_dir / "tables")
    write_report_csv(out_dir / "report.csv", study.grouping, study.base, columns,
                     study.comparisons)
    write_atomic(out_dir / "report.md", markdown(study))
    sections, grid = gallery.draw(study.grouping.configs, out_dir, max_predictions)
    page.study_page(out_dir, study, sections, grid)
    return sections


def _parts(g: Grouping) -> list[tuple[str, str]]:
    return label_parts(g.configs[0].settings, g.label_keys)


# --------------------------------------------------------------------------- tables

def _replicates(c) -> str:
    if c.is_ensemble:
        members = [m for r in c.finished for m in (r.metrics or {}).get("members", [])]
        seeds = sorted({str(m.get("seed")) for m in members})
        folds = sorted({str(m.get("fold")) for m in members if m.get("fold") is not None})
        return (f"ensemble of {len(members)} runs (seed{'s' if len(seeds) > 1 else ''} "
                f"{','.join(seeds)}" + (f" x folds {','.join(folds)}" if folds else "") + ")")
    seeds = sorted({r.seed for r in c.finished}, key=lambda s: int(s) if s.isdigit() else 0)
    folds = sorted({r.fold for r in c.finished if r.fold is not None}, key=int)
    text = f"seed{'s' if len(seeds) > 1 else ''} {','.join(seeds)}" if seeds else "none finished"
    return text + (f" x folds {','.join(folds)}" if folds else "")


def monitor_of(c) -> str:
    """The validation metric that chose best.pt in a configuration's runs (metrics.json), e.g.
    `val_volume_dice (max)`; runs from before trainer.monitor chose on validation IoU."""
    seen = []
    for r in c.finished:
        m = (r.metrics or {}).get("monitor") or ({"metric": "val_iou", "mode": "max"}
                                                  if "best_epoch" in (r.metrics or {}) else None)
        if m:
            seen.append(f"{m['metric']} ({m['mode']})")
    return ", ".join(dict.fromkeys(seen)) or ABSENT


def configurations_table(g: Grouping, base) -> Table:
    keys = list(dict.fromkeys(g.varying + g.preset_keys))
    header = ["configuration", "finished runs", "best.pt chosen on", *keys]
    rows = [[c.label + (" (baseline)" if c is base and len(g.configs) > 1 else ""), _replicates(c),
             monitor_of(c), *(c.settings.get(k, g.shared.get(k, ABSENT)) for k in keys)]
            for c in g.configs]
    note = ("Every resolved config.yaml key that differs between configurations"
            + (", and the swept groups' keys a preset set (see the note below)"
               if g.preset_keys else "")
            + "; runs that differ only in seed or fold are one configuration.")
    return Table("configurations", "Configurations: what each one ran", header, rows, note)


def results_table(g: Grouping, base, columns) -> Table:
    done = [c for c in g.configs if c.finished]
    names = [k for k, _ in label_parts(done[0].settings, g.label_keys)] if g.label_keys else []
    names = [n or "model" for n in names] or ["configuration"]
    stats = {c.label: [column_stats(c, col) for col in columns] for c in done}
    best = [best_value([stats[c.label][i][0] for c in done
                        if col.ensembles_ranked or not c.is_ensemble],
                       col.higher_is_better if col.ranked else None)
            for i, col in enumerate(columns)]
    header = [*names, "n", *(col.name for col in columns)]
    rows, bold, csv_rows = [], set(), []
    for i, c in enumerate(done):
        cells = [v for _, v in label_parts(c.settings, g.label_keys)] if g.label_keys else [c.label]
        cells[0] += " (baseline)" if c is base and len(done) > 1 else ""
        row, raw = [*cells, str(len(c.finished))], [c.label, len(c.finished)]
        for j, col in enumerate(columns):
            mean, std, _ = stats[c.label][j]
            spread = not math.isnan(std) and std > 0  # params and FLOPs do not vary over seeds
            row.append(fmt(mean, col.digits) + (f" ± {fmt(std, col.digits)}" if spread else ""))
            raw += [num(mean), num(std)]
            rankable = col.ensembles_ranked or not c.is_ensemble
            if best[j] is not None and rankable and not math.isnan(mean) and mean == best[j]:
                bold.add((i, len(cells) + 1 + j))
        rows.append(row)
        csv_rows.append(raw)
    costs = [col.name for col in columns if col.cost]
    meaning = {"params_M": "millions of parameters", "GFLOPs": "one image at the run's resolution",
               "latency_ms": "one image's forward pass on the run's device",
               "train_min": "training time (an ensemble: its members' total)"}
    unranked = [col.name for col in columns if not col.ranked]
    note = ("Test split; mean ± sample standard deviation over finished runs (n = seeds x folds); "
            "best per column in bold (higher is better except hd95 and the cost columns; epochs "
            "not ranked"
            + (f"; {', '.join(unranked)} not ranked: timed on a shared machine, its spread is "
               "the machine's load as much as the model's cost" if unranked else "")
            + ("; an ensemble's train_min is its members' total and is not ranked"
               if any(c.is_ensemble for c in done) and "train_min" in [c.name for c in columns]
               else "")
            + "). " + "; ".join(f"{c}: {meaning[c]}" for c in costs)
            + ". dice/iou average per-image values, _micro pool the split's pixels."
            + (" Several classes: dice, iou, ... are the mean over the foreground classes of each "
               "class's figure; dice_<class> is that class's per-image mean (docs/metrics.md)."
               if any(col.name.startswith("dice_") and col.name != "dice_micro" for col in columns)
               else ""))
    csv_header = ["configuration", "n",
                  *(f"{col.name}_{s}" for col in columns for s in ("mean", "std"))]
    t = Table("results", "Test results", header, rows, note, bold, csv_header, csv_rows)
    return t


def external_table(g: Grouping, metrics) -> Table | None:
    """Internal and external test results side by side: per configuration, each metric on its
    own test split and on every external set its runs were evaluated on (`segbench eval
    run_dir=<run> dataset=<name> dataset.root=<dir>`); None when no run has one."""
    sets = sorted({name for c in g.configs for r in c.finished for name in r.external})
    if not sets:
        return None
    header = ["configuration", *(f"{where} {m}" for m in metrics for where in ("test", *sets))]
    rows, csv_rows = [], []
    for c in g.configs:
        if not c.finished:
            continue
        row: list[str] = [c.label]
        raw: list[object] = [c.label]
        for m in metrics:
            # A finished run has its test metrics (report.runs.load_run).
            internal = [float(cast(dict, r.metrics)["test"].get(m, math.nan)) for r in c.finished]
            for values in (internal, *([float(r.external[s].get(m, math.nan)) for r in c.finished
                                        if s in r.external] for s in sets)):
                mean, std, n = mean_std(values)
                spread = f" ± {fmt(std)}" if not math.isnan(std) else ""
                row.append(f"{fmt(mean)}{spread} (n={n})" if n else ABSENT)
                raw += [num(mean), num(std), n]
        rows.append(row)
        csv_rows.append(raw)
    csv_header = ["configuration", *(f"{where}_{m}_{s}" for m in metrics
                                     for where in ("test", *sets) for s in ("mean", "std", "n"))]
    note = ("Each run's own test split beside its latest evaluation on each external set (named "
            "by its folder and the first characters of its files' fingerprint); mean ± sample "
            "standard deviation over the runs evaluated there (n). External sets are scored "
            "at native resolution unless the evaluation said otherwise (its metrics.json).")
    return Table("external", "Internal and external test results", header, rows, note,
                 set(), csv_header, csv_rows)


def cv_tables(g: Grouping) -> list[Table]:
    cv = [c for c in g.configs if c.folds and c.finished and not c.is_ensemble]
    if not cv:
        return []
    rows, csv_rows, fold_rows = [], [], []
    for c in cv:
        per_fold = analysis.fold_summary(c)
        cells, raw = [c.label, f"{len(per_fold)} of {c.folds}"], [c.label, c.folds, len(per_fold)]
        for name, _ in analysis.CV_COLUMNS:
            mean, std, _ = mean_std([f[name] for f in per_fold])
            cells.append(f"{fmt(mean)} ± {fmt(std)}")
            raw += [num(mean), num(std)]
        for name in ("test_dice", "test_iou"):
            mean, std, _ = mean_std([f[name] for f in per_fold])
            cells.append(f"{fmt(mean)} ± {fmt(std)}")
            raw += [num(mean), num(std)]
        rows.append(cells)
        csv_rows.append(raw)
        for f in per_fold:
            fold_rows.append([c.label, f["fold"], ",".join(f["seeds"]), fmt(f["val_dice"]),
                              fmt(f["test_dice"]), fmt(f["test_iou"]), fmt(f["test_volume_dice"])])
    header = ["configuration", "folds", "val dice (CV)", "val iou (CV)", "test dice", "test iou"]
    units = {"groups": "patients", "images": "images"}
    note = ("Cross-validation: the validation metrics of each fold's best checkpoint "
            "(metrics.json val_best), mean ± sample std over folds (a fold with several seeds "
            "counts as their mean); test: each fold's model on the shared test split, mean ± std "
            "over folds. Folds partition the training pool by " + units.get(_cv_unit(cv), "images")
            + "; the test split is the same for every fold.")
    csv_header = ["configuration", "folds", "folds_finished", "val_dice_mean", "val_dice_std",
                  "val_iou_mean", "val_iou_std", "test_dice_mean", "test_dice_std", "test_iou_mean",
                  "test_iou_std"]
    summary = Table("cv", "Cross-validation", header, rows, note, set(), csv_header, csv_rows)
    has_volume = any(r[-1] != "-" for r in fold_rows)
    fold_header = ["configuration", "fold", "seeds", "val dice", "test dice", "test iou",
                   *(["test volume dice"] if has_volume else [])]
    folds = Table("folds", "Test metrics per fold", fold_header,
                  [r if has_volume else r[:-1] for r in fold_rows],
                  "Each fold's model (mean over its seeds) on the shared test split; val dice: "
                  "its validation fold.")
    return [summary, folds]


def _cv_unit(configs) -> str:
    for c in configs:
        for r in c.finished:
            try:
                doc = json.loads((r.path / "split.json").read_text())
                return doc.get("cv", {}).get("unit", "images")
            except (OSError, ValueError):
                continue
    return "images"


def comparison_table(metric, results, level, alpha, n_resamples, seed) -> Table:
    rows = [[label, f"{r['runs'][0]} vs {r['runs'][1]}", str(r["n_pairs"]), fmt(r["mean_diff"], 4),
             f"[{fmt(r['ci_low'], 4)}, {fmt(r['ci_high'], 4)}]", fmt_p(r["p_value"]),
             fmt_p(r["p_holm"]), r["verdict"]] for label, r in results.items()]
    levels = {r["level"] for r in results.values()} or {level}
    unit = " and ".join(sorted(levels))
    methods = {r["method"] for r in results.values()}
    parts = [f"Paired over the same test {unit} (per_volume.csv: patients are the unit)"
             if "volumes" in levels else f"Paired over the same test {unit}"]
    if "bootstrap over runs and cases" in methods:
        parts.append(f"several runs on both sides: difference of the grand means, "
                     f"{100 * (1 - alpha):g}% interval and two-sided p from a two-level bootstrap "
                     f"({n_resamples} resamples of runs and {unit}, seed {seed})")
        if any(min(r["runs"]) == 2 for r in results.values()):
            parts.append("two runs a side show little of the seed-to-seed variance: three or "
                         "more seeds give a fairer interval")
    if "Wilcoxon over cases (one run)" in methods:
        parts.append(f"one run on a side: Wilcoxon signed-rank p and a {n_resamples}-resample "
                     f"bootstrap over {unit} of the per-case means; seed-to-seed variance is not "
                     "captured")
    parts.append(f"Holm correction over the {len(results)} comparisons of this table; each "
                 "verdict follows its p (Holm), not the raw p")
    header = ["configuration", "runs", unit, f"Δ {metric}", f"{100 * (1 - alpha):g}% CI", "p",
              "p (Holm)", "verdict"]
    csv_header = ["configuration", "runs", "baseline_runs", "cases", "level", "method", "diff",
                  "ci_low", "ci_high", "p", "p_holm", "verdict"]
    csv_rows = [[label, r["runs"][0], r["runs"][1], r["n_pairs"], r["level"], r["method"],
                 num(r["mean_diff"]), num(r["ci_low"]), num(r["ci_high"]), num(r["p_value"]),
                 num(r["p_holm"]), r["verdict"]] for label, r in results.items()]
    return Table(f"comparison_{metric}", f"Test {metric} against the baseline", header, rows,
                 "; ".join(parts) + ".", set(), csv_header, csv_rows)


def write_report_csv(path, g: Grouping, base, columns, comparisons) -> None:
    keys = g.label_keys
    header = ["configuration", *keys, "baseline", "n_runs", "n_finished"]
    for col in columns:
        header += [f"{col.name}_mean", f"{col.name}_std", f"{col.name}_n"]
    for m in comparisons:
        header += [f"{m}_diff", f"{m}_ci_low", f"{m}_ci_high", f"{m}_p", f"{m}_p_holm",
                   f"{m}_pairs", f"{m}_method", f"{m}_verdict"]
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(header)
    for c in g.configs:
        row = [c.label, *(c.settings.get(k, ABSENT) for k in keys), c is base, len(c.runs),
               len(c.finished)]
        for col in columns:
            mean, std, n = column_stats(c, col)
            row += [num(mean), num(std), n]
        for comp in comparisons.values():
            r = comp.get(c.label)
            row += ([num(r["mean_diff"]), num(r["ci_low"]), num(r["ci_high"]), num(r["p_value"]),
                     num(r["p_holm"]), r["n_pairs"], r["method"], r["verdict"]] if r else
                    ["", "", "", "", "", "", "", "baseline" if c is base else "no finished run"])
        w.writerow(row)
    write_atomic(path, text.getvalue())


# --------------------------------------------------------------------------- report.md

def axis_tables(g: Grouping, base, primary, comparisons) -> str:
    """One table per axis when every configuration differs from the baseline in one setting;
    a grid of means when two axes are fully crossed."""
    done = [c for c in g.configs if c.finished]
    parts = {c.label: dict(label_parts(c.settings, g.label_keys)) for c in done}
    axes = list(parts[base.label]) if base.label in parts else []
    if len(axes) < 2 or len(done) < 2:
        return ""
    column = column_named(primary)
    diffs = {c.label: [a for a in axes if parts[c.label][a] != parts[base.label][a]] for c in done}
    out = []
    if all(len(d) <= 1 for d in diffs.values()):
        out.append(f"Every configuration changes one setting of the baseline ({base.label}); "
                   f"test {primary} per axis:\n")
        for a in axes:
            rows = []
            for c in done:
                if c is base or diffs[c.label] == [a]:
                    mean, std, n = column_stats(c, column)
                    comp = comparisons.get(primary, {}).get(c.label)
                    rows.append([parts[c.label][a] + (" (baseline)" if c is base else ""),
                                 f"{fmt(mean)} ± {fmt(std)}", str(n),
                                 fmt(comp["mean_diff"]) if comp else "-",
                                 fmt_p(comp["p_holm"]) if comp else "-",
                                 comp["verdict"] if comp else "-"])
            t = Table("axis", a, [a or "model", primary, "n", "Δ vs baseline", "p (Holm)",
                                  "verdict"], rows,
                      f"Mean ± std over runs; Δ, p (Holm) and verdict from the {primary} "
                      "comparison above.")
            out.append(f"**{a or 'model'}**\n\n" + t.markdown() + "\n")
    elif len(axes) == 2:
        a, b = axes
        va = list(dict.fromkeys(parts[c.label][a] for c in done))
        vb = list(dict.fromkeys(parts[c.label][b] for c in done))
        cell = {(parts[c.label][a], parts[c.label][b]): column_stats(c, column)[0] for c in done}
        if len(cell) == len(va) * len(vb):
            t = Table("grid", "grid", [f"{a} \\ {b}", *vb],
                      [[x, *(fmt(cell[(x, y)]) for y in vb)] for x in va],
                      f"Test {primary}, mean over each configuration's runs.")
            out.append(f"Test {primary} (mean over runs), {a} down, {b} across:\n\n"
                       + t.markdown() + "\n")
    return "\n".join(out)


def report_title(root: Path) -> str:
    """The sweep's folder name (`optimizers_2026-12-03`); a long command-named folder of an
    older sweep is cut, after its study's name."""
    folder = root.resolve()
    name = folder.name
    if len(name) <= 60:
        return name
    return f"{folder.parent.name}/{name[:40]}…"


def _command_line(root: Path) -> list[str]:
    """The sweep's command, from the sweep.json that `segbench train -m` writes."""
    try:
        record = json.loads((Path(root) / RECORD).read_text())
        return [f"Sweep started {record['started']}: `{record['command']}`", ""]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _shared_lines(shared: dict[str, str]) -> list[str]:
    by_group: defaultdict[str, list[str]] = defaultdict(list)
    for k, v in shared.items():
        group, _, rest = k.partition(".")
        by_group[group if rest else "(top level)"].append(f"`{rest or k}={v}`")
    return ["| group | settings |", "|---|---|",
            *(f"| {grp} | {', '.join(items)} |" for grp, items in by_group.items())]


def markdown(study: Study) -> str:
    """report.md."""
    g, by_name = study.grouping, study.by_name
    lines = [f"# segbench report: {report_title(study.root)}", "", *_command_line(study.root),
             f"{len(study.runs)} runs in {len(g.configs)} configurations under `{study.root}`: "
             + study.states() + ".", ""]
    lines += ["## What ran", "",
              "Read from each run's resolved `config.yaml` (not from its command line).", ""]
    lines += [by_name["configurations"].markdown(), ""]
    preset = [n for n in study.notes if n.startswith("`")]
    if preset:
        lines += ["**Preset values.** " + preset[0],
                  *(f"\n**Preset values.** {n}" for n in preset[1:]), ""]
    if g.shared:
        lines += [f"### Shared settings ({len(g.shared)} keys every configuration has)", "",
                  *_shared_lines(g.shared), ""]
    lines += _results_lines(by_name)
    lines += _comparison_lines(study)
    lines += ["## Figures", ""]
    for name, caption in study.figures.items():
        lines += [f"![{caption}]({name})", "", f"*{name}: {caption}.*", ""]
    lines += ["Every table is also in `tables/` as CSV and LaTeX (booktabs).", ""]
    incomplete = study.incomplete()
    if incomplete is not None:  # its note as a sentence before it
        lines += ["## Incomplete and failed runs", "", incomplete.note, "",
                  replace(incomplete, note="").markdown(), ""]
    other = [n for n in study.notes if not n.startswith("`")]
    if other:
        lines += ["## Notes", "", *(f"- {n}" for n in other), ""]
    return "\n".join(lines)


def _results_lines(by_name: dict[str, Table]) -> list[str]:
    lines = ["## Results", "", by_name["results"].markdown(), ""]
    if "external" in by_name:
        lines += ["## External validation", "", by_name["external"].markdown(), ""]
    if "cv" in by_name:
        lines += ["## Cross-validation", "", by_name["cv"].markdown(), "",
                  by_name["folds"].markdown(), ""]
    return lines


def _comparison_lines(study: Study) -> list[str]:
    """Each metric's comparison with the baseline, then the per-axis tables."""
    lines = ["## Comparison with the baseline", "", study.baseline_line(), ""]
    for metric in study.comparisons:
        t = study.by_name[f"comparison_{metric}"]
        lines += [f"### {metric}", "",
                  t.markdown() if t.rows else "Only the baseline has finished runs.", ""]
    axis_text = axis_tables(study.grouping, study.base, study.metrics[0], study.comparisons)
    if axis_text:
        lines += ["## Per axis", "", axis_text, ""]
    return lines
