"""Figures of one run: learning curves and test predictions; the colours every figure shares.

Colours are colour-blind safe (Okabe & Ito's palette): in the overlays true positives are sky
blue, false positives vermillion and false negatives yellow, which stay apart under deuteranopia,
protanopia and tritanopia (CIELAB distance >= 34 between any two in Machado et al.'s
simulations, against 20 for the usual green/red/blue).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from segbench.atomic import write_atomic

# Okabe & Ito (2008), for lines and bars: blue, orange, bluish green, vermillion, reddish purple,
# sky blue, yellow, black.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
OVERLAY = {"true positive": "#56B4E9", "false positive": "#D55E00", "false negative": "#F0E442"}
# Contour colours (Okabe & Ito) that the TP/FP/FN map does not use: galleries and Grad-CAM.
CONTOURS = {"ground truth": "#009E73", "prediction": "#CC79A7"}


def save_figure(fig: Figure, path: Path, dpi: int) -> None:
    """A PNG written atomically (a kill never leaves half a figure)."""
    write_atomic(Path(path), lambda f: fig.savefig(f, format="png", dpi=dpi))


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], np.float32) / 255


def colour_key(fig: Figure) -> None:
    """The overlay colours as a legend below the panels (the figure needs layout="constrained")."""
    handles = [Patch(facecolor=c, edgecolor="black", lw=0.5, label=name)
               for name, c in OVERLAY.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9, frameon=False)


def plot_curves(history: list[dict], path: Path, best_epoch: int | None = None,
                title: str | None = None) -> Figure:
    """Train vs validation loss, Dice and IoU per epoch, and the learning rate; `title`: the
    run's name."""
    epochs = [int(row["epoch"]) for row in history]
    fig = Figure(figsize=(17, 4.1))
    axes = fig.subplots(1, 4)
    for ax, metric in zip(axes[:3], ("loss", "dice", "iou"), strict=True):
        for split, style in (("train", "-"), ("val", "-")):
            key = f"{split}_{metric}"
            if history and key in history[0]:
                ax.plot(epochs, [float(row[key]) for row in history], style, marker=".",
                        label=split, color=PALETTE[0] if split == "train" else PALETTE[1])
        if best_epoch:
            ax.axvline(best_epoch, color="grey", ls=":", lw=1, label=f"best (epoch {best_epoch})")
        ax.set_title({"loss": "loss", "dice": "Dice", "iou": "IoU"}[metric])
        ax.set_xlabel("epoch")
        if metric != "loss":
            ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[3].plot(epochs, [float(row["lr"]) for row in history], marker=".", color=PALETTE[2])
    axes[3].set_yscale("log")
    axes[3].set_title("learning rate")
    axes[3].set_xlabel("epoch")
    axes[3].grid(alpha=0.3)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title, fontsize=11)
    # Fixed margins (this figure's size and labels do not vary): tight_layout measured every
    # label by drawing the figure once more, a third of the time a short run spends on figures.
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.13, top=0.84 if title else 0.9, wspace=0.22)
    save_figure(fig, path, dpi=110)
    return fig


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Image with true positives, false positives and false negatives in OVERLAY's colours."""
    rgb = image.astype(np.float32) / 255.0
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    out = rgb * 0.55
    colours = {(1, 1): OVERLAY["true positive"], (1, 0): OVERLAY["false positive"],
               (0, 1): OVERLAY["false negative"]}
    for (p, t), colour in colours.items():
        where = (pred == p) & (truth == t)
        out[where] = 0.3 * rgb[where] + 0.7 * _rgb(colour)
    out[(pred == 0) & (truth == 0)] = rgb[(pred == 0) & (truth == 0)]
    return np.clip(out, 0, 1)


def show(ax, panel: np.ndarray, vmax: float | None = None) -> None:
    """One picture in an axis without ticks: grey for a 2-D array (0..vmax), else RGB."""
    ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0 if vmax else None,
              vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def panel_rows(rows: list[list[tuple]], titles: list[str], extra_height: float = 0.5) -> Figure:
    """A figure of one row of (picture, column name, vmax) panels per image, the column names
    over the first row and each row's title at its left."""
    fig = Figure(figsize=(10, 2.6 * len(rows) + extra_height), layout="constrained")
    axes = fig.subplots(len(rows), len(rows[0]), squeeze=False)
    for row, (panels, title) in enumerate(zip(rows, titles, strict=True)):
        for col, (panel, name, vmax) in enumerate(panels):
            show(axes[row, col], panel, vmax)
            if row == 0:
                axes[row, col].set_title(name, fontsize=10)
        axes[row, 0].set_ylabel(title, fontsize=8)
    return fig


def plot_predictions(images, masks, probs, titles, path: Path,
                     threshold: float = 0.5) -> Figure | None:
    """One row per image: image | ground truth | prediction | overlay (with a colour key)."""
    if len(images) == 0:
        return None
    rows = []
    for image, mask, prob in zip(images, masks, probs, strict=True):
        pred = (prob >= threshold).astype(np.uint8)
        shown = image[..., 0] if image.shape[2] == 1 else image
        rows.append([(shown, "image", 255), (mask, "ground truth", 1), (pred, "prediction", 1),
                     (overlay(image, mask, pred), "overlay", 1)])
    fig = panel_rows(rows, titles)
    colour_key(fig)
    save_figure(fig, path, dpi=100)
    return fig


def plot_confusion(tp: int, fp: int, fn: int, tn: int, path: Path, title: str = "") -> None:
    """Pixel confusion matrix of a split: counts, and each true class's row normalised to 1."""
    counts = np.array([[tn, fp], [fn, tp]], np.int64)  # rows: truth, columns: prediction
    rows = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros((2, 2)), where=rows > 0)
    fig = Figure(figsize=(8.6, 3.8))
    axes = fig.subplots(1, 2)
    for ax, values, name in ((axes[0], counts, "pixel counts"),
                             (axes[1], normalised, "normalised per true class")):
        shown = values / max(values.max(), 1) if values is counts else values
        ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
        for (r, c), v in np.ndenumerate(values):
            text = f"{v:,}" if values is counts else f"{v:.4f}"
            ax.text(c, r, text, ha="center", va="center", fontsize=10,
                    color="white" if shown[r, c] > 0.5 else "black")
        ax.set_xticks([0, 1], ["background", "foreground"])
        ax.set_yticks([0, 1], ["background", "foreground"])
        ax.set_xlabel("prediction")
        ax.set_ylabel("ground truth")
        ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


# Class colours of multi-class figures: Okabe & Ito's palette after the background (black), so
# that every figure and predict's palette PNGs draw a class alike.
CLASS_COLOURS = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00",
                 "#CC79A7", "#999999"]


def class_palette(task) -> np.ndarray:
    """(C, 3) uint8 RGB of each class: the dataset's palette where it gives one, else
    CLASS_COLOURS (a multilabel task's classes start at the first colour after black)."""
    if task.palette:
        return np.array(task.palette, np.uint8)
    start = 0 if task.kind == "multiclass" else 1
    return np.array([np.round(_rgb(CLASS_COLOURS[(start + k) % len(CLASS_COLOURS)]) * 255)
                     for k in range(task.channels)], np.uint8)


def colour_labels(labels: np.ndarray, task, image: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) float RGB of a label map as the task stores it (class indices, or one bit per
    class: overlapping classes mix), over `image` where given; ignored pixels stay as they are."""
    palette = class_palette(task).astype(np.float32) / 255
    base = (np.zeros((*labels.shape, 3), np.float32) if image is None else
            (np.repeat(image, 3, 2) if image.shape[2] == 1 else image[..., :3])
            .astype(np.float32) / 255)
    out = base.copy()
    for k in task.foreground:  # multilabel classes overlap: their colours mix
        where = task.class_mask(labels, k)
        out[where] = 0.35 * out[where] + 0.65 * palette[k] if image is not None else palette[k]
    return out


def plot_class_predictions(images, truths, preds, titles, path: Path, task) -> Figure | None:
    """One row per image: image | ground truth | prediction | prediction over the image, each
    class in its colour, with a legend of the class names."""
    if len(images) == 0:
        return None
    rows = [[(image[..., 0] if image.shape[2] == 1 else image, "image", 255),
             (colour_labels(truth, task), "ground truth", None),
             (colour_labels(pred, task), "prediction", None),
             (colour_labels(pred, task, image), "prediction over image", None)]
            for image, truth, pred in zip(images, truths, preds, strict=True)]
    fig = panel_rows(rows, titles, extra_height=0.6)
    palette = class_palette(task)
    fig.legend(handles=[Patch(color=palette[k] / 255, label=task.names[k])
                        for k in task.foreground],
               loc="outside lower center", ncol=min(6, len(task.foreground)), fontsize=9,
               frameon=False)
    save_figure(fig, path, dpi=100)
    return fig
