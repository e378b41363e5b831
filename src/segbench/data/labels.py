"""Masks as the task declares them (segbench.task): every task's mask becomes one HxW uint8 label
map, so that the cache, resizing and augmentation (nearest neighbour) treat all tasks alike.

- binary: {0, 1}; a file whose non-zero pixels hold several label-like values (0, 1, 2) is an
  error that says how to declare the classes, never a silent threshold.
- multiclass: the declared mask values become class indices 0..C-1 (in the order of the values);
  integer label maps (PNG in L, I or palette mode, TIFF) or RGB colour-coded masks mapped through
  `dataset.palette`.
- multilabel: one bit per class (bit k = class k, at most 7 classes), from one binary mask per
  class (`masks/<class>/<name>.png`) or a multi-channel TIFF (channel k = class k).
`dataset.ignore_index` pixels become IGNORE (255) in every task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segbench import SegbenchError
from segbench.data.io import read_array
from segbench.task import IGNORE, Task

MULTILABEL_MAX = 7  # bits 0..6: a bit field never equals IGNORE (255)
HOW = "docs/datasets.md#multi-class-and-multi-label"


def _values_text(values) -> str:
    ordered = sorted(values)
    return ", ".join(str(v) for v in ordered[:12]) + (f", ... ({len(ordered)} values)"
                                                      if len(ordered) > 12 else "")


def label_like(values: set[int]) -> bool:
    """Whether a binary task's mask values look like class labels rather than a binary mask: two
    or more non-zero values that are not JPEG ringing around 0 and 255."""
    nonzero = {v for v in values if v != 0}
    if len(nonzero) <= 1 or nonzero <= {1, 255}:
        return False
    jpeg = max(nonzero) >= 192 and all(v <= 63 or v >= 192 for v in nonzero)
    return not jpeg


def check_binary(values: set[int], path: Path) -> None:
    if label_like(values):
        example = ", ".join(f"{v}: class{v}" if v else "0: background" for v in sorted(values)[:4])
        raise SegbenchError(
            f"{path}: mask holds the values {_values_text(values)}, labels of several classes, but "
            f"dataset.task is binary; declare them, e.g. dataset.task=multiclass "
            f"dataset.classes='{{{example}}}' ({HOW})")


def _read_label_array(path: Path) -> np.ndarray:
    """Stored label values: a palette PNG's indices (not its colours), else the pixels."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        try:
            with Image.open(path) as img:
                if img.mode == "P":
                    return np.asarray(img)
        except OSError:
            pass  # read_array names what is wrong with the file
    return read_array(path)


def _colours_to_values(arr: np.ndarray, task: Task, path: Path) -> np.ndarray:
    rgb = arr[..., :3].astype(np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(task.palette)}
    found, inverse = np.unique(code, return_inverse=True)
    unknown = [int(c) for c in found if int(c) not in table]
    if unknown:
        text = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:5])
        raise SegbenchError(f"{path}: colour(s) {text} are not in dataset.palette "
                            f"({', '.join(task.names)}); add them to the palette or fix the mask")
    index = np.array([table[int(c)] for c in found], np.uint8)
    return index[inverse.reshape(code.shape)]


def read_multiclass(path: Path, task: Task) -> tuple[np.ndarray, set[int]]:
    """(HxW uint8 class indices, IGNORE at ignore_index pixels; the values the file held)."""
    arr = _read_label_array(path)
    if arr.ndim == 3:
        if task.palette:
            index = _colours_to_values(arr, task, path)
            return index, set(np.unique(index).tolist())
        if (arr[..., 1:3] == arr[..., :1]).all():
            arr = arr[..., 0]
        else:
            raise SegbenchError(f"{path}: a colour mask, but dataset.palette is not set; give the "
                                "RGB colour of each class, e.g. dataset.palette='{background: "
                                f"[0, 0, 0], shaft: [255, 0, 0]}}' ({HOW})")
    if arr.dtype.kind == "f" or arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    values = set(np.unique(arr).tolist())
    allowed = set(task.values) | ({task.ignore_index} if task.ignore_index is not None else set())
    undeclared = values - allowed
    if undeclared:
        declared = ", ".join(f"{v}: {n}" for v, n in zip(task.values, task.names, strict=True))
        raise SegbenchError(
            f"{path}: mask value(s) {_values_text(undeclared)} are not declared classes "
            f"(dataset.classes: {declared}"
            f"{'' if task.ignore_index is None else f'; ignore_index {task.ignore_index}'}); "
            "declare them or fix the mask")
    lut = np.full(max(max(values) + 1, 1), IGNORE, np.uint8)
    for i, v in enumerate(task.values):
        if v < len(lut):
            lut[v] = i
    return lut[arr.astype(np.int64)], values


def _binary_layer(arr: np.ndarray, task: Task, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, ignored) of one class's mask."""
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    ignored = ((arr == task.ignore_index) if task.ignore_index is not None
               else np.zeros(arr.shape, bool))
    values = set(np.unique(arr[~ignored]).tolist())
    check_binary(values, path)
    return (arr > 0) & ~ignored, ignored


def read_multilabel(paths: list[Path], task: Task) -> tuple[np.ndarray, set[int]]:
    """(HxW uint8 bit field of the classes, IGNORE where any class is ignored; values seen) from
    one mask per class, or a single multi-channel TIFF."""
    if len(task.names) > MULTILABEL_MAX:
        raise SegbenchError(f"dataset.task=multilabel takes at most {MULTILABEL_MAX} classes, "
                            f"{len(task.names)} declared")
    layers: list[tuple[np.ndarray, Path]] = []
    if len(paths) == 1:
        arr = read_array(paths[0])
        c = len(task.names)
        if arr.ndim == 3 and arr.shape[0] == c and arr.shape[2] != c:
            arr = np.moveaxis(arr, 0, 2)
        if arr.ndim != 3 or arr.shape[2] != c:
            raise SegbenchError(f"{paths[0]}: a multilabel mask file needs one channel per class "
                                f"({c}: {', '.join(task.names)}), it has shape {arr.shape}; or use "
                                "one mask folder per class (masks/<class>/<name>.png)")
        layers = [(arr[..., k], paths[0]) for k in range(c)]
    else:
        layers = [(read_array(p), p) for p in paths]
    shape = layers[0][0].shape[:2]
    out = np.zeros(shape, np.uint8)
    ignored = np.zeros(shape, bool)
    values: set[int] = set()
    for k, (arr, path) in enumerate(layers):
        if arr.shape[:2] != shape:
            raise SegbenchError(f"{path} is {arr.shape[1]}x{arr.shape[0]} but {layers[0][1]} is "
                                f"{shape[1]}x{shape[0]}: every class's mask must have one size")
        fg, ign = _binary_layer(arr, task, path)
        out |= fg.astype(np.uint8) << k
        ignored |= ign
        values |= set(np.unique(arr).tolist())
    out[ignored] = IGNORE
    return out, values


def class_mask_paths(mask: Path, task: Task) -> list[Path]:
    """The per-class files of a multilabel sample whose mask is masks/<first class>/<file>; a
    single file (a multi-channel TIFF) stands for all classes."""
    mask = Path(mask)
    if mask.parent.name != task.names[0]:
        return [mask]
    root = mask.parent.parent
    out = []
    for name in task.names:
        found = sorted((root / name).glob(f"{mask.stem}.*"))
        if not found:
            raise SegbenchError(f"{root / name}/ has no mask {mask.stem}.* (class {name}); every "
                                f"class folder needs one mask per image, an empty one where "
                                "the class is absent")
        out.append(found[0])
    return out


def read_task_mask(mask: Path, task: Task) -> tuple[np.ndarray, set[int]]:
    """A sample's mask as the task's HxW uint8 label map, and the values its file(s) held."""
    if task.kind == "multiclass":
        return read_multiclass(mask, task)
    if task.kind == "multilabel":
        return read_multilabel(class_mask_paths(mask, task), task)
    arr = read_array(mask)
    fg, ignored = _binary_layer(arr, task, Path(mask))
    out = fg.astype(np.uint8)
    out[ignored] = IGNORE
    return out, set(np.unique(arr).tolist())
