"""Training and inference throughput of one configuration on the current device.

    python scripts/bench_train.py model=unet resolution=64 trainer.batch_size=16
    python scripts/bench_train.py experiment=quickstart trainer.precision=bf16

Composes the real config (any `segbench train` override works), builds the real model, loss and
optimizer, and times training steps and inference on random uint8 batches (no data loading: this
measures the model and the loop's per-step work). Prints images/s for both and the peak memory.
"""

from __future__ import annotations

import sys
import time

import torch
from hydra import compose, initialize_config_dir

from segbench import config_dir
from segbench.losses import build_loss
from segbench.metrics import confusion
from segbench.models import build_model
from segbench.optim import build_optimizer
from segbench.runtime.device import autocast, autocast_dtype, resolve_device


def main(overrides: list[str], steps: int = 20, warmup: int = 3) -> None:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    device = resolve_device(cfg.trainer.device)
    amp = autocast_dtype(device, cfg.trainer.precision)
    model = build_model(cfg).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.loss)
    opt = build_optimizer(cfg.optimizer, model.parameters())
    b, c = int(cfg.trainer.batch_size), int(cfg.dataset.channels)
    h, w = int(cfg.resolution.height), int(cfg.resolution.width)
    x = torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, device=device)
    y = (torch.rand(b, 1, h, w, device=device) > 0.8).float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        with autocast(device, amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        confusion(torch.sigmoid(logits.detach().float()), y)

    @torch.no_grad()
    def eval_step():
        with autocast(device, amp):
            confusion(torch.sigmoid(model(x).float()), y)

    results = {}
    for name, step, mode in (("train", train_step, model.train), ("eval", eval_step, model.eval)):
        mode()
        for _ in range(warmup):
            step()
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        results[name] = steps * b / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    print(f"model {cfg.model.name}/{cfg.model.get('encoder', '-')}  {h}x{w}  batch {b}"
          f"  device {device}  precision {amp or 'fp32'}  threads {torch.get_num_threads()}")
    print(f"train {results['train']:.1f} images/s   eval {results['eval']:.1f} images/s"
          f"   peak GPU memory {peak:.0f} MiB")


if __name__ == "__main__":
    main(sys.argv[1:])
