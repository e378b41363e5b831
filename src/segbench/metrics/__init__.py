"""Metric arithmetic: what every number of a run means (docs/metrics.md is the contract).

- `confusion.py`: per-image and per-class confusion counts on the device, and the metrics built
  from them (Dice, IoU, precision, ...; the empty rule; volumes; a task's summaries)
- `surface.py`, `distance.py`: surface distances (HD95, ASSD) and distance maps
- `stats.py`: paired statistics of compared runs (bootstrap intervals, Wilcoxon, Holm)

`from segbench import metrics; metrics.per_image(...)` reads the confusion-count functions, which
this package re-exports.
"""

from segbench.metrics.confusion import (
    AUROC_METHOD,
    CLASS_METRICS,
    CLASS_RULE,
    COUNT_NAMES,
    EMPTY_RULE,
    SCORE_BINS,
    auroc_ap,
    class_argmax,
    class_confusion,
    confusion,
    count_shape,
    label_confusion,
    per_group,
    per_image,
    per_image_classes,
    pooled,
    predicted_labels,
    probabilities,
    score_histogram,
    summarize,
    summarize_classes,
    summarize_surface,
    task_confusion,
    task_per_image,
    task_summary,
    unpack_labels,
    volume_summary,
    volume_summary_classes,
)

__all__ = [
    "auroc_ap",
    "AUROC_METHOD",
    "class_argmax",
    "class_confusion",
    "CLASS_METRICS",
    "CLASS_RULE",
    "confusion",
    "COUNT_NAMES",
    "count_shape",
    "EMPTY_RULE",
    "label_confusion",
    "per_group",
    "per_image",
    "per_image_classes",
    "pooled",
    "predicted_labels",
    "probabilities",
    "SCORE_BINS",
    "score_histogram",
    "summarize",
    "summarize_classes",
    "summarize_surface",
    "task_confusion",
    "task_per_image",
    "task_summary",
    "unpack_labels",
    "volume_summary",
    "volume_summary_classes",
]
