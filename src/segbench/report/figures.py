"""The report's figures: test metrics (a line with its interval band along a numeric axis, bars
otherwise), learning curves and the same test images across configurations.

Labels are the configurations' differing keys only, shortened; legends sit outside the axes so
they never cover data; colours are Okabe & Ito's (segbench.viz.PALETTE).
"""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from segbench.report.analysis import Axis, read_rows
from segbench.runs.rundir import HISTORY, PREDICTION_SAMPLES
from segbench.viz import PALETTE, colour_key, overlay, save_figure, show

CURVE_KEYS = ("val_dice", "val_iou", "val_loss", "train_loss")


def wrap(label: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(label, width)) or label


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def plot_metrics(configs, baseline, metrics, cis, path: Path, axis: Axis | None,
                 axis_title: str) -> str:
    """metrics.png; returns its caption."""
    if axis is not None:
        return _plot_lines(configs, metrics, cis, path, axis)
    return _plot_bars(configs, baseline, metrics, cis, path, axis_title)


def _runs_word(cis, metric) -> str:
    runs = {len(v.per_run) for v in cis[metric].values()}
    return "runs and test cases" if min(runs) > 1 else "test cases (one run: seeds not captured)"


def _level(cis, metric) -> str:
    levels = {v.level for v in cis[metric].values()}
    return "per volume" if levels == {"volumes"} else "per image"


def _plot_bars(configs, baseline, metrics, cis, path: Path, axis_title: str) -> str:
    shown = [c for c in configs if c.finished]
    fig = Figure(figsize=(4.8 * len(metrics) + 1.5, 0.5 * len(shown) + 1.7))
    axes = fig.subplots(1, len(metrics), squeeze=False, sharey=True)
    y = np.arange(len(shown))
    for col, (ax, metric) in enumerate(zip(axes[0], metrics)):
        means = [cis[metric][c.label].mean for c in shown]
        lows = [cis[metric][c.label].low for c in shown]
        highs = [cis[metric][c.label].high for c in shown]
        err = np.array([[m - lo if not math.isnan(lo) else 0 for m, lo in zip(means, lows)],
                        [hi - m if not math.isnan(hi) else 0 for m, hi in zip(means, highs)]])
        colours = [PALETTE[1] if c is baseline else PALETTE[0] for c in shown]
        ax.barh(y, means, xerr=np.clip(err, 0, None), color=colours, capsize=3, alpha=0.85)
        for row, c in enumerate(shown):  # each run's own mean over the same test cases
            values = cis[metric][c.label].per_run
            ax.plot(values, [row] * len(values), "o", ms=3.5, mfc="white", mec="black", mew=0.8)
        if col == 0:
            ax.set_yticks(y, [wrap(c.short) + (" (baseline)" if c is baseline else "")
                              for c in shown], fontsize=8)
            ax.set_ylabel(axis_title, fontsize=9)
            ax.invert_yaxis()  # the axes share y: once
        ax.set_xlabel(f"test {metric} ({_level(cis, metric)})", fontsize=9)
        finite = [v for c in shown for v in cis[metric][c.label].per_run] + lows + highs + means
        finite = [v for v in finite if not math.isnan(v)]
        if finite:  # bars start at 0: a cut axis would exaggerate differences
            ax.set_xlim(0, max(finite) * 1.08)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return (f"test {', '.join(metrics)} ({_level(cis, metrics[0])}) per configuration: bar = mean, "
            f"line = 95% interval over {_runs_word(cis, metrics[0])}, circles = each run")


def _plot_lines(configs, metrics, cis, path: Path, axis: Axis) -> str:
    done = [c for c in configs if c.finished]
    series = list(dict.fromkeys(axis.series[c.label] for c in done))
    legend = len(series) > 1
    fig = Figure(figsize=(4.6 * len(metrics) + (2.4 if legend else 0), 3.8))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, name in enumerate(series):
            members = sorted((c for c in done if axis.series[c.label] == name),
                             key=lambda c: axis.values[c.label])
            xs = [axis.values[c.label] for c in members]
            mean = [cis[metric][c.label].mean for c in members]
            low = [cis[metric][c.label].low for c in members]
            high = [cis[metric][c.label].high for c in members]
            if len(xs) > 1:
                ax.fill_between(xs, low, high, color=_colour(i), alpha=0.2, lw=0)
            else:  # one point: its interval as an error bar
                ax.errorbar(xs, mean, yerr=[[mean[0] - low[0]], [high[0] - mean[0]]],
                            color=_colour(i), capsize=3, lw=1.2)
            ax.plot(xs, mean, "-o", color=_colour(i), ms=4, lw=1.6, label=name or None)
            for c in members:
                values = cis[metric][c.label].per_run
                ax.plot([axis.values[c.label]] * len(values), values, "o", ms=3, mfc="white",
                        mec=_colour(i), mew=0.8)
        if axis.log:
            ax.set_xscale("log")
        xs = sorted(set(axis.values.values()))
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(axis.title)
        ax.set_ylabel(f"test {metric} ({_level(cis, metric)})")
        ax.grid(alpha=0.3)
    if legend:
        axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return (f"test {', '.join(metrics)} ({_level(cis, metrics[0])}) against {axis.title}: line = "
            f"mean, band = 95% interval over {_runs_word(cis, metrics[0])}, circles = each run")


def plot_curves(configs, path: Path, legend_title: str | None = None,
                title: str | None = None) -> bool:
    histories = {c.short: [read_rows(r.path / HISTORY) for r in c.runs] for c in configs}
    keys = [k for k in CURVE_KEYS if any(h and k in h[0] for hs in histories.values() for h in hs)]
    if not keys:
        return False
    fig = Figure(figsize=(4.2 * len(keys) + 2.6, 3.8))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, (label, hs) in enumerate(histories.items()):
            by_epoch = defaultdict(list)
            for h in hs:
                for row in h:
                    if row.get(key) not in (None, ""):
                        by_epoch[int(row["epoch"])].append(float(row[key]))
            if not by_epoch:
                continue
            epochs = sorted(by_epoch)
            mean = [np.mean(by_epoch[e]) for e in epochs]
            ax.plot(epochs, mean, marker="." if len(epochs) < 30 else None, lw=1.4,
                    color=_colour(i), label=wrap(label, 30))
            if any(len(by_epoch[e]) > 1 for e in epochs):
                ax.fill_between(epochs, [min(by_epoch[e]) for e in epochs],
                                [max(by_epoch[e]) for e in epochs], color=_colour(i), alpha=0.15)
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
                       title=legend_title, title_fontsize=8)
    fig.suptitle((f"{title}: " if title else "") + "mean over runs (band: min to max)",
                 fontsize=10 if title else 9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return True


def _load_samples(config):
    for r in sorted(config.finished, key=lambda r: (r.fold or "", r.seed)):
        f = r.path / PREDICTION_SAMPLES
        if f.is_file():
            with np.load(f) as z:
                return {k: z[k] for k in z.files}
    return None


def plot_prediction_grid(configs, path: Path, max_rows: int) -> bool:
    """The same test images across configurations: image, ground truth, then each
    configuration's prediction over the image (colours: segbench.viz.OVERLAY, with a key)."""
    samples = [(c, s) for c in configs if c.finished and (s := _load_samples(c)) is not None]
    if not samples:
        return False
    index = [{str(i): k for k, i in enumerate(s["ids"])} for _, s in samples]
    common = [i for i in index[0] if all(i in ix for ix in index)][:max_rows]
    if not common:
        return False
    cols = 2 + len(samples)
    height = 2.2 * len(common) + 0.9
    fig = Figure(figsize=(2.2 * cols, height), layout="constrained")
    axes = fig.subplots(len(common), cols, squeeze=False)
    for row, image_id in enumerate(common):
        first, k = samples[0][1], index[0][image_id]
        image = first["images"][k]
        panels = [(image[..., 0] if image.shape[-1] == 1 else image, "image", ""),
                  (first["masks"][k], "ground truth", "")]
        for (c, s), ix in zip(samples, index, strict=True):
            j = ix[image_id]
            pred = (s["probs"][j] >= round(float(s["threshold"]) * 255)).astype(np.uint8)
            panels.append((overlay(s["images"][j], s["masks"][j], pred), wrap(c.short, 24),
                           f"Dice {float(s['dice'][j]):.3f}"))
        for col, (panel, title, note) in enumerate(panels):
            ax = axes[row, col]
            show(ax, panel)
            if row == 0:
                ax.set_title(title, fontsize=7)
            ax.set_xlabel(note, fontsize=7)
        axes[row, 0].set_ylabel(image_id, fontsize=7)
    fig.suptitle("the same test images across configurations (Dice at full size)", fontsize=8)
    colour_key(fig)
    save_figure(fig, path, dpi=100)
    return True
