"""Samples/s of the data pipeline with and without the decode-once cache, on the shared samples.

    python scripts/bench_cache.py [--resolution 256] [--epochs 3] \\
        [--data ../shared/data | --stand-ins]

"no cache" decodes and resizes every image and mask each time it is read, as a Dataset that
opens files in __getitem__ does; "cache, first run" builds the memory-mapped entry (threaded
decode); "cache, later epochs" reads items through the memory maps (what every later epoch and
run does). Kvasir-Instrument's sample has masks only: a JPEG of each mask's size is written in a
temporary folder to stand in for the frames (18 of the dataset's 590 ids). Without the shared
samples, --stand-ins measures the generated stand-ins of segbench.data.fixtures instead (same
formats and sizes, fewer files).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from segbench import config_dir
from segbench.data import dataset_module, default_read, fixtures, list_splits
from segbench.data.cache import cached_arrays, resize_pair
from segbench.data.dataset import SegmentationDataset


def kvasir_with_frames(sample_root: Path, dest: Path) -> Path:
    """A copy of the Kvasir-Instrument sample (masks and split files) with a stand-in JPEG
    frame of each mask's size."""
    shutil.copytree(sample_root / "masks", dest / "masks")
    for name in ("train.txt", "test.txt"):
        shutil.copy(sample_root / name, dest / name)
    fixtures.write_frames_for_masks(dest / "masks", dest / "images")
    return dest


def bench(name: str, root: Path, resolution: int, epochs: int, cache_root: Path) -> None:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", [f"dataset={name}", f"dataset.root={root}",
                                f"resolution='{resolution}'"])
    splits = list_splits(cfg)
    samples = [s for split in splits.values() for s in split]
    read = getattr(dataset_module(name), "read", default_read)
    tag = f"bench|{name}|{cfg.dataset.channels}"
    channels = int(cfg.dataset.channels)

    start = time.perf_counter()
    for _ in range(epochs):
        for s in samples:
            image, mask, _ = read(s, cfg.dataset)
            resize_pair(image, mask, resolution, resolution)
    no_cache = len(samples) * epochs / (time.perf_counter() - start)

    start = time.perf_counter()
    images, masks, _ = cached_arrays(samples, lambda s: read(s, cfg.dataset), resolution,
                                     resolution, channels, cache_root, tag)
    cold = len(samples) / (time.perf_counter() - start)

    start = time.perf_counter()
    for _ in range(epochs):
        images, masks, _ = cached_arrays(samples, lambda s: read(s, cfg.dataset), resolution,
                                         resolution, channels, cache_root, tag)
        data = SegmentationDataset(images, masks, [s.id for s in samples])
        for i in range(len(data)):
            data[i]
    warm = len(samples) * epochs / (time.perf_counter() - start)
    print(f"{name:<18} {len(samples):>5} {no_cache:>12.0f} {cold:>16.0f} {warm:>18.0f} "
          f"{warm / no_cache:>8.0f}x")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--stand-ins", action="store_true",
                        help="measure generated stand-ins (segbench.data.fixtures), not --data")
    args = parser.parse_args(argv)
    # the Kvasir sample is a partial copy: say it once here
    logging.basicConfig(level=logging.ERROR)
    if not args.stand_ins and not args.data.is_dir():
        sys.exit(f"no shared samples at {args.data}; pass --data <folder>, or --stand-ins to "
                 "measure generated stand-ins of the same formats")
    print(f"resolution {args.resolution}x{args.resolution}, {args.epochs} epochs, samples/s")
    print(f"{'dataset':<18} {'pairs':>5} {'no cache':>12} {'cache, first run':>16} "
          f"{'cache, later epochs':>18} {'speed-up':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.stand_ins:
            roots = {"lgg_mri": fixtures.write_lgg_mri(tmp / "lgg").root,
                     "lung_ct": fixtures.write_lung_ct(tmp / "lung").root,
                     "kvasir_instrument": fixtures.write_kvasir_instrument(tmp / "kvasir").root}
        else:
            roots = {"lgg_mri": args.data / "lgg_sample", "lung_ct": args.data / "lung_ct_sample",
                     "kvasir_instrument": kvasir_with_frames(
                         args.data / "kvasir_instrument_sample", tmp / "kvasir")}
        for name, root in roots.items():
            bench(name, root, args.resolution, args.epochs, tmp / "cache")


if __name__ == "__main__":
    main()
