"""`segbench export run_dir=<dir> format=onnx|exported_program|torchscript`: a run's checkpoint as
a deployable model, checked against PyTorch (see segbench.models.export), with a model card
beside it (<file>.json and <file>.md)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import cast

from segbench import SegbenchError
from segbench.atomic import atomic_path, write_atomic
from segbench.cli_args import path_arguments
from segbench.runs.rundir import PER_CASE, RunDir

# torch, Hydra, OmegaConf and the segbench modules that import them load inside the functions that
# use them, so that `segbench --help` and argument errors answer at once.

CONFIG = "export"
HELP = ("export a run's checkpoint (ONNX, torch.export, TorchScript) with a model card: "
        "export run_dir=<dir> format=onnx")

prepare = path_arguments("run_dir", must_exist=("run_dir",))

log = logging.getLogger("segbench.export")


def run(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from segbench.models import load_trained
    from segbench.models.export import SUFFIX, card_markdown, export_model, model_card
    from segbench.models.registry import output_channels

    run_dir = RunDir.open(cfg.run_dir)
    if cfg.format not in SUFFIX:
        raise SegbenchError(f"format={cfg.format!r}; use format=onnx, format=exported_program "
                            "(torch.export) or format=torchscript")
    run_dir.checkpoint_path(cfg.checkpoint)  # best | last
    run_dir.warn_if_unfinished("export")
    train_cfg = run_dir.read_config()
    height = int(cfg.height or train_cfg.resolution.height)
    width = int(cfg.width or train_cfg.resolution.width)
    # The run's model, built for the export size (its padding follows the size).
    train_cfg.resolution.height, train_cfg.resolution.width = height, width
    model, state, _ = load_trained(run_dir, cfg.checkpoint, "cpu", train_cfg)
    channels = int(model.mean.shape[1])

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    path = Path(cfg.output).expanduser() if cfg.output else out_dir / f"model{SUFFIX[cfg.format]}"
    with atomic_path(path) as tmp:  # a kill never leaves half a model file
        check = export_model(model, cfg.format, tmp, (channels, height, width),
                             opset=int(cfg.opset), atol=float(cfg.atol))
    diff = check.get("max_abs_diff")
    if diff is not None and not diff <= float(cfg.atol):
        raise SegbenchError(
            f"the exported {cfg.format} model differs from PyTorch by up to {diff:.3g} (> atol "
            f"{cfg.atol}); {path} was written but should not be trusted. Try "
            "format=exported_program or another opset="
        )
    free = "height" in check["dynamic"]
    size = ["height", "width"] if free else [height, width]
    info = {
        "file": str(path.resolve()), "format": cfg.format, "run_dir": str(run_dir.path.resolve()),
        "checkpoint": cfg.checkpoint, "epoch": state.get("epoch"), "model": train_cfg.model.name,
        "input": {"name": "image", "shape": ["batch", channels, *size], "dtype": "float32",
                  "range": [0.0, 1.0], "exported_at": [height, width]},
        "output": {"name": "logits", "shape": ["batch", output_channels(train_cfg), *size],
                   "foreground": f"sigmoid(logits) >= {train_cfg.eval.threshold}"},
        "normalisation": {"mean": [round(float(v), 6) for v in model.mean.flatten()],
                          "std": [round(float(v), 6) for v in model.std.flatten()],
                          "per_image": bool(model.per_image)},
        "opset": int(cfg.opset) if cfg.format == "onnx" else None,
        "atol": float(cfg.atol), **check,
    }
    config = cast(dict, OmegaConf.to_container(run_dir.read_config(), resolve=True))
    info["card"] = model_card(info, config, run_dir.read_metrics(), run_dir.read_split(),
                              _rows(run_dir.path / PER_CASE))
    write_atomic(path.with_name(path.name + ".json"), json.dumps(info, indent=2))
    write_atomic(path.with_name(path.name + ".md"), card_markdown(info, info["card"]))
    log.info("wrote %s (%s, input N x %d x %s float in [0, 1]) and its model card (.json, .md); %s",
             path, cfg.format, channels, "H x W (any)" if free else f"{height} x {width}",
             f"max |difference| from PyTorch {diff:.2e} on a batch of {check['check_batch'][0]} "
             f"({check['checked_with']})" if diff is not None else check["checked_with"])
    return info


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
