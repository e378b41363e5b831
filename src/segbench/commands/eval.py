"""`segbench eval run_dir=<dir>`: the run's checkpoint on its recorded split, once more, or on
another labelled set (`dataset=folder dataset.root=<dir>`: external validation).

Results go to <run_dir>/eval/<time>/ (metrics.json, per_case.csv, figures); a plain re-evaluation
of best.pt on the test split is compared with the metrics recorded at the end of training. An
ensemble directory (`segbench ensemble`'s output) is evaluated through its members.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from segbench import SegbenchError
from segbench.cli_args import override_key, path_arguments
from segbench.runs import rundir

# Hydra (about a second to import) and segbench's inference modules (torch) load inside the
# functions that use them, so that `segbench --help` and argument errors answer at once.

CONFIG = "eval"
HELP = ("re-evaluate a run's best checkpoint: eval run_dir=<dir> [eval.tta=true] "
        "[dataset=folder dataset.root=<other labelled set>]")

_paths = path_arguments("run_dir", ("dataset.root",), must_exist=("run_dir",))


def prepare(argv: list[str]) -> list[str]:
    """run_dir (positional or not) must exist; an external set's folder too, before an eval
    folder is made."""
    out = _paths(argv)
    keys = {override_key(a): a.split("=", 1)[1] for a in out if "=" in a}
    if "dataset.root" in keys:
        if "dataset" not in keys:
            value = keys["dataset.root"].strip("'\"")
            raise SegbenchError(
                f"dataset.root={value} without dataset=: did you mean data_root={value}? (the "
                "run's own data, moved); for another labelled set name its kind too, e.g. "
                f"dataset=folder dataset.root={value}")
        root = Path(keys["dataset.root"].strip("'\"")).expanduser()
        if not root.exists():
            raise SegbenchError(f"dataset.root={root}: no such folder; pass the external set's "
                                "folder (images/ and masks/ for dataset=folder)")
    return out

log = logging.getLogger("segbench.eval")

# Keys of a test summary that describe the run rather than the model's predictions.
NOT_COMPARED = ("surface_seconds",)


def run(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from segbench.inference.ensembling import load_subject
    from segbench.inference.evaluation import (
        Runtime,
        eval_batch_size,
        eval_settings,
        evaluate_split,
        with_data_root,
    )
    from segbench.inference.loop import metric_line
    from segbench.runtime.device import resolve_device

    run = rundir.RunDir.open(cfg.run_dir, needs=(rundir.CONFIG, rundir.SPLIT))
    if cfg.split not in ("test", "val"):
        raise SegbenchError(f"split={cfg.split!r}; use test or val")
    external = cfg.get("dataset")
    if external is not None and cfg.split != "test":
        raise SegbenchError(f"split={cfg.split} with dataset=...: an external set is a test set; "
                            "drop split=")
    run.checkpoint_path(cfg.checkpoint)  # best | last
    run.warn_if_unfinished("eval")
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    run_cfg = with_data_root(run.read_config(), cfg.data_root)
    subject, epoch = load_subject(run, cfg.checkpoint, resolve_device(cfg.device))
    # an external set is scored on its own pixels unless the command line says otherwise
    settings = eval_settings(cfg.eval, [run_cfg.get("eval", {})],
                             prefer={"native_resolution": True} if external is not None else None)
    split, about = (_external(run_cfg, external) if external is not None
                    else _recorded(run, run_cfg, cfg.split))
    record = evaluate_split(subject, split, settings, out_dir,
                            Runtime(eval_batch_size(run_cfg.trainer, cfg.batch_size)))
    summary = record[cfg.split]
    result = {"split": cfg.split, "checkpoint": cfg.checkpoint, "epoch": epoch, **about, **record}
    run.write_metrics(result, folder=out_dir)
    where = f"external {about['external']['root']}" if about else cfg.split
    log.info("%s %s (epoch %s): %s", where, cfg.checkpoint, epoch, metric_line(summary))
    if not about and cfg.split == "test" and cfg.checkpoint == "best":
        _compare_with_training(run.read_metrics(), summary, settings.threshold, settings.tta,
                               settings.native_resolution)
    log.info("wrote %s", out_dir)
    return result


def _recorded(run, run_cfg, name: str):
    """The run's own split, as split.json recorded it."""
    from segbench.data.pinning import recorded_splits
    from segbench.inference.evaluation import Split

    splits = recorded_splits(run_cfg, run.read_split(), [name], where=f"run {run.path}",
                             fix="point data_root=<dir> at the data it was trained on")
    return Split(run_cfg, splits[name], name), {}


def _external(run_cfg, dataset):
    """Another labelled set (dataset=<name> dataset.root=<dir>), read as the run reads images."""
    from segbench.inference.evaluation import (
        Split,
        external_config,
        external_record,
        external_samples,
    )

    data_cfg = external_config(run_cfg, dataset)
    samples, rule = external_samples(data_cfg)
    about = external_record(data_cfg, samples, rule)
    log.info("external set: %s, %d image(s) (%s) at %s, fingerprint %s", about["dataset"],
             len(samples), rule, about["root"], about["fingerprint"])
    return Split(data_cfg, samples), {"external": about}


def _compare_with_training(recorded: dict | None, summary: dict, threshold: float, tta: bool,
                           native: bool) -> None:
    if not recorded or "test" not in recorded:
        return
    if (recorded.get("threshold"), recorded.get("tta")) != (threshold, tta) or \
            recorded.get("native_resolution", False) != native:
        return
    before = recorded["test"]
    keys = [k for k in summary if k in before and k not in NOT_COMPARED
            and isinstance(summary[k], (int, float)) and isinstance(before[k], (int, float))]
    diffs = {k: (before[k], summary[k]) for k in keys
             if not (before[k] == summary[k] or (math.isnan(before[k]) and math.isnan(summary[k]))
                     or abs(before[k] - summary[k]) <= 1e-9)}
    if diffs:
        log.warning("differs from the test metrics recorded at training time: %s", diffs)
    else:
        log.info("matches the %d test metrics recorded at the end of training", len(keys))
