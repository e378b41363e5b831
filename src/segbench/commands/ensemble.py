"""`segbench ensemble <folder or run dirs>`: the mean of several runs' foreground probabilities on
their shared test split, written as a run-like directory that `segbench report` reads (see
segbench.ensemble for which runs can be averaged)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from segbench import SegbenchError
from segbench.cli_args import path_arguments, quote

CONFIG = "ensemble"
HELP = "average several runs' probabilities on their test split: ensemble <folder or run dirs>"

log = logging.getLogger("segbench.ensemble")

_paths = path_arguments("runs", ("output", "data_root"), many=True, must_exist=("runs",))


def _runs_value(argv: list[str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    line = next(a for a in argv if a.startswith("runs="))
    value = OverridesParser.create().parse_override(line).value()
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def prepare(argv: list[str]) -> list[str]:
    """Positional paths -> `runs`; without `output`, the ensemble goes beside the runs."""
    out = _paths(argv)
    if any(a.startswith("output=") for a in out) or not any(a.startswith("runs=") for a in out):
        return out
    runs = [os.path.abspath(Path(r).expanduser()) for r in _runs_value(out)]
    base = Path(runs[0]) if len(runs) == 1 else Path(os.path.commonpath(runs))
    tta = any(a.replace(" ", "") in ("eval.tta=true", "eval.tta=True") for a in out)
    return out + [quote("output", str(base / ("ensemble_tta" if tta else "ensemble")))]


def run(cfg) -> dict:
    from omegaconf import OmegaConf

    from segbench import rundir
    from segbench.data import build_datasets, native_masks, select_splits
    from segbench.data.splits import split_document
    from segbench.engine.device import resolve_device
    from segbench.engine.evaluate import evaluation_record, metric_line, pixel_spacing, test_split
    from segbench.ensemble import check_members, find_members, load_ensemble, shared_setting
    from segbench.models.info import inference_latency
    from segbench.settings import check_threshold

    runs = list(cfg.runs) if OmegaConf.is_list(cfg.runs) else [cfg.runs]
    members, searched = find_members(runs)
    out = rundir.RunDir(Path(cfg.output).expanduser())
    inside = [m for m in members if out.path.resolve() == m.path.resolve()]
    if inside:
        raise SegbenchError(f"output={out.path} is one of the runs; choose another folder")
    common = check_members(members, same_test=True, one_configuration=searched)
    for line in common["differences"]:
        log.info("members differ in %s", line)
    cfg_eval = cfg.eval
    threshold = check_threshold(shared_setting(members, "threshold", cfg_eval.threshold))
    native = bool(shared_setting(members, "native_resolution", cfg_eval.native_resolution))
    surface_on = bool(shared_setting(members, "surface_metrics", cfg_eval.surface_metrics))
    tta = bool(cfg_eval.tta)
    device = resolve_device(cfg.device)
    ensemble, states = load_ensemble(members, cfg.checkpoint, device)

    train_cfg = members[0].read_config()
    if cfg.data_root:
        train_cfg.dataset.root = str(Path(cfg.data_root).expanduser())
    spacing = pixel_spacing(train_cfg, native)
    splits = select_splits(train_cfg, {"test": common["test"]}, ["test"])
    data = build_datasets(train_cfg, splits, Path(train_cfg.paths.cache), augment=False)
    groups = [s.group for s in splits["test"]]
    t = train_cfg.trainer
    batch = int(cfg.batch_size or t.get("eval_batch_size") or 2 * int(t.batch_size))
    log.info("ensemble of %d runs (%s checkpoints%s) on %d test images: %s", len(members),
             cfg.checkpoint, ", flip TTA" if tta else "", len(splits["test"]),
             ", ".join(m.name() for m in members))
    out.path.mkdir(parents=True, exist_ok=True)
    summary = test_split(ensemble, data["test"], device, out_dir=out.path, threshold=threshold,
                         tta=tta, batch_size=batch, num_predictions=int(cfg_eval.num_predictions),
                         groups=groups if any(groups) else None, surface_metrics=surface_on,
                         pixel_spacing=spacing,
                         surface_workers=train_cfg.eval.get("surface_workers", "auto"),
                         native_masks=native_masks(train_cfg, splits["test"]) if native else None)

    records = [m.read_metrics() or {} for m in members]
    facts = [r.get("model", {}) for r in records]

    def total(key):
        values = [f.get(key) for f in facts]
        return None if any(v is None for v in values) else sum(values)

    shape = (int(train_cfg.model.get("in_channels", 3)), int(train_cfg.resolution.height),
             int(train_cfg.resolution.width))
    member_rows = [{"run": str(m.path), "name": m.name(), "seed": s.get("seed"),
                    "fold": s.get("dataset.fold") if s.get("dataset.folds", "null") != "null" else None,
                    "epoch": st.get("epoch"), "test_dice": r.get("test", {}).get("dice")}
                   for m, s, st, r in zip(members, [m.settings() for m in members], states, records)]
    result = {
        "test": summary,
        "ensemble": {"members": len(members), "checkpoint": cfg.checkpoint, "tta": tta,
                     "method": "mean of the members' sigmoid probabilities, then the threshold"},
        **evaluation_record(threshold, tta, surface_on, spacing, native),
        "model": {"name": "ensemble", "params": total("params"), "flops": total("flops"),
                  "gflops": total("gflops"),
                  "latency_ms": inference_latency(ensemble, shape, device)
                  if cfg_eval.get("latency", True) else None},
        "split_sizes": {"test": len(splits["test"])},
        "train_seconds": sum(r.get("train_seconds", 0.0) for r in records),
        "members": member_rows,
    }
    # A run-like directory: the first member's config with what the ensemble changed, so that
    # `segbench report` tells it apart from the single models by its settings.
    config = OmegaConf.to_container(train_cfg, resolve=True)
    config["ensemble"] = {"members": len(members), "checkpoint": cfg.checkpoint}
    config.setdefault("eval", {}).update(tta=tta, threshold=threshold, native_resolution=native,
                                         surface_metrics=surface_on)
    config.setdefault("dataset", {})["fold"] = None
    merged = OmegaConf.create(config)
    for line in common["differences"]:  # members of several configurations: no single value
        OmegaConf.update(merged, line.split(":", 1)[0], "mixed", merge=False)
    out.write_config(OmegaConf.to_container(merged))
    out.write_split(split_document(splits, {"dataset": train_cfg.dataset.name,
                                            "ensemble_of": [str(m.path) for m in members]}))
    rundir.write_json(out / rundir.ENSEMBLE, {"members": member_rows,
                                               "differences": common["differences"]})
    out.write_metrics(result)
    out.set_status("finished")
    log.info("test (ensemble of %d): %s", len(members), metric_line(summary))
    log.info("wrote %s", out.path)
    return result
