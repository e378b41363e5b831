"""Decode and resize each image once: a memory-mapped uint8 array cache.

A cache entry is keyed by the dataset's reader settings, the target size and every file's path,
size and modification time, so a changed, added or removed file makes a new entry. Later epochs
and later runs read the arrays through np.load(mmap_mode="r") instead of decoding again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from segbench.data.source import Sample

log = logging.getLogger(__name__)

CACHE_VERSION = 1
Reader = Callable[[Sample], tuple[np.ndarray, np.ndarray, set[int]]]


def resize_pair(image: np.ndarray, mask: np.ndarray, height: int, width: int):
    """Area interpolation when shrinking (no aliasing), bilinear when enlarging; masks nearest."""
    h, w = mask.shape
    if (h, w) != (height, width):
        shrink = height * width < h * w
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        channels = image.shape[2]
        image = cv2.resize(image, (width, height), interpolation=interp)
        if image.ndim == 2:
            image = image[..., None]
        assert image.shape[2] == channels
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, mask


def cache_key(samples: Sequence[Sample], height: int, width: int, tag: str) -> str:
    h = hashlib.sha1(f"{CACHE_VERSION}|{tag}|{height}x{width}".encode())
    for s in samples:
        for p in (s.image, s.mask):
            st = os.stat(p)
            h.update(f"|{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cached_arrays(samples: Sequence[Sample], reader: Reader, height: int, width: int,
                  channels: int, cache_root: Path | None, tag: str):
    """(images uint8 NxHxWxC, masks uint8 NxHxW in {0,1}, mask values seen in the files).

    With cache_root None the arrays are built in memory and not kept.
    """
    if cache_root is None:
        return _build(samples, reader, height, width, channels, None)
    key = cache_key(samples, height, width, tag)
    folder = Path(cache_root).expanduser() / "arrays" / key
    meta_file = folder / "meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        log.debug("array cache hit %s", folder)
        return (np.load(folder / "images.npy", mmap_mode="r"),
                np.load(folder / "masks.npy", mmap_mode="r"), set(meta["mask_values"]))
    tmp = folder.with_name(f"{key}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        images, masks, values = _build(samples, reader, height, width, channels, tmp)
        meta = {"count": len(samples), "height": height, "width": width, "channels": channels,
                "tag": tag, "mask_values": sorted(values), "ids": [s.id for s in samples]}
        (tmp / "meta.json").write_text(json.dumps(meta))
        del images, masks  # flush the memmaps before the folder is published
        try:
            tmp.rename(folder)
        except OSError:  # a concurrent run published the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("cached %d decoded %dx%d images in %s", len(samples), height, width, folder)
    return (np.load(folder / "images.npy", mmap_mode="r"),
            np.load(folder / "masks.npy", mmap_mode="r"), set(meta["mask_values"]))


def _build(samples, reader, height, width, channels, folder: Path | None):
    n = len(samples)
    if folder is None:
        images = np.empty((n, height, width, channels), np.uint8)
        masks = np.empty((n, height, width), np.uint8)
    else:
        images = np.lib.format.open_memmap(folder / "images.npy", "w+", np.uint8, (n, height, width, channels))
        masks = np.lib.format.open_memmap(folder / "masks.npy", "w+", np.uint8, (n, height, width))
    values: set[int] = set()

    def load(i: int) -> set[int]:
        image, mask, seen = reader(samples[i])
        image, mask = resize_pair(image, mask, height, width)
        images[i], masks[i] = image, mask
        return seen

    # Decoders (OpenCV, tifffile) release the GIL: threads decode in parallel.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for seen in pool.map(load, range(n)):
            values |= seen
    return images, masks, values
