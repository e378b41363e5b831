"""Decode and resize each image once: a memory-mapped uint8 array cache.

A cache entry is keyed by the dataset's reader settings, the target size and every file's path,
size and modification time, so a changed, added or removed file makes a new entry. Later epochs
and later runs read the arrays through np.load(mmap_mode="r") instead of decoding again.

An entry is built in a temporary folder, synced to disk and renamed into place, so it is complete
or absent; an entry damaged anyway (a disk that filled up, a copy cut short) is found when it is
opened (unreadable meta.json, truncated arrays, wrong shapes) and rebuilt, with a warning.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from segbench import SegbenchError
from segbench.atomic import fsync_dir, pid_alive, write_atomic
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
    if folder.exists():
        try:
            entry = _open_entry(folder, len(samples), height, width, channels)
            log.debug("array cache hit %s", folder)
            return entry
        except CorruptEntry as err:  # a disk that filled up, a copy cut short, a lost write
            log.warning("the array cache entry %s is damaged (%s): rebuilding it", folder, err)
            _discard(folder)
    tmp = folder.with_name(f"{key}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _remove_abandoned(folder.parent)
    try:
        images, masks, values = _build(samples, reader, height, width, channels, tmp)
        meta = {"count": len(samples), "height": height, "width": width, "channels": channels,
                "tag": tag, "mask_values": sorted(values), "ids": [s.id for s in samples]}
        for arr in (images, masks):  # on disk before the folder is published
            arr.flush()
        del images, masks
        for name in ("images.npy", "masks.npy"):
            _fsync(tmp / name)
        write_atomic(tmp / "meta.json", json.dumps(meta))
        try:
            tmp.rename(folder)
            fsync_dir(folder.parent)
        except OSError:  # a concurrent run published the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("cached %d decoded %dx%d images in %s", len(samples), height, width, folder)
    try:
        return _open_entry(folder, len(samples), height, width, channels)
    except CorruptEntry as err:
        raise SegbenchError(f"the array cache entry {folder} was damaged as soon as it was written "
                            f"({err}); delete {folder.parent} and check the disk holding "
                            "paths.cache") from None


class CorruptEntry(Exception):
    pass


def _open_entry(folder: Path, count: int, height: int, width: int, channels: int):
    """(images, masks, mask values) of a cache entry, memory-mapped; CorruptEntry where a file
    is unreadable, truncated or of another shape than the entry's key says."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        values = set(meta["mask_values"])
        images = np.load(folder / "images.npy", mmap_mode="r")
        masks = np.load(folder / "masks.npy", mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError) as err:  # mmap: "length is greater than..."
        raise CorruptEntry(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    if images.shape != (count, height, width, channels) or masks.shape != (count, height, width):
        raise CorruptEntry(f"arrays of shape {images.shape} and {masks.shape}")
    return images, masks, values


def _discard(folder: Path) -> None:
    """Move a damaged entry aside (atomically, so that a concurrent reader never sees half of
    it), then delete it."""
    aside = folder.with_name(f"{folder.name}.damaged{os.getpid()}")
    try:
        folder.rename(aside)
    except OSError:
        aside = folder
    shutil.rmtree(aside, ignore_errors=True)
    if folder.exists():
        raise SegbenchError(f"the array cache entry {folder} is damaged and cannot be removed; "
                            f"delete {folder} (or set paths.cache=<another folder>)")


ABANDONED = re.compile(r"^[0-9a-f]+\.(tmp|damaged)(?P<pid>\d+)$")


def _remove_abandoned(arrays: Path) -> None:
    """Entries a killed process was building (or discarding): their process is gone."""
    for p in arrays.iterdir():
        m = ABANDONED.match(p.name)
        if m and int(m["pid"]) != os.getpid() and not pid_alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _build(samples, reader, height, width, channels, folder: Path | None):
    n = len(samples)
    if folder is None:
        images = np.empty((n, height, width, channels), np.uint8)
        masks = np.empty((n, height, width), np.uint8)
    else:
        images = _allocated_memmap(folder / "images.npy", (n, height, width, channels))
        masks = _allocated_memmap(folder / "masks.npy", (n, height, width))
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


def _allocated_memmap(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A uint8 .npy memory map whose disk blocks are reserved up front: a full disk is then an
    OSError (ENOSPC) here, not a SIGBUS that kills the process when a page is written."""
    arr = np.lib.format.open_memmap(path, "w+", np.uint8, shape)
    if hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise OSError(err.errno, err.strerror, str(path)) from None
        finally:
            os.close(fd)
    return arr
