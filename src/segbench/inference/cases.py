"""cases.npz: every test case's predicted mask (bit-packed, at the size it was scored) and its
Dice, IoU and HD95, with the image and ground truth of the cases a report draws: the run's worst,
median and best by Dice and by HD95, a few spread over the split, and the slices of its worst
volume. The report's case galleries read it, so they need no data and no model.

Masks differ in size where the run scored at native resolution, so the masks of all cases are
one flat array of packed bits with a (height, width) per case; images are kept at the model's
resolution (the gallery resizes an image to its mask).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.atomic import write_atomic

STRIP_SLICES = 8  # slices of the worst volume kept for its strip


@dataclass
class Cases:
    ids: list[str]
    dice: np.ndarray
    iou: np.ndarray
    hd95: np.ndarray | None
    shapes: np.ndarray                  # (N, 2) size each case was scored at
    predictions: list[np.ndarray]       # per case: bool mask at its scored size
    images: dict[int, np.ndarray]       # case index -> uint8 image (H, W, C) at model resolution
    truths: dict[int, np.ndarray]       # case index -> bool ground truth at its scored size
    strip: list[int]                    # slices of the worst volume, in order
    strip_volume: str | None
    strip_dice: float
    threshold: float
    plain: list[np.ndarray] | None = None   # with eval.tta: each case's mask without TTA
    plain_dice: np.ndarray | None = None
    # Several classes: the shown cases' label maps (as the task stores them) and the task
    # (segbench.task spec: task, classes, ignore_index, palette), for drawing each class in its
    # colour; `predictions`/`truths` are then the union of the foreground classes.
    pred_labels: dict[int, np.ndarray] | None = None
    truth_labels: dict[int, np.ndarray] | None = None
    task: dict | None = None

    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.ids)}


def pick(dice: np.ndarray, hd95: np.ndarray | None, spread: int) -> dict[str, int]:
    """The cases a gallery shows, by role: worst, median and best Dice (and HD95, lower is
    better; images where it is undefined left out), then `spread` cases evenly over the split."""
    chosen: dict[str, int] = {}
    for name, values, higher in (("Dice", dice, True), ("HD95", hd95, False)):
        if values is None:
            continue
        finite = np.flatnonzero(np.isfinite(values))
        if len(finite) == 0:
            continue
        order = finite[np.argsort(values[finite], kind="stable")]
        worst, best = (order[0], order[-1]) if higher else (order[-1], order[0])
        for role, i in (("worst", worst), ("median", order[len(order) // 2]), ("best", best)):
            chosen[f"{role} {name}"] = int(i)
    for i in np.linspace(0, len(dice) - 1, min(spread, len(dice))).round().astype(int):
        chosen.setdefault(f"case {i}", int(i))
    return chosen


def tta_changed(dice: np.ndarray, plain_dice: np.ndarray, k: int = 3) -> list[int]:
    """The `k` cases whose Dice TTA changed most (either way), unchanged ones left out."""
    change = np.abs(np.asarray(dice, np.float64) - np.asarray(plain_dice, np.float64))
    order = np.argsort(-change, kind="stable")
    return [int(i) for i in order[:k] if change[i] > 0]


def worst_volume(counts: np.ndarray, groups: list) -> tuple[str | None, float, list[int]]:
    """The volume with the lowest pooled Dice and up to STRIP_SLICES of its slices that hold
    ground truth or prediction (in slice order)."""
    names = list(dict.fromkeys(groups))
    if not names:
        return None, math.nan, []
    pooled = {n: np.zeros(4, np.int64) for n in names}
    for row, g in zip(counts, groups, strict=True):
        pooled[g] += row
    dice = {n: 2 * c[0] / (2 * c[0] + c[1] + c[2]) if (2 * c[0] + c[1] + c[2]) else 1.0
            for n, c in pooled.items()}
    name = min(names, key=lambda n: dice[n])
    slices = [i for i, g in enumerate(groups) if g == name]
    lit = [i for i in slices if counts[i][0] + counts[i][1] + counts[i][2] > 0] or slices
    keep = np.linspace(0, len(lit) - 1, min(STRIP_SLICES, len(lit))).round().astype(int)
    return str(name), float(dice[name]), [lit[k] for k in dict.fromkeys(keep.tolist())]


def _pack(masks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shapes = np.array([m.shape for m in masks], np.int32).reshape(-1, 2)
    packed = [np.packbits(np.asarray(m, bool).ravel()) for m in masks]
    offsets = np.cumsum([0, *(len(p) for p in packed)]).astype(np.int64)
    return (np.concatenate(packed) if packed else np.zeros(0, np.uint8)), shapes, offsets


def _unpack(bits, shapes, offsets) -> list[np.ndarray]:
    return [np.unpackbits(bits[offsets[i]:offsets[i + 1]], count=int(h * w)).astype(bool)
            .reshape(h, w) for i, (h, w) in enumerate(shapes)]


def _flat(arrays) -> tuple[np.ndarray, np.ndarray]:
    """uint8 arrays of several sizes as one flat array and its offsets (shapes kept apart)."""
    flat = [np.asarray(a, np.uint8).ravel() for a in arrays]
    offsets = np.cumsum([0, *(len(f) for f in flat)]).astype(np.int64)
    return (np.concatenate(flat) if flat else np.zeros(0, np.uint8)), offsets


def _unflat(flat, shapes, offsets) -> list[np.ndarray]:
    return [flat[offsets[i]:offsets[i + 1]].reshape(int(h), int(w))
            for i, (h, w) in enumerate(shapes)]


@dataclass
class SplitCases:
    """What the test hands to `save_cases`: every case's scores and predicted mask, and the
    split's images and truths, indexable per case (only the picked cases are read from them)."""

    ids: list[str]
    counts: np.ndarray                  # (N, 4) TP, FP, FN, TN per case
    dice: np.ndarray
    iou: np.ndarray
    hd95: np.ndarray | None
    predictions: list[np.ndarray]       # per case: bool mask at its scored size
    images: Sequence | np.ndarray       # per case: uint8 image (H, W, C) at model resolution
    truths: Sequence | np.ndarray       # per case: ground truth at its scored size
    threshold: float
    groups: list | None = None          # each case's volume (volumetric data)


def save_cases(path: Path, cases: SplitCases, spread: int = 6, plain=None, labels=None) -> None:
    """Write cases.npz: every case's scores and mask, with the image and truth of the cases a
    report draws (`pick`, with `spread` cases over the split, and the worst volume's strip).
    `plain`: (masks, Dice) of the same split without TTA, where the run evaluated with it; the
    cases TTA changed most are kept too. `labels`: (every case's predicted label map, the truth
    label maps indexable per case, the task spec) of a multi-class run, whose `predictions` and
    `truths` are the union of its foreground classes."""
    dice = cases.dice
    hd95 = None if cases.hd95 is None else np.asarray(cases.hd95, np.float32)
    picked = set(pick(np.asarray(dice), hd95, spread).values())
    if plain is not None:
        picked |= set(tta_changed(dice, plain[1]))
    volume, volume_dice, strip = (worst_volume(np.asarray(cases.counts), list(cases.groups))
                                  if cases.groups else (None, math.nan, []))
    shown = sorted(picked | set(strip))
    pred_bits, shapes, pred_offsets = _pack(cases.predictions)
    truth_bits, _, truth_offsets = _pack([np.asarray(cases.truths[i]) > 0 for i in shown])
    arrays: dict[str, np.ndarray | str | float] = dict(
        ids=np.array(cases.ids), dice=np.asarray(dice, np.float32),
        iou=np.asarray(cases.iou, np.float32), shapes=shapes, pred_bits=pred_bits,
        pred_offsets=pred_offsets, shown=np.array(shown, np.int64), truth_bits=truth_bits,
        truth_offsets=truth_offsets,
        images=np.stack([np.asarray(cases.images[i], np.uint8) for i in shown]),
        strip=np.array(strip, np.int64), strip_volume=str(volume or ""),
        strip_dice=volume_dice, threshold=cases.threshold)
    if hd95 is not None:
        arrays["hd95"] = hd95
    if plain is not None:
        arrays["plain_bits"], _, arrays["plain_offsets"] = _pack(plain[0])
        arrays["plain_dice"] = np.asarray(plain[1], np.float32)
    if labels is not None:
        pred_labels, truth_labels, task = labels
        arrays["pred_labels"], arrays["label_offsets"] = _flat([pred_labels[i] for i in shown])
        arrays["truth_labels"], _ = _flat([truth_labels[i] for i in shown])
        arrays["task"] = json.dumps(task)
    # numpy's stub checks **kwds against allow_pickle (a bool) too: every array is refused
    write_atomic(Path(path), lambda f: np.savez_compressed(f, **arrays))  # type: ignore[arg-type]


def load_cases(path: Path) -> Cases | None:
    """A run's cases.npz, or None when it has none (runs from before it existed)."""
    if not Path(path).is_file():
        return None
    with np.load(path) as z:
        shapes = z["shapes"]
        shown = z["shown"].tolist()
        truths = _unpack(z["truth_bits"], shapes[shown], z["truth_offsets"])
        return Cases(ids=[str(i) for i in z["ids"]], dice=z["dice"], iou=z["iou"],
                     hd95=z["hd95"] if "hd95" in z.files else None, shapes=shapes,
                     predictions=_unpack(z["pred_bits"], shapes, z["pred_offsets"]),
                     images=dict(zip(shown, z["images"], strict=True)),
                     truths=dict(zip(shown, truths, strict=True)), strip=z["strip"].tolist(),
                     strip_volume=str(z["strip_volume"]) or None,
                     strip_dice=float(z["strip_dice"]), threshold=float(z["threshold"]),
                     plain=(_unpack(z["plain_bits"], shapes, z["plain_offsets"])
                            if "plain_bits" in z.files else None),
                     plain_dice=z["plain_dice"] if "plain_dice" in z.files else None,
                     **_labels(z, shapes[shown], shown))


def _labels(z, shapes, shown) -> dict:
    if "pred_labels" not in z.files:
        return {}
    return {"pred_labels": dict(zip(shown, _unflat(z["pred_labels"], shapes, z["label_offsets"]),
                                    strict=True)),
            "truth_labels": dict(zip(shown, _unflat(z["truth_labels"], shapes, z["label_offsets"]),
                                     strict=True)),
            "task": json.loads(str(z["task"]))}
