"""segbench's training loop against a plain PyTorch loop on the same batches, on one device.

    python scripts/bench_gpu.py                                   # U-Net/ResNet-34 at 256 px, cuda
    python scripts/bench_gpu.py --device cpu --images 32 --batch 8 --resolution 128 \\
        --variants fp32,bf16,fp32-w2                              # what fits a small CPU
    python scripts/bench_gpu.py --json bench.json                 # the figures as JSON too

For U-Net/ResNet-34 (the default `model=unet`) it prints, per variant (precision, channels-last,
data-loader workers):

- train images/s of segbench's loop (`engine.trainer.train_one_epoch`: per-image confusion counts,
  the running-loss/NaN check every 25 steps, GradScaler, the seeded sampler) and of a plain loop
  (forward, loss, backward, step) over the same DataLoader, and their ratio: segbench's overhead;
- peak GPU memory;

then, once, the evaluation of `--images` images with the fastest variant's precision and layout:
inference alone (forward passes), segbench's `evaluate()` (counts, AUROC histogram, kept masks)
and `evaluate()` + HD95/ASSD (`surface.surface_metrics`), each relative to inference alone.

The images are synthetic endoscopy-like frames (segbench.data.synthetic, a few rendered and tiled)
augmented with the `basic` preset, as in training; the model starts from random weights (no
download). Each loop runs a warm-up epoch (cudnn autotuning, worker start-up) before the timed one.
Under 3 minutes on one GPU with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from segbench import config_dir, surface
from segbench.data.dataset import SeededShuffleSampler, SegmentationDataset
from segbench.data.synthetic import render
from segbench.data.transforms import build_augmentation
from segbench.engine.device import autocast, resolve_device
from segbench.engine.evaluate import eval_loader, evaluate
from segbench.engine.trainer import Compute, Optimisation, StepSettings, train_one_epoch
from segbench.losses import build_loss
from segbench.models import build_model
from segbench.optim import build_optimizer, build_scheduler

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_variant(name: str, default_workers: int) -> dict:
    """`bf16-cl-w8`: precision, then options: cl (channels-last), w<N> (workers); `-w` alone:
    the default worker count."""
    parts = name.split("-")
    variant = {"name": name, "precision": parts[0], "channels_last": "cl" in parts[1:], "workers": 0}
    if parts[0] not in PRECISIONS:
        raise SystemExit(f"variant {name}: precision must be one of {', '.join(PRECISIONS)}")
    for p in parts[1:]:
        if p.startswith("w"):
            variant["workers"] = int(p[1:]) if p[1:] else default_workers
        elif p != "cl":
            raise SystemExit(f"variant {name}: unknown option {p} (cl, w<N>)")
    return variant


def frames(n: int, size: int, distinct: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """n synthetic frames at size x size: `distinct` rendered ones, tiled (rendering is slow)."""
    rendered = [render(np.random.default_rng(i), size, 0.5) for i in range(min(n, distinct))]
    images = np.stack([rendered[i % len(rendered)][0] for i in range(n)])
    masks = np.stack([rendered[i % len(rendered)][1] for i in range(n)])
    return images, masks


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_epoch(model, loader, loss_fn, optimizer, scaler, device, amp_dtype, channels_last) -> None:
    """The loop a tutorial writes: nothing but forward, loss, backward and step."""
    model.train()
    for images, masks, _ in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target = masks.to(device, non_blocking=True).float()
        with autocast(device, amp_dtype):
            logits = model(images)
        loss = loss_fn(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def bench_variant(model, data, loss_fn, optimizer, cfg, v: dict, device, batch: int,
                  repeats: int) -> dict:
    """images/s of segbench's loop and of the plain loop over the same DataLoader (after a
    warm-up epoch each; the best of `repeats` epochs, the loops taking turns), their ratio and the
    peak GPU memory."""
    amp = PRECISIONS[v["precision"]]
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    sampler = SeededShuffleSampler(len(data))
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch, sampler=sampler, num_workers=v["workers"],
        pin_memory=device.type == "cuda", persistent_workers=v["workers"] > 0, drop_last=True)
    schedule = build_scheduler(cfg.scheduler, optimizer, max_epochs=10, steps_per_epoch=len(loader))

    def ours():
        train_one_epoch(model, loader, Optimisation(loss_fn, optimizer, schedule, scaler),
                        Compute(device, amp, v["channels_last"]), StepSettings(log_every=25), 1)

    def plain():
        plain_epoch(model, loader, loss_fn, optimizer, scaler, device, amp, v["channels_last"])

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row = {**v}
    loops = {"plain": plain, "segbench": ours}
    for fn in loops.values():
        sampler.set_seed(0)
        fn()  # warm-up: cudnn autotuning, worker start-up
    best = dict.fromkeys(loops, float("inf"))
    for _ in range(repeats):
        for label, fn in loops.items():
            sampler.set_seed(1)  # both loops time the same batches
            best[label] = min(best[label], timed(fn, device))
    for label in loops:
        row[label] = len(loader) * batch / best[label]
    row["overhead"] = row["plain"] / row["segbench"]
    row["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--images", type=int, default=256, help="images per timed epoch")
    ap.add_argument("--repeats", type=int, default=2, help="timed epochs per loop (the best counts)")
    ap.add_argument("--variants", default=None,
                    help="comma-separated: fp32, bf16-cl, fp16-cl-w8, ... (default: a set per device)")
    ap.add_argument("--model", default="unet", help="a model config name (default unet: ResNet-34)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    workers = min(8, max(1, (os.cpu_count() or 2) - 1))
    if args.variants is None:
        args.variants = ("fp32,fp32-cl,bf16,bf16-cl,fp16-cl,bf16-cl-w,fp32-cl-w"
                         if device.type == "cuda" else "fp32,bf16,fp32-w")
    variants = [parse_variant(v, workers) for v in args.variants.split(",")]

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}", f"resolution.height={args.resolution}",
                                          f"resolution.width={args.resolution}", "augmentation=basic"])
    size = (args.resolution, args.resolution)
    t0 = time.perf_counter()
    images, masks = frames(args.images, args.resolution)
    data = SegmentationDataset(images, masks, [str(i) for i in range(len(images))],
                               build_augmentation(cfg.augmentation, size))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"device {device} ({name})  torch {torch.__version__}  cpus {os.cpu_count()}  "
          f"threads {torch.get_num_threads()}")
    print(f"model {cfg.model.name}/{cfg.model.get('encoder', '-')}  {args.resolution}x{args.resolution}  "
          f"batch {args.batch}  {args.images} images per epoch (frames made in {time.perf_counter() - t0:.1f}s)")
    print(f"{'variant':<14}{'segbench img/s':>16}{'plain img/s':>13}{'overhead':>10}{'peak MiB':>10}")

    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False).to(device)
    loss_fn = build_loss(cfg.loss).to(device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    results = {"device": str(device), "device_name": name, "torch": torch.__version__,
               "model": f"{cfg.model.name}/{cfg.model.get('encoder', '-')}",
               "resolution": args.resolution, "batch": args.batch, "images": args.images,
               "repeats": args.repeats,
               "variants": []}
    for v in variants:
        amp = PRECISIONS[v["precision"]]
        if amp is torch.float16 and device.type != "cuda":
            print(f"{v['name']:<14}  skipped: fp16 autocast needs CUDA")
            continue
        if amp is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            print(f"{v['name']:<14}  skipped: this GPU has no bf16")
            continue
        model = model.to(memory_format=torch.channels_last if v["channels_last"] else torch.contiguous_format)
        row = bench_variant(model, data, loss_fn, optimizer, cfg, v, device, args.batch, args.repeats)
        results["variants"].append(row)
        peak = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "-"
        print(f"{v['name']:<14}{row['segbench']:>16.1f}{row['plain']:>13.1f}{row['overhead']:>10.3f}{peak:>10}")

    # Evaluation of the same images (no augmentation) with the fastest variant's settings.
    best = max(results["variants"], key=lambda r: r["segbench"])
    amp, cl = PRECISIONS[best["precision"]], best["channels_last"]
    model = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
    test = SegmentationDataset(images, masks, [str(i) for i in range(len(images))])
    loader = eval_loader(test, 2 * args.batch, device, best["workers"])

    @torch.no_grad()
    def inference():
        model.eval()
        for x, _, _ in loader:
            x = x.to(device, non_blocking=True)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                model(x)

    kept = {}

    def evaluation():
        kept["result"] = evaluate(model, loader, device, amp_dtype=amp, channels_last=cl,
                                  scores=True, keep_predictions=True)

    inference()  # warm-up of the eval shapes
    times = {"inference": min(timed(inference, device) for _ in range(args.repeats)),
             "evaluate": min(timed(evaluation, device) for _ in range(args.repeats))}
    times["surface"] = timed(lambda: surface.surface_metrics(
        kept["result"].predictions, test.masks, None, workers=min(8, os.cpu_count() or 1)), device)
    times["evaluate+hd95"] = times["evaluate"] + times["surface"]
    results["eval"] = {"precision": best["precision"], "channels_last": cl, **{
        f"{k}_seconds": round(t, 3) for k, t in times.items()}, **{
        f"{k}_relative": round(t / times["inference"], 2) for k, t in times.items()}}
    print(f"eval of {len(test)} images ({best['precision']}{', channels-last' if cl else ''}): "
          f"inference {times['inference']:.2f}s ({len(test) / times['inference']:.0f} img/s)  "
          f"evaluate {times['evaluate']:.2f}s (x{times['evaluate'] / times['inference']:.2f})  "
          f"evaluate+HD95 {times['evaluate+hd95']:.2f}s (x{times['evaluate+hd95'] / times['inference']:.2f};"
          f" HD95/ASSD alone {times['surface']:.2f}s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    from segbench import SegbenchError

    try:
        main()
    except SegbenchError as err:
        raise SystemExit(f"bench_gpu.py: {err}") from None
