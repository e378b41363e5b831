"""One way to evaluate a split, and one place where evaluation settings are resolved.

`evaluate_split()` is what training's final test, `segbench eval` (the run's own split or an
external labelled set), `segbench ensemble` and the Python API run: the images (built from a
config, or already built by the trainer), the eval batch size, the volumes, the pixel spacing and
the native-resolution masks are assembled here once. `eval_settings()` is the one precedence rule
for the settings that change the numbers: the command line where it sets a value, else the
run's own setting (every member's, for an ensemble: they must agree), else the default of
configs/train.yaml (a run recorded before a setting existed). A new eval option is a field of
`settings.Eval`, a line of YAML, and its use in `evaluate_split()`.

An external set (`segbench eval run_dir=R dataset=folder dataset.root=<dir>`) is every
image/mask pair of that dataset, or its test split where it has split files; it is read as the
run reads images (its channels and resolution) and scored at native resolution by default.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from omegaconf import DictConfig, OmegaConf

from segbench import SegbenchError, config_dir
from segbench.data import build_datasets, dataset_module, native_masks
from segbench.data.dataset import SegmentationDataset
from segbench.data.pinning import file_record
from segbench.data.source import Sample
from segbench.inference.loop import (  # Subject and Runtime: this module's interface too
    Runtime,
    Subject,
    evaluation_record,
    pixel_spacing,
    test_split,
)
from segbench.metrics import CLASS_RULE
from segbench.settings import Eval, typed
from segbench.task import BINARY, task_of

# Settings that change the numbers: an ensemble's members must agree on them.
SCORING = ("threshold", "tta", "surface_metrics", "native_resolution")


@functools.cache
def _default_eval() -> dict:
    """The `eval:` block of configs/train.yaml: the value of a key a run recorded before it
    existed."""
    return cast(dict, OmegaConf.to_container(OmegaConf.load(config_dir() / "train.yaml").eval))


def eval_settings(given: Mapping | None, own: list[Mapping], prefer: Mapping | None = None) -> Eval:
    """The typed eval settings: `given` (the command line; null = not set) first, then `prefer`
    (what the situation implies, e.g. native resolution for an external set), then the runs'
    own `eval:` blocks (`own`, one per run; they must agree on the scoring keys), then the
    defaults of configs/train.yaml."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    merged = {}
    for key, default in _default_eval().items():
        if key in given:
            merged[key] = given[key]
        elif prefer and key in prefer:
            merged[key] = prefer[key]
        else:
            values = [o.get(key) for o in own if o is not None and o.get(key) is not None]
            if key in SCORING and len({str(v) for v in values}) > 1:
                raise SegbenchError(f"the runs use different eval.{key} "
                                    f"({sorted({str(v) for v in values})}); "
                                    f"choose one with eval.{key}=<value>")
            merged[key] = values[0] if values else default
    return typed(Eval, merged, "eval.")


def eval_batch_size(trainer, given: int | None = None) -> int:
    """`given` (a command's batch_size), else the run's trainer.eval_batch_size, else twice its
    training batch size."""
    own = trainer.get("eval_batch_size") if hasattr(trainer, "get") else trainer.eval_batch_size
    return int(given or own or 2 * int(trainer.batch_size))


def input_shape(cfg: DictConfig) -> tuple[int, int, int]:
    """(channels, height, width) of the model's input, e.g. for timing one forward pass."""
    return (int(cfg.model.get("in_channels", 3)), int(cfg.resolution.height),
            int(cfg.resolution.width))


def with_data_root(cfg: DictConfig, data_root: str | None) -> DictConfig:
    """The run's config with its dataset read from `data_root` (the data moved since training)."""
    if data_root:
        cfg.dataset.root = str(Path(data_root).expanduser().resolve())
    return cfg


@dataclass
class Split:
    """The images of one split: `cfg` reads them (dataset and resolution), `samples` name them;
    `dataset` when they are built already (the trainer's)."""

    cfg: DictConfig
    samples: list[Sample]
    name: str = "test"
    dataset: SegmentationDataset | None = None


def evaluate_split(subject: Subject, split: Split, settings: Eval, out_dir: Path,
                   runtime: Runtime) -> dict:
    """Evaluate `split` once: per_case.csv (per_volume.csv), predictions.png, confusion_matrix.png
    and predictions.npz in `out_dir`; returns {<split name>: metrics, **how they were made}
    ({} on processes other than rank 0)."""
    cfg = split.cfg
    dataset = split.dataset
    if dataset is None:
        dataset = build_datasets(cfg, {split.name: split.samples}, Path(cfg.paths.cache),
                                 augment=False)[split.name]
    native = settings.native_resolution
    spacing = pixel_spacing(cfg, native)
    groups = [s.group for s in split.samples]
    summary = test_split(subject, dataset, settings, out_dir, runtime,
                         groups=groups if any(groups) else None, spacing=spacing,
                         native_masks=native_masks(cfg, split.samples) if native else None)
    if not summary:
        return {}
    record = {split.name: summary, **evaluation_record(settings.threshold, settings.tta,
                                                       settings.surface_metrics, spacing, native)}
    task = task_of(cfg.dataset)
    if task != BINARY:  # what the per-class figures mean (docs/metrics.md, "Several classes")
        record["task"] = {**task.describe(), "class_rule": CLASS_RULE}
    return record


# --------------------------------------------------------------------------- an external set

def external_config(run_cfg: DictConfig, dataset: DictConfig) -> DictConfig:
    """The run's config reading another dataset: `dataset` (a config of configs/dataset/, as
    given on the command line) with the run's channels (what its model takes, whatever the
    dataset's YAML says) and its root made absolute; the run's resolution, paths and model are
    kept, cross-validation folds dropped."""
    merged = cast(DictConfig, OmegaConf.create(OmegaConf.to_container(run_cfg, resolve=False)))
    merged.dataset = OmegaConf.to_container(dataset, resolve=False)
    merged.dataset.channels = run_cfg.dataset.get("channels", 3)  # what the model takes
    if merged.dataset.get("root"):
        merged.dataset.root = str(Path(str(merged.dataset.root)).expanduser().resolve())
    for key in ("folds", "fold"):
        if key in merged.dataset:
            merged.dataset[key] = None
    return merged


def external_samples(cfg: DictConfig) -> tuple[list[Sample], str]:
    """(the external set, how it was chosen): the dataset's test split where it has split files
    of its own, else every labelled image it lists."""
    module = dataset_module(cfg.dataset)
    pools = module.list_splits(cfg.dataset)
    has_files = getattr(module, "has_split_files", None)
    if has_files is not None and has_files(cfg.dataset):
        return list(pools["test"]), "the test split of its split files"
    samples = sorted((s for pool in pools.values() for s in pool), key=lambda s: s.id)
    return samples, "every labelled image"


def external_record(cfg: DictConfig, samples: list[Sample], rule: str) -> dict:
    """What metrics.json says of an external set: which data, and the fingerprint of its files
    (names and sizes, as split.json records a run's)."""
    return {"dataset": str(cfg.dataset.get("name")), "root": str(cfg.dataset.get("root")),
            "images": len(samples), "chosen": rule,
            "fingerprint": file_record({"test": samples})["fingerprint"]}
