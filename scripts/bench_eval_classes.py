"""Evaluation cost per image with several classes against binary, at 256 px on this machine.

    python scripts/bench_eval_classes.py [--size 256] [--images 32] [--classes 4] [--repeats 3]

Times segbench's evaluation loop (engine.evaluate.evaluate: forward pass, probabilities, confusion
counts on the device) over the same images with a binary model and a C-class model of the same
network (only the last layer differs), and the counting alone (metrics.task_confusion: one
bincount of C*truth+prediction per batch against the binary comparison). Prints the per-image
times and the ratios; the issue's target is at most 1.3x binary per image.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from omegaconf import OmegaConf

from segbench.data.dataset import SegmentationDataset
from segbench.inference.loop import Subject, eval_loader, evaluate
from segbench.metrics import probabilities, task_confusion
from segbench.models import build_model
from segbench.task import task_of


def model_for(task_spec: dict, size: int):
    cfg = OmegaConf.create({
        "model": {"name": "unet", "arch": "Unet", "encoder": "resnet18", "encoder_weights": None,
                  "encoder_depth": 4, "decoder_channels": [128, 64, 32, 16], "in_channels": 3,
                  "classes": "auto", "pad_to_multiple": True},
        "dataset": task_spec, "resolution": {"height": size, "width": size}, "activation": None})
    torch.manual_seed(0)
    return build_model(cfg).eval()


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    n, s, c = args.images, args.size, args.classes
    images = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
    specs = {"binary": ({"task": "binary"}, rng.integers(0, 2, (n, s, s), dtype=np.uint8)),
             f"{c} classes": ({"task": "multiclass",
                               "classes": {k: ("background" if k == 0 else f"c{k}")
                                           for k in range(c)}},
                              rng.integers(0, c, (n, s, s), dtype=np.uint8))}
    device = torch.device("cpu")
    results = {}
    for name, (spec, masks) in specs.items():
        task = task_of(spec)
        model = model_for(spec, s)
        data = SegmentationDataset(images, masks, [str(i) for i in range(n)])
        loop = timed(lambda m=model, d=data: evaluate(Subject(m, device),
                                                      eval_loader(d, 8, device)),
                     args.repeats)
        logits = torch.randn(n, task.channels, s, s)
        target = torch.from_numpy(masks)[:, None]
        count = timed(lambda x=logits, t=target, k=task: task_confusion(probabilities(x, k), t, k),
                      args.repeats)
        results[name] = (loop / n * 1e3, count / n * 1e3)
        print(f"{name:>10}: evaluation {loop / n * 1e3:7.2f} ms/image   "
              f"probabilities + counting {count / n * 1e3:6.3f} ms/image")
    (b_loop, b_count), (m_loop, m_count) = results.values()
    print(f"ratio {c} classes / binary: evaluation {m_loop / b_loop:.2f}x, "
          f"probabilities + counting {m_count / b_count:.2f}x "
          f"({s}x{s}, {n} images, torch {torch.__version__}, {torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
