"""segbench's training loop against a plain PyTorch loop on the same batches, on one device.

    python scripts/bench_gpu.py                                   # U-Net/ResNet-34 at 256 px, cuda
    python scripts/bench_gpu.py --device cpu --images 32 --batch 8 --resolution 64 \\
        --variants fp32,fp32-dev                                  # what fits a small CPU
    python scripts/bench_gpu.py --variants bf16-cl-dev,bf16-cl-dev-c --batch 32   # device path
    python scripts/bench_gpu.py --study --study-jobs-per-gpu 4   # 16 runs, one by one vs packed
    python scripts/bench_gpu.py --json bench.json                 # the figures as JSON too

For U-Net/ResNet-34 (the default `model=unet`) it prints, per variant (precision, channels-last,
data path, compile, data-loader workers):

- train images/s of segbench's loop (`engine.trainer.train_one_epoch`: per-image confusion counts,
  the running-loss/NaN check every 25 steps, GradScaler, the seeded sampler) and of a plain loop
  (forward, loss, backward, step) over the same batches, and their ratio: segbench's overhead;
- the percentage of the device's speed of light: training FLOPs per image (forward + backward,
  counted with torch.utils.flop_counter) x images/s / the device's dense bf16 peak (PEAK_TFLOPS);
- x seed: images/s over the seed-style loop (the plain loop, fp32, on the DataLoader path with
  albumentations), measured first in the same run;
- peak GPU memory;

then, once, the evaluation of `--images` images with the fastest variant's precision and layout:
inference alone (forward passes), segbench's `evaluate()` (counts, AUROC histogram, kept masks)
and `evaluate()` + HD95/ASSD (`surface.surface_metrics`), each relative to inference alone; and,
with `--profile`, where a device-path step's time goes (drawing and augmenting the batch, forward +
backward, optimizer step), each phase timed with a device synchronisation around it.

`--study` times instead a study of `--study-runs` tiny-epoch runs at 128 px (`segbench train -m
seed=0,...`) one job at a time and then with `hydra/launcher=packed` (several jobs per GPU).

The images are synthetic endoscopy-like frames (segbench.data.synthetic, a few rendered and tiled)
augmented with the `basic` preset (`--augmentation`), as in training; the model starts from random
weights (no download). Each loop runs a warm-up epoch (cudnn autotuning, worker start-up,
compilation) before the timed ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from segbench import config_dir
from segbench.data.dataset import SeededShuffleSampler, SegmentationDataset
from segbench.data.resident import ResidentBatches
from segbench.data.synthetic import render
from segbench.data.tensor_augment import DeviceAugmentation
from segbench.data.transforms import build_augmentation
from segbench.engine.trainer import Compute, Optimisation, StepSettings, train_one_epoch
from segbench.inference.loop import Collect, Subject, eval_loader, evaluate
from segbench.losses import build_loss
from segbench.metrics import surface
from segbench.models import build_model
from segbench.optim import build_optimizer, build_scheduler
from segbench.runtime.device import autocast, resolve_device

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Dense (no sparsity) bf16 tensor-core peaks in TFLOPS, from the vendors' data sheets: the speed of
# light that images/s is measured against. The first name that is part of the device's wins.
PEAK_TFLOPS = {"H200": 989, "H100 SXM": 989, "H100 NVL": 835, "H100 PCIe": 756, "H100": 756,
               "GH200": 989, "B200": 2250, "A100": 312, "A10G": 70, "A10": 125, "L40S": 362,
               "L40": 181, "L4": 121, "RTX 4090": 165, "RTX 6000 Ada": 364, "V100": 125, "T4": 65}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def train_flops_per_image(model, loss_fn, shape, device) -> float:
    """Forward + backward FLOPs of one training image (convolutions and matmuls), as `segbench
    info` counts forward FLOPs, on a batch of 2."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randint(0, 256, (2, *shape), dtype=torch.uint8, device=device)
    target = torch.zeros((2, 1, *shape[1:]), device=device)
    with FlopCounterMode(display=False) as counter:
        loss_fn(model(x).float(), target).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def parse_variant(name: str, default_workers: int) -> dict:
    """`bf16-cl-dev-c`, `fp32-w8`: precision, then options: cl (channels-last), dev (the
    device-resident data path), c (torch.compile), w<N> (data-loader workers); `-w` alone: the
    default worker count."""
    parts = name.split("-")
    variant = {"name": name, "precision": parts[0], "channels_last": "cl" in parts[1:],
               "device_data": "dev" in parts[1:], "compile": "c" in parts[1:], "workers": 0}
    if parts[0] not in PRECISIONS:
        raise SystemExit(f"variant {name}: precision must be one of {', '.join(PRECISIONS)}")
    for p in parts[1:]:
        if p.startswith("w"):
            variant["workers"] = int(p[1:]) if p[1:] else default_workers
        elif p not in ("cl", "dev", "c"):
            raise SystemExit(f"variant {name}: unknown option {p} (cl, dev, c, w<N>)")
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


def plain_epoch(
    model, loader, loss_fn, optimizer, scaler, device, amp_dtype, channels_last
) -> None:
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


def make_batches(data, sampler, batch, device, v):
    """The training batches of a variant: device-resident (`dev`) or a DataLoader."""
    if v["device_data"]:
        return ResidentBatches(data, sampler, batch, True, device,
                               DeviceAugmentation.build(data.transform))
    return torch.utils.data.DataLoader(
        data, batch_size=batch, sampler=sampler, num_workers=v["workers"],
        pin_memory=device.type == "cuda", persistent_workers=v["workers"] > 0, drop_last=True)


def bench_variant(model, data, loss_fn, optimizer, cfg, v: dict, device, batch: int,
                  repeats: int, loops=("plain", "segbench")) -> dict:
    """images/s of segbench's loop and of the plain loop over the same DataLoader (after a
    warm-up epoch each; the best of `repeats` epochs, the loops taking turns), their ratio and the
    peak GPU memory."""
    amp = PRECISIONS[v["precision"]]
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    sampler = SeededShuffleSampler(len(data))
    loader = make_batches(data, sampler, batch, device, v)
    if v["compile"]:
        model = torch.compile(model)
    schedule = build_scheduler(cfg.scheduler, optimizer, max_epochs=10, steps_per_epoch=len(loader))

    def ours():
        train_one_epoch(model, loader, Optimisation(loss_fn, optimizer, schedule, scaler),
                        Compute(device, amp, v["channels_last"]), StepSettings(log_every=25), 1)

    def plain():
        plain_epoch(model, loader, loss_fn, optimizer, scaler, device, amp, v["channels_last"])

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row = {**v}
    loops = {k: fn for k, fn in {"plain": plain, "segbench": ours}.items() if k in loops}
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
    if "segbench" in loops:
        row["overhead"] = row["plain"] / row["segbench"]
    row["peak_mib"] = (torch.cuda.max_memory_allocated(device) / 2**20
                       if device.type == "cuda" else None)
    return row


def profile(model, data, loss_fn, optimizer, device, batch: int, name: str) -> dict:
    """Seconds per step of each phase of the plain loop on variant `name`, each phase between two
    device synchronisations (which the real loop does not have: the phases overlap there)."""
    v = parse_variant(name, 0)
    amp = PRECISIONS[v["precision"]]
    model = model.to(memory_format=(torch.channels_last if v["channels_last"]
                                    else torch.contiguous_format))
    step_model = torch.compile(model) if v["compile"] else model
    sampler = SeededShuffleSampler(len(data))
    batches = make_batches(data, sampler, batch, device, v)
    phases = dict.fromkeys(("data", "forward+backward", "optimizer"), 0.0)
    steps = 0
    model.train()
    for epoch in range(2):  # the first warms up
        sampler.set_seed(epoch)
        iterator = iter(batches)
        while True:
            sync(device)
            t0 = time.perf_counter()
            try:
                images, masks, _ = next(iterator)
            except StopIteration:
                break
            images = images.to(device, non_blocking=True)
            if v["channels_last"]:
                images = images.contiguous(memory_format=torch.channels_last)
            target = masks.to(device, non_blocking=True).float()
            sync(device)
            t1 = time.perf_counter()
            with autocast(device, amp):
                logits = step_model(images)
            loss = loss_fn(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            sync(device)
            t2 = time.perf_counter()
            optimizer.step()
            sync(device)
            t3 = time.perf_counter()
            if epoch == 1:
                steps += 1
                for k, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                    phases[k] += dt
    per_step = {k: t / max(1, steps) for k, t in phases.items()}
    total = sum(per_step.values())
    print(f"profile of {name} (batch {batch}, {steps} steps): " + "  ".join(
        f"{k} {1000 * t:.1f} ms ({100 * t / total:.0f}%)" for k, t in per_step.items()))
    return {"variant": name, "batch": batch, "steps": steps,
            **{f"{k}_ms": round(1000 * t, 3) for k, t in per_step.items()}}


def study(args) -> None:
    """A `--study-runs`-run sweep at 128 px (one seed each; U-Net/ResNet-34, synthetic frames),
    one job at a time, then with the packed launcher; wall time of each, runs/hour, speed-up."""
    results = {"runs": args.study_runs, "jobs_per_gpu": args.study_jobs_per_gpu,
               "epochs": args.study_epochs, "train_images": args.study_images}
    seeds = ",".join(str(i) for i in range(args.study_runs))
    common = ["train", "-m", f"seed={seeds}", "dataset=synthetic",
              f"dataset.num_train={args.study_images}",
              "dataset.num_test=32", "dataset.image_size=128", "resolution=128", "model=unet",
              f"trainer.max_epochs={args.study_epochs}", "trainer.batch_size=32", "logger=none",
              "eval.latency=false", "eval.num_predictions=0", "eval.surface_metrics=false",
              "trainer.progress_bar=false", # auto: the packed launcher's GPU slot
              f"trainer.device={'cpu' if args.device == 'cpu' else 'auto'}",
              *args.study_overrides.split()]
    launchers = {"one by one": [],
                 "packed": ["hydra/launcher=packed",
                            f"hydra.launcher.jobs_per_gpu={args.study_jobs_per_gpu}"]}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    with tempfile.TemporaryDirectory() as work:
        # The data are generated and cached once, outside the timings.
        subprocess.run([sys.executable, "-m", "segbench", *common[:1], *common[3:],
                        "trainer.max_epochs=1", "seed=0", f"hydra.run.dir={work}/warm"],
                       check=True, env=env, capture_output=True, text=True)
        for label, extra in launchers.items():
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "segbench", *common, *extra,
                                   f"hydra.sweep.dir={work}/{label.replace(' ', '_')}"],
                                  env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                print(f"{label}: failed (exit {proc.returncode})\n"
                      f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
                results[label] = {"failed": proc.returncode}
                continue
            results[label] = {"seconds": round(seconds, 1),
                              "runs_per_hour": round(3600 * args.study_runs / seconds, 1)}
            print(f"{label}: {args.study_runs} runs in {seconds:.1f}s "
                  f"({3600 * args.study_runs / seconds:.0f} runs/hour)")
    if "seconds" in results.get("one by one", {}) and "seconds" in results.get("packed", {}):
        results["speedup"] = round(
            results["one by one"]["seconds"] / results["packed"]["seconds"], 2)
        print(f"packed ({args.study_jobs_per_gpu} per GPU) is {results['speedup']:.2f}x one by one")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--images", type=int, default=256, help="images per timed epoch")
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed epochs per loop (the best counts)")
    ap.add_argument("--variants", default=None,
                    help="comma-separated: fp32, bf16-cl, fp16-cl-w8, ... "
                         "(default: a set per device)")
    ap.add_argument("--model", default="unet", help="a model config name (default unet: ResNet-34)")
    ap.add_argument("--augmentation", default="basic",
                    help="the training preset (configs/augmentation)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's peak (default: PEAK_TFLOPS by GPU name; none on CPU)")
    ap.add_argument("--profile", default=None, metavar="VARIANT",
                    help="also time the phases of a step of this variant, e.g. bf16-cl-dev")
    ap.add_argument("--study", action="store_true",
                    help="time a study one job at a time and packed, instead of the loops")
    ap.add_argument("--study-runs", type=int, default=16)
    ap.add_argument("--study-jobs-per-gpu", type=int, default=4)
    ap.add_argument("--study-epochs", type=int, default=3)
    ap.add_argument("--study-images", type=int, default=200, help="training images per run")
    ap.add_argument("--study-overrides", default="",
                    help="more overrides for every run of the study, space-separated")
    args = ap.parse_args()
    if args.study:
        return study(args)

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    workers = min(8, max(1, (os.cpu_count() or 2) - 1))
    if args.variants is None:
        args.variants = ("fp32-w,bf16-cl-w,fp32-dev,bf16-cl-dev,bf16-cl-dev-c"
                         if device.type == "cuda" else "fp32,fp32-dev")
    variants = [parse_variant(v, workers) for v in args.variants.split(",")]

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}",
                                          f"resolution.height={args.resolution}",
                                          f"resolution.width={args.resolution}",
                                          f"augmentation={args.augmentation}"])
    size = (args.resolution, args.resolution)
    t0 = time.perf_counter()
    images, masks = frames(args.images, args.resolution)
    data = SegmentationDataset(images, masks, [str(i) for i in range(len(images))],
                               build_augmentation(cfg.augmentation, size))
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else (platform.processor() or platform.machine()))
    print(f"device {device} ({name})  torch {torch.__version__}  cpus {os.cpu_count()}  "
          f"threads {torch.get_num_threads()}")
    print(f"model {cfg.model.name}/{cfg.model.get('encoder', '-')}  "
          f"{args.resolution}x{args.resolution}  "
          f"batch {args.batch}  {args.images} images per epoch "
          f"(frames made in {time.perf_counter() - t0:.1f}s)")
    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False).to(device)
    loss_fn = build_loss(cfg.loss).to(device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    flops = train_flops_per_image(model, loss_fn, (int(cfg.dataset.channels), *size), device)
    peak = peak_tflops(device, args.peak_tflops)
    results = {"device": str(device), "device_name": name, "torch": torch.__version__,
               "model": f"{cfg.model.name}/{cfg.model.get('encoder', '-')}",
               "resolution": args.resolution, "batch": args.batch, "images": args.images,
               "repeats": args.repeats, "train_gflop_per_image": round(flops / 1e9, 3),
               "peak_tflops": peak, "variants": []}
    light = f", speed of light {peak * 1e12 / flops:,.0f} img/s at {peak} TFLOPS" if peak else ""
    print(f"training FLOPs per image (forward + backward) {flops / 1e9:.2f} GFLOP{light}")

    # The seed-style loop: the plain loop in fp32 on the DataLoader path, what the others beat.
    seed_v = parse_variant("fp32-w" if device.type == "cuda" else "fp32", workers)
    seed_row = bench_variant(model, data, loss_fn, optimizer, cfg, seed_v, device, args.batch,
                             args.repeats, loops=("plain",))
    seed = seed_row["plain"]
    results["seed_style"] = {"variant": seed_v["name"], "images_per_s": round(seed, 2)}
    print(f"seed-style loop (plain, {seed_v['name']}, DataLoader + albumentations): "
          f"{seed:.1f} img/s")
    print(f"{'variant':<16}{'segbench img/s':>16}{'plain img/s':>13}{'overhead':>10}{'% light':>9}"
          f"{'x seed':>8}{'peak MiB':>10}")
    for v in variants:
        amp = PRECISIONS[v["precision"]]
        if amp is torch.float16 and device.type != "cuda":
            print(f"{v['name']:<16}  skipped: fp16 autocast needs CUDA")
            continue
        if amp is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            print(f"{v['name']:<16}  skipped: this GPU has no bf16")
            continue
        model = model.to(memory_format=(torch.channels_last if v["channels_last"]
                                        else torch.contiguous_format))
        try:
            row = bench_variant(model, data, loss_fn, optimizer, cfg, v, device, args.batch,
                                args.repeats)
        except Exception as err:  # a compile that fails here should not lose the other variants
            print(f"{v['name']:<16}  failed: "
                  f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
            continue
        row["light_percent"] = 100 * flops * row["segbench"] / (peak * 1e12) if peak else None
        row["x_seed"] = row["segbench"] / seed
        results["variants"].append(row)
        mib = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "-"
        light = f"{row['light_percent']:.2f}" if peak else "-"
        print(f"{v['name']:<16}{row['segbench']:>16.1f}{row['plain']:>13.1f}"
              f"{row['overhead']:>10.3f}{light:>9}{row['x_seed']:>8.2f}{mib:>10}")
    if args.profile:
        results["profile"] = profile(model, data, loss_fn, optimizer, device, args.batch,
                                     args.profile)

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
        kept["result"] = evaluate(Subject(model, device, amp, cl), loader,
                                  collect=Collect(scores=True, keep_predictions=True))

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
          f"evaluate+HD95 {times['evaluate+hd95']:.2f}s "
          f"(x{times['evaluate+hd95'] / times['inference']:.2f};"
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
