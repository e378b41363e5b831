"""Case galleries from the runs' cases.npz (segbench.inference.cases): per configuration its worst,
median and best test cases by Dice and HD95; the same cases across configurations, those they
disagree on most; and for volumetric data a strip of slices of the worst volume.

Each case is drawn at the size it was scored at (the image size on disk where the run evaluated
at native resolution; the image, kept at the model's resolution, is resized to it). Panels:
image | ground-truth and predicted contours over the image | TP/FP/FN map (segbench.viz colours).
"""

from __future__ import annotations

import logging
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import cv2
import numpy as np
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from segbench.inference.cases import Cases, load_cases, pick, tta_changed
from segbench.report.figures import wrap
from segbench.report.runs import Configuration, Run
from segbench.runs.rundir import CASES
from segbench.task import task_of
from segbench.viz import CONTOURS, OVERLAY, class_palette, colour_labels, overlay, save_figure

log = logging.getLogger(__name__)

ROLES = ("worst Dice", "median Dice", "best Dice", "worst HD95", "median HD95", "best HD95")


@dataclass
class Section:
    """What the page shows of one configuration."""
    label: str
    run: str                                        # the run its cases come from
    gallery: str | None = None                      # file names, relative to the report folder
    strip: str | None = None
    strip_caption: str = ""
    tta: str | None = None
    rows: list[dict] = field(default_factory=list)  # per case: id, dice, iou, hd95, role
    pictured: dict[str, str] = field(default_factory=dict)  # case id -> its role in the gallery


def first_cases(config: Configuration) -> tuple[Run, Cases] | None:
    """The first finished run's cases.npz; a cut or unreadable one is skipped with a warning
    (the report stands without that gallery)."""
    for r in sorted(config.finished, key=lambda r: (r.fold or "", r.seed)):
        try:
            cases = load_cases(r.path / CASES)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            log.warning("%s cannot be read (%s): left out of the case gallery; `segbench eval "
                        "run_dir=%s` writes it again", r.path / CASES, err, r.path)
            continue
        if cases is not None:
            return r, cases
    return None


def image_at(image: np.ndarray, shape) -> np.ndarray:
    """The image at a mask's size (the model saw it at its resolution)."""
    h, w = int(shape[0]), int(shape[1])
    if image.shape[:2] == (h, w):
        return image
    out = cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_LINEAR)
    return out.reshape(h, w, -1)


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _contour(ax, mask: np.ndarray, colour: str) -> None:
    if mask.any() and not mask.all():  # matplotlib warns on a mask with no edge
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.3)


def _key(fig: Figure, contours=tuple(CONTOURS)) -> None:
    handles: list[Artist] = [Line2D([], [], color=CONTOURS[n], lw=2, label=f"{n} contour")
                             for n in contours]
    handles += [Patch(facecolor=c, edgecolor="black", lw=0.5, label=n) for n, c in OVERLAY.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=8,
               frameon=False)


def _class_key(fig: Figure, task) -> None:
    palette = class_palette(task)
    fig.legend(handles=[Patch(color=palette[k] / 255, label=task.names[k])
                        for k in task.foreground],
               loc="outside lower center", ncol=min(6, len(task.foreground)), fontsize=8,
               frameon=False)


def metrics_text(cases: Cases, i: int) -> str:
    text = f"Dice {cases.dice[i]:.3f}  IoU {cases.iou[i]:.3f}"
    if cases.hd95 is not None:
        hd = float(cases.hd95[i])
        text += f"  HD95 {hd:.1f}" if math.isfinite(hd) else "  HD95 n/a"
    return text


def case_gallery(label: str, cases: Cases, path: Path) -> dict[str, str]:
    """Worst, median and best cases of one configuration; returns case id -> role(s)."""
    chosen = pick(cases.dice, cases.hd95, 0)
    roles: dict[int, list[str]] = {}
    for role in ROLES:
        if role in chosen:
            roles.setdefault(chosen[role], []).append(role)
    fig = Figure(figsize=(7.2, 2.35 * len(roles) + 1.0), layout="constrained")
    axes = fig.subplots(len(roles), 3, squeeze=False)
    task = task_of(cases.task) if cases.task else None
    for row, (i, names) in enumerate(roles.items()):
        pred, truth = cases.predictions[i], cases.truths[i]
        image = image_at(cases.images[i], pred.shape)
        for ax in axes[row]:
            _show(ax, image)
        if task is None:
            _contour(axes[row, 1], truth, CONTOURS["ground truth"])
            _contour(axes[row, 1], pred, CONTOURS["prediction"])
            axes[row, 2].imshow(overlay(image, truth, pred), interpolation="nearest")
        else:  # several classes: truth and prediction, each class in its colour
            # cases.npz keeps the shown cases' label maps with the task (save_cases).
            truth_labels = cast(dict[int, np.ndarray], cases.truth_labels)
            pred_labels = cast(dict[int, np.ndarray], cases.pred_labels)
            axes[row, 1].imshow(colour_labels(truth_labels[i], task, image),
                                interpolation="nearest")
            axes[row, 2].imshow(colour_labels(pred_labels[i], task, image),
                                interpolation="nearest")
        axes[row, 0].set_ylabel(f"{', '.join(names)}\n{cases.ids[i]}", fontsize=8)
        axes[row, 1].set_xlabel(metrics_text(cases, i), fontsize=8)
        axes[row, 2].set_xlabel(f"{pred.shape[1]}x{pred.shape[0]} px", fontsize=8)
        if row == 0:
            titles = (("image", "contours", "TP / FP / FN") if task is None
                      else ("image", "ground truth", "prediction"))
            for ax, title in zip(axes[0], titles, strict=True):
                ax.set_title(title, fontsize=9)
    what = "" if task is None else " (Dice: mean over the foreground classes)"
    fig.suptitle(wrap(f"{label}: worst, median and best test cases{what}", 60), fontsize=10)
    if task is None:
        _key(fig)
    else:
        _class_key(fig, task)
    save_figure(fig, path, dpi=100)
    return {cases.ids[i]: ", ".join(names) for i, names in roles.items()}


def volume_strip(label: str, cases: Cases, path: Path) -> str | None:
    """Slices of the run's worst volume (lowest pooled Dice), each a TP/FP/FN map."""
    if not cases.strip:
        return None
    n = len(cases.strip)
    fig = Figure(figsize=(max(1.6 * n, 5.0), 2.9), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, i in zip(axes, cases.strip, strict=True):
        pred = cases.predictions[i]
        image = image_at(cases.images[i], pred.shape)
        ax.imshow(overlay(image, cases.truths[i], pred), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(wrap(cases.ids[i], 16), fontsize=7)
        ax.set_xlabel(f"Dice {cases.dice[i]:.2f}", fontsize=8)
    caption = (f"{label}: worst volume {cases.strip_volume} (volume Dice {cases.strip_dice:.3f}), "
               f"{n} of its slices with ground truth or prediction")
    fig.suptitle(wrap(caption, 110), fontsize=9)
    _key(fig, contours=())
    save_figure(fig, path, dpi=100)
    return caption


def tta_gallery(label: str, cases: Cases, path: Path) -> bool:
    """With eval.tta: the cases whose Dice TTA changed most, without and with it."""
    if cases.plain is None:
        return False
    plain_dice = cast(np.ndarray, cases.plain_dice)  # saved with the plain masks (save_cases)
    changed = [i for i in tta_changed(cases.dice, plain_dice) if i in cases.images]
    if not changed:
        return False
    fig = Figure(figsize=(7.2, 2.35 * len(changed) + 1.0), layout="constrained")
    axes = fig.subplots(len(changed), 3, squeeze=False)
    for row, i in enumerate(changed):
        truth, pred, plain = cases.truths[i], cases.predictions[i], cases.plain[i]
        image = image_at(cases.images[i], pred.shape)
        _show(axes[row, 0], image)
        _contour(axes[row, 0], truth, CONTOURS["ground truth"])
        axes[row, 0].set_ylabel(cases.ids[i], fontsize=8)
        for ax, mask, dice in ((axes[row, 1], plain, plain_dice[i]),
                               (axes[row, 2], pred, cases.dice[i])):
            ax.imshow(overlay(image, truth, mask), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"Dice {dice:.3f}", fontsize=8)
        if row == 0:
            titles = ("image, ground truth", "without TTA", "with flip TTA")
            for ax, title in zip(axes[0], titles, strict=True):
                ax.set_title(title, fontsize=9)
    fig.suptitle(wrap(f"{label}: the test cases flip TTA changed most", 60), fontsize=10)
    _key(fig, contours=("ground truth",))
    save_figure(fig, path, dpi=100)
    return True


def disagreement(configs_cases, path: Path, rows: int) -> list[str]:
    """The test cases the configurations disagree on most (largest spread of Dice), among those
    whose image some run kept: image with its ground-truth contour, then each configuration's
    TP/FP/FN map. Returns the case ids drawn."""
    if len(configs_cases) < 2:
        return []
    index = [cases.index() for _, cases in configs_cases]
    common = [c for c in index[0] if all(c in ix for ix in index)]
    source: dict[str, tuple[Cases, int]] = {}
    for _, cases in configs_cases:
        for i in cases.images:
            source.setdefault(cases.ids[i], (cases, i))
    candidates = [c for c in common if c in source]
    if not candidates:
        return []
    spread = {c: float(np.nanstd([cases.dice[ix[c]]
                                  for (_, cases), ix in zip(configs_cases, index)]))
              for c in candidates}
    shown = sorted(candidates, key=lambda c: -spread[c])[:rows]
    cols = 1 + len(configs_cases)
    fig = Figure(figsize=(2.1 * cols + 0.4, 2.2 * len(shown) + 1.2), layout="constrained")
    axes = fig.subplots(len(shown), cols, squeeze=False)
    for row, case_id in enumerate(shown):
        src, k = source[case_id]
        _show(axes[row, 0], image_at(src.images[k], src.truths[k].shape))
        _contour(axes[row, 0], src.truths[k], CONTOURS["ground truth"])
        axes[row, 0].set_ylabel(f"{case_id}\nDice spread {spread[case_id]:.3f}", fontsize=8)
        for col, ((label, cases), ix) in enumerate(zip(configs_cases, index, strict=True), start=1):
            i = ix[case_id]
            pred = cases.predictions[i]
            truth = cases.truths.get(i)
            if truth is None:  # this run did not keep the case's truth: the source's, at its size
                truth = image_at(src.truths[k].astype(np.uint8)[..., None], pred.shape)[..., 0] > 0
            image = image_at(src.images[k], pred.shape)
            ax = axes[row, col]
            ax.imshow(overlay(image, truth, pred), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"Dice {cases.dice[i]:.3f}", fontsize=8)
            if row == 0:
                ax.set_title(wrap(label, 22), fontsize=8)
        if row == 0:
            axes[0, 0].set_title("image, ground truth", fontsize=8)
    fig.suptitle("the test cases the configurations disagree on most (spread: std of Dice)",
                 fontsize=10)
    _key(fig, contours=("ground truth",))
    save_figure(fig, path, dpi=100)
    return shown


def draw(configs, out_dir: Path, rows: int) -> tuple[list[Section], str | None]:
    """Every configuration's gallery (and volume strip) under out_dir/gallery/, and the
    disagreement grid; returns the sections and the grid's file name (None when not drawn)."""
    folder = out_dir / "gallery"
    sections, with_cases = [], []
    for k, c in enumerate(c for c in configs if c.finished):
        found = first_cases(c)
        if found is None:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        run, cases = found
        where = (run.path.relative_to(out_dir.parent) if out_dir.parent in run.path.parents
                 else run.path)
        s = Section(c.label, str(where))
        s.pictured = case_gallery(c.short, cases, folder / f"cases_{k}.png")
        s.gallery = f"gallery/cases_{k}.png"
        caption = volume_strip(c.short, cases, folder / f"volume_{k}.png")
        if caption:
            s.strip, s.strip_caption = f"gallery/volume_{k}.png", caption
        if tta_gallery(c.short, cases, folder / f"tta_{k}.png"):
            s.tta = f"gallery/tta_{k}.png"
        s.rows = [{"case": cid, "dice": float(cases.dice[i]), "iou": float(cases.iou[i]),
                   "hd95": float(cases.hd95[i]) if cases.hd95 is not None else None,
                   "role": s.pictured.get(cid, "")} for i, cid in enumerate(cases.ids)]
        sections.append(s)
        with_cases.append((c.short, cases))
    grid = None
    if disagreement(with_cases, folder / "disagreement.png", rows):
        grid = "gallery/disagreement.png"
    return sections, grid
