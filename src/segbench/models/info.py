"""Model facts: parameters, size, FLOPs per image, inference latency and peak memory.

`model_facts()` is cheap (no real forward pass: FLOPs are counted on meta tensors) and goes into
every run's metrics.json; `measure()` times real forward passes for `segbench info`.

- params / trainable_params: parameter counts; size_mb: parameters and buffers in MiB.
- flops: torch.utils.flop_counter's count for one image at the given size, wrapper (padding)
  included: convolutions and matrix products, 2 FLOPs per multiply-add (so GFLOPs = 2 x GMACs).
- latency_ms: median wall time of one forward pass of a batch (eval mode, no_grad), after warm-up.
- peak_mb: the most memory held by tensors during that forward pass, weights included
  (CUDA: the caching allocator's peak; CPU: torch's MemTracker, which follows every tensor).
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)


def count_params(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def size_mb(model: nn.Module) -> float:
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return size / 2**20


def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int | None:
    """FLOPs of one forward pass of one (C, H, W) image; None when the counter cannot run it."""
    was_training = model.training
    model.eval()
    try:
        # Meta tensors carry shapes only: the count costs no arithmetic and no memory.
        meta = {name: torch.empty_like(t, device="meta")
                for name, t in [*model.named_parameters(), *model.named_buffers()]}
        x = torch.empty((1, *input_shape), device="meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            functional_call(model, meta, (x,), strict=False)
        return int(counter.get_total_flops())
    except Exception as err:  # an op without a meta kernel: count on a real image instead
        log.debug("FLOP count on meta tensors failed (%s); counting on a real image", err)
        try:
            device = next(model.parameters()).device
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(torch.rand((1, *input_shape), device=device))
            return int(counter.get_total_flops())
        except Exception as err2:
            log.warning("cannot count FLOPs of this model: %s", err2)
            return None
    finally:
        model.train(was_training)


def model_facts(model: nn.Module, input_shape: tuple[int, int, int] | None = None) -> dict:
    """The facts every run's metrics.json records (cheap: no real forward pass)."""
    total, trainable = count_params(model)
    facts: dict[str, Any] = {"params": total, "trainable_params": trainable,
                             "size_mb": round(size_mb(model), 3)}
    if input_shape is not None:
        channels, height, width = (int(s) for s in input_shape)
        flops = count_flops(model, (channels, height, width))
        facts.update(flops=flops, gflops=None if flops is None else round(flops / 1e9, 3),
                     flops_input=list(input_shape))
    return facts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@torch.no_grad()
def inference_latency(model: nn.Module, input_shape: tuple[int, int, int], device: torch.device,
                      amp_dtype=None, warmup: int = 5, repeats: int = 20) -> float:
    """Median milliseconds of one forward pass of one image (eval mode, the run's autocast), the
    latency a run's metrics.json records for the report's cost columns."""
    was_training = model.training
    model.eval()
    x = torch.rand((1, *input_shape), device=device)
    times = []
    cast = (contextlib.nullcontext() if amp_dtype is None
            else torch.autocast(device.type, dtype=amp_dtype))
    with cast:
        for i in range(warmup + max(1, repeats)):
            start = time.perf_counter()
            model(x)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    model.train(was_training)
    return round(1000 * statistics.median(times), 3)


@torch.no_grad()
def measure(model: nn.Module, input_shape: tuple[int, int, int], batch_size: int,
            device: torch.device, warmup: int = 2, repeats: int = 10) -> dict:
    """Median latency and peak memory of forward passes of a batch on `device` (eval mode)."""
    model = model.to(device).eval()
    x = torch.rand((batch_size, *input_shape), device=device)
    for _ in range(warmup):
        model(x)
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        model(x)
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"batch_size": batch_size, "latency_ms": round(1000 * statistics.median(times), 3),
            "latency_ms_per_image": round(1000 * statistics.median(times) / batch_size, 3),
            "peak_mb": _peak_memory_mb(model, x, device), "device": str(device)}


def _peak_memory_mb(model: nn.Module, x: torch.Tensor, device: torch.device) -> float | None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        model(x)
        _sync(device)
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 2)
    try:  # a private tool of torch, absent from some releases (and builds without distributed)
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:
        return None
    try:
        tracker = MemTracker()
        tracker.track_external(model, x)
        with tracker:
            model(x)
        return round(tracker.get_tracker_snapshot("peak")[device]["Total"] / 2**20, 2)
    except Exception as err:  # a torch release that changed this tool: report nothing, not fail
        log.warning("cannot measure peak memory on %s: %s", device, err)
        return None


# ---- `segbench info` ----------------------------------------------------------------------------

COLUMNS = [  # (key, header, format)
    ("label", "model", "{}"),
    ("activation", "activation", "{}"),
    ("input", "input", "{}"),
    ("params", "params", "{:,}"),
    ("trainable_params", "trainable", "{:,}"),
    ("size_mb", "size MB", "{:.1f}"),
    ("gflops", "GFLOPs/image", "{:.2f}"),
    ("latency_ms", "latency ms", "{:.1f}"),
    ("batch_size", "batch", "{}"),
    ("peak_mb", "peak MB", "{:.0f}"),
    ("device", "device", "{}"),
]


def model_label(model_cfg) -> str:
    """A short name that tells configurations of one model apart (arch, preset, encoder)."""
    parts = [str(model_cfg.name)]
    if model_cfg.name == "smp":
        parts.append(str(model_cfg.arch))
    for key in ("preset", "block", "skip", "encoder"):
        if model_cfg.get(key):
            parts.append(str(model_cfg[key]))
    if model_cfg.name == "classic_unet":
        parts.append(f"w{model_cfg.base_width}")
    return " ".join(parts)


def format_table(rows: list[dict]) -> str:
    cells = [[header for _, header, _ in COLUMNS]]
    for row in rows:
        cells.append([fmt.format(row[key]) if row.get(key) is not None else "-"
                      for key, _, fmt in COLUMNS])
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def collect_rows(sweep_dir: Path) -> list[dict]:
    """The info.json rows of a sweep's jobs, in job order."""
    found = [p for p in Path(sweep_dir).glob("*/info.json")]
    found.sort(key=lambda p: (not p.parent.name.isdigit(),
                              int(p.parent.name) if p.parent.name.isdigit() else 0,
                              p.parent.name))
    return [json.loads(p.read_text()) for p in found]


class InfoTable(Callback):
    """Hydra callback: after `segbench info -m model=a,b,...`, one table of all the jobs."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_rows(sweep_dir)
        if rows:
            print(f"\n{len(rows)} configurations ({sweep_dir}):\n{format_table(rows)}", flush=True)
