"""`segbench eval run_dir=<dir>`: the run's checkpoint on its recorded split, once more.

Results go to <run_dir>/eval/<time>/ (metrics.json, per_case.csv, figures); a plain re-evaluation
of best.pt on the test split is compared with the metrics recorded at the end of training.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from segbench import SegbenchError
from segbench.cli_args import path_arguments

CONFIG = "eval"
HELP = "re-evaluate a run's best checkpoint: eval run_dir=<dir> [eval.tta=true]"

prepare = path_arguments("run_dir", must_exist=("run_dir",))

log = logging.getLogger("segbench.eval")

# Keys of a test summary that describe the run rather than the model's predictions.
NOT_COMPARED = ("surface_seconds",)


def _own(value, fallback):
    """A command option, or the run's own setting where the option is null."""
    return fallback if value is None else value


def run(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from segbench import rundir
    from segbench.data import build_datasets, native_masks
    from segbench.data.pinning import recorded_splits
    from segbench.engine.device import autocast_dtype, resolve_device
    from segbench.engine.evaluate import evaluation_record, metric_line, pixel_spacing, test_split
    from segbench.models import load_trained
    from segbench.settings import check_threshold

    run = rundir.RunDir.open(cfg.run_dir, needs=(rundir.CONFIG, rundir.SPLIT))
    if cfg.split not in ("test", "val"):
        raise SegbenchError(f"split={cfg.split!r}; use test or val")
    run.checkpoint_path(cfg.checkpoint)  # best | last
    run.warn_if_unfinished("eval")
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    train_cfg = run.read_config()
    if cfg.data_root:
        train_cfg.dataset.root = str(Path(cfg.data_root).expanduser())
    own = train_cfg.get("eval", {})
    threshold = check_threshold(_own(cfg.eval.threshold, own.get("threshold")))
    tta = bool(_own(cfg.eval.tta, own.get("tta", False)))
    surface_on = bool(_own(cfg.eval.get("surface_metrics"), own.get("surface_metrics", False)))
    workers = _own(cfg.eval.get("surface_workers"), own.get("surface_workers", "auto"))
    native = bool(_own(cfg.eval.get("native_resolution"), own.get("native_resolution", False)))
    spacing = pixel_spacing(train_cfg, native)
    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype(device, train_cfg.trainer.precision)

    model, state, _ = load_trained(run, cfg.checkpoint, device, train_cfg)
    splits = recorded_splits(train_cfg, run.read_split(), [cfg.split], where=f"run {run.path}",
                             fix="point data_root=<dir> at the data it was trained on")
    data = build_datasets(train_cfg, splits, Path(train_cfg.paths.cache), augment=False)
    groups = [s.group for s in splits[cfg.split]]
    batch = int(cfg.batch_size or train_cfg.trainer.eval_batch_size or 2 * train_cfg.trainer.batch_size)
    summary = test_split(model, data[cfg.split], device, out_dir=out_dir, threshold=threshold,
                         tta=tta, batch_size=batch, amp_dtype=amp_dtype,
                         num_predictions=int(cfg.eval.num_predictions),
                         groups=groups if any(groups) else None, surface_metrics=surface_on,
                         pixel_spacing=spacing, surface_workers=workers,
                         native_masks=native_masks(train_cfg, splits[cfg.split]) if native else None)
    result = {"split": cfg.split, "checkpoint": cfg.checkpoint, "epoch": state.get("epoch"),
              **evaluation_record(threshold, tta, surface_on, spacing, native), cfg.split: summary}
    run.write_metrics(result, folder=out_dir)
    log.info("%s %s (epoch %s): %s", cfg.split, cfg.checkpoint, state.get("epoch"), metric_line(summary))
    if cfg.split == "test" and cfg.checkpoint == "best":
        _compare_with_training(run.read_metrics(), summary, threshold, tta, native)
    log.info("wrote %s", out_dir)
    return result


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
