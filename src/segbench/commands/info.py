"""`segbench info model=<name> resolution=<r>`: a model's parameters, size, FLOPs, latency and
peak memory (info.json; `-m` ends with one table of every job, see segbench.models.info)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from segbench import SegbenchError
from segbench.atomic import write_atomic

CONFIG = "info"
HELP = ("a model's parameters, size, FLOPs, latency and peak memory: "
        "info model=<name> (-m to compare)")

# torch, Hydra and the segbench modules that import them load inside the functions that use them, so
# that `segbench --help` and argument errors answer at once.

log = logging.getLogger("segbench.info")


def run(cfg) -> dict:
    """`segbench info model=<name> resolution=<r>`: one model's facts as a table (and info.json)."""
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from segbench.models import build_model
    from segbench.models.info import format_table, measure, model_facts, model_label
    from segbench.runtime.device import resolve_device

    if int(cfg.batch_size) < 1 or int(cfg.repeats) < 1:
        raise SegbenchError("batch_size and repeats must be >= 1")
    model = build_model(cfg)
    shape = (int(model.mean.shape[1]), int(cfg.resolution.height), int(cfg.resolution.width))
    row = {"label": model_label(cfg.model), "activation": cfg.activation.name,
           "input": "x".join(map(str, shape)), **model_facts(model, shape)}
    if cfg.latency:
        device = resolve_device(cfg.device)
        try:
            row.update(measure(model, shape, int(cfg.batch_size), device, int(cfg.warmup),
                               int(cfg.repeats)))
        except torch.OutOfMemoryError:
            raise SegbenchError(f"out of memory running a batch of {cfg.batch_size} at "
                                f"{shape[1]}x{shape[2]} on {device}; lower batch_size or "
                                "resolution, or set latency=false") from None
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    write_atomic(out_dir / "info.json", json.dumps(row, indent=2))
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # the sweep's table comes at the end (InfoTable)
        log.info("%s: %s parameters, %s GFLOPs per image", row["label"], f"{row['params']:,}",
                 row["gflops"])
    else:
        print(format_table([row]), flush=True)
    return row
