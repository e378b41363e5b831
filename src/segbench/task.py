"""What a run segments: one foreground (binary), one of C classes per pixel (multiclass) or
C overlapping structures (multilabel), from `dataset.task`, `dataset.classes`,
`dataset.ignore_index` and `dataset.palette`.

The one place that knows the task's shapes and rules (docs/metrics.md, "Several classes"):
- binary: masks read as value > 0; one logit channel, sigmoid; the label map is {0, 1}.
- multiclass: masks hold the declared values (`classes: {0: background, 1: shaft, 2: tip}`),
  stored as class indices 0..C-1 in the order of the values; C logit channels, softmax, the
  prediction is the argmax. The class of value 0 is the background; summaries average the others.
- multilabel: one binary mask per class (`classes: [tumour, oedema]`), overlapping freely;
  C sigmoid channels, each thresholded on its own; every class is foreground.
`ignore_index` (a mask value, e.g. 255) marks pixels that count in no loss and no metric;
inside segbench they carry IGNORE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from segbench import SegbenchError

TASKS = ("binary", "multiclass", "multilabel")
IGNORE = 255  # the stored value of an ignored pixel (class indices stay below it)


@dataclass(frozen=True)
class Task:
    kind: str                           # binary | multiclass | multilabel
    names: tuple[str, ...]              # one per output channel's class (binary: the foreground)
    values: tuple[int, ...]             # the mask value of each class (multiclass), else ()
    ignore_index: int | None = None     # the mask value that counts nowhere, as given
    palette: tuple[tuple[int, int, int], ...] = ()  # RGB of each class (colour-coded masks)

    @property
    def channels(self) -> int:
        """Output channels of the model."""
        return 1 if self.kind == "binary" else len(self.names)

    @property
    def foreground(self) -> tuple[int, ...]:
        """The channels that summaries average: all but the background of a multiclass task."""
        if self.kind == "multiclass":
            return tuple(i for i, v in enumerate(self.values) if v != 0)
        return tuple(range(self.channels))

    @property
    def foreground_names(self) -> tuple[str, ...]:
        return tuple(self.names[i] for i in self.foreground)

    def class_mask(self, labels, k: int):
        """Class k's pixels in a label map as this task stores it (numpy or torch): index k
        (multiclass) or bit k (multilabel; ignored pixels are in no class)."""
        if self.kind == "multilabel":
            return (((labels >> k) & 1) == 1) & (labels != IGNORE)
        return labels == k

    def foreground_mask(self, labels):
        """The pixels of any foreground class of a multi-class label map."""
        out = self.class_mask(labels, self.foreground[0])
        for k in self.foreground[1:]:
            out = out | self.class_mask(labels, k)
        return out

    def spec(self) -> dict:
        """The declaration task_of() reads back into this Task (JSON-safe)."""
        classes = (dict(zip(self.values, self.names, strict=True)) if self.kind == "multiclass"
                   else list(self.names))
        out: dict = {"task": self.kind, "classes": classes, "ignore_index": self.ignore_index}
        if self.palette:
            out["palette"] = {n: list(c) for n, c in zip(self.names, self.palette, strict=True)}
        return out

    def describe(self) -> dict:
        """The task as metrics.json states it."""
        out: dict = {"task": self.kind, "classes": list(self.names)}
        if self.kind == "multiclass":
            out["mask_values"] = list(self.values)
            out["background"] = [self.names[i] for i in range(len(self.names))
                                 if i not in self.foreground]
        if self.ignore_index is not None:
            out["ignore_index"] = self.ignore_index
        return out


BINARY = Task("binary", ("foreground",), ())


def _name(name, where: str) -> str:
    text = str(name).strip()
    if not text or any(c in text for c in "/\\,|"):
        raise SegbenchError(f"{where}: class name {name!r} must be a non-empty word without "
                            "/ \\ , |")
    return text


def _value(key, where: str) -> int:
    try:
        value = int(key)
    except (TypeError, ValueError):
        raise SegbenchError(f"{where}: mask value {key!r} is not an integer; declare classes as "
                            "{0: background, 1: shaft, 2: tip}") from None
    if not 0 <= value <= 65535:
        raise SegbenchError(f"{where}: mask value {value} is outside 0..65535")
    return value


def _palette(spec, names: Sequence[str], where: str) -> tuple[tuple[int, int, int], ...]:
    if not spec:
        return ()
    if not isinstance(spec, Mapping):
        raise SegbenchError(f"{where}.palette: give one RGB colour per class name, e.g. "
                            "{background: [0, 0, 0], shaft: [255, 0, 0]}")
    missing = [n for n in names if n not in spec]
    unknown = [str(k) for k in spec if str(k) not in names]
    if missing or unknown:
        raise SegbenchError(f"{where}.palette: " + "; ".join(
            p for p in (missing and f"no colour for {', '.join(missing)}",
                        unknown and f"{', '.join(unknown)} is not a declared class") if p))
    colours: list[tuple[int, int, int]] = []
    for n in names:
        rgb = spec[n]
        if (not isinstance(rgb, Sequence) or len(rgb) != 3
                or not all(isinstance(c, int) and 0 <= c <= 255 for c in rgb)):
            raise SegbenchError(f"{where}.palette.{n}={rgb!r}: an RGB colour is [r, g, b] in "
                                "0..255")
        r, g, b = (int(c) for c in rgb)
        colours.append((r, g, b))
    if len(set(colours)) != len(colours):
        raise SegbenchError(f"{where}.palette: two classes share a colour")
    return tuple(colours)


def task_of(dataset, where: str = "dataset") -> Task:
    """The Task a dataset config declares (binary when it says nothing), or a one-line error."""
    get = dataset.get if hasattr(dataset, "get") else (lambda k, d=None: d)
    kind = str(get("task", "binary") or "binary")
    if kind not in TASKS:
        raise SegbenchError(f"{where}.task={kind}: use one of {', '.join(TASKS)}")
    classes, ignore, palette = get("classes", None), get("ignore_index", None), get("palette", None)
    if ignore is not None:
        ignore = _value(ignore, f"{where}.ignore_index")
    if kind == "binary":
        if classes not in (None, {}, []) or palette:
            raise SegbenchError(
                f"{where}.classes is set but {where}.task=binary; set {where}.task=multiclass "
                "(one class per pixel) or multilabel (overlapping masks)")
        return Task("binary", ("foreground",), (), ignore) if ignore is not None else BINARY
    if kind == "multiclass":
        if not isinstance(classes, Mapping) or len(classes) < 2:
            raise SegbenchError(
                f"{where}.task=multiclass needs {where}.classes: each mask value and its name, "
                f"e.g. {where}.classes='{{0: background, 1: shaft, 2: tip}}'")
        pairs = sorted((_value(k, f"{where}.classes"), _name(v, f"{where}.classes"))
                       for k, v in classes.items())
        values, names = tuple(v for v, _ in pairs), tuple(n for _, n in pairs)
        if len(set(names)) != len(names):
            raise SegbenchError(f"{where}.classes: class names must differ ({', '.join(names)})")
        if ignore is not None and ignore in values:
            raise SegbenchError(f"{where}.ignore_index={ignore} is also the value of class "
                                f"{names[values.index(ignore)]}")
        if len(values) >= IGNORE:
            raise SegbenchError(f"{where}.classes: at most {IGNORE - 1} classes")
        return Task(kind, names, values, ignore, _palette(palette, names, where))
    if isinstance(classes, Mapping):  # {0: tumour, 1: oedema}: channel order by key
        classes = [v for _, v in sorted(classes.items(), key=lambda kv: int(kv[0]))]
    if not isinstance(classes, Sequence) or isinstance(classes, str) or not classes:
        raise SegbenchError(
            f"{where}.task=multilabel needs {where}.classes: the class names, one mask folder "
            f"(masks/<name>/) or TIFF channel each, e.g. {where}.classes=[tumour,oedema]")
    names = tuple(_name(n, f"{where}.classes") for n in classes)
    if len(set(names)) != len(names):
        raise SegbenchError(f"{where}.classes: class names must differ ({', '.join(names)})")
    return Task(kind, names, (), ignore, _palette(palette, names, where))
