"""A run's split is fixed when it starts: split.json records the image ids of every split and the
name and size of each of their files; a resumed run and `segbench eval` take their images from
that record (never from a new split of the data as it is now) and refuse to go on when a recorded
file is missing or has changed. Files added to the dataset afterwards are not used (a warning
says how many).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from segbench import SegbenchError
from segbench.data import dataset_module
from segbench.data.files import listing
from segbench.data.source import Sample

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


def _facts(sample: Sample) -> list:
    """[image file name, its size in bytes, mask file name, its size]."""
    out: list = []
    for path in (sample.image, sample.mask):
        try:
            size = os.stat(path).st_size
        except OSError:
            size = None
        out += [Path(path).name, size]
    return out


def file_record(splits: dict[str, list[Sample]]) -> dict:
    """What split.json holds besides the ids: each sample's files (name and size), and one
    fingerprint of them all (sha256 of the sorted records)."""
    files = {s.id: _facts(s) for samples in splits.values() for s in samples}
    digest = hashlib.sha256("\n".join(f"{i}|{files[i]}" for i in sorted(files)).encode())
    return {"fingerprint": digest.hexdigest()[:16], "files": files}


def recorded_splits(cfg: DictConfig, doc: dict, names=SPLIT_NAMES, where: str = "the run",
                    fix: str = "restore the data it was trained on",
                    quiet: bool = False) -> dict[str, list[Sample]]:
    """The splits a run recorded (its split.json `doc`), as samples of the dataset on disk now;
    a SegbenchError where a recorded image is missing or its files changed (name or size).
    Warns about images added since (unless `quiet`) and where split.json has no file record."""
    module = dataset_module(cfg.dataset)
    pools = module.list_splits(cfg.dataset)
    by_id = {s.id: s for pool in pools.values() for s in pool}
    recorded = doc["splits"]
    missing, changed = [], []
    out = {}
    for name in names:
        for i in recorded[name]:
            if i not in by_id:
                missing.append(i)
        out[name] = [by_id[i] for i in recorded[name] if i in by_id]
    files = doc.get("files")
    if files is None and not quiet:
        log.warning("%s's split.json records no file sizes (an older segbench wrote it): its "
                    "data cannot be checked for changes", where)
    elif files is not None:
        for samples in out.values():
            for s in samples:
                now, then = _facts(s), files.get(s.id)
                if then is not None and list(then) != now:
                    changed.append(_change(then, now))
    if missing or changed:
        parts = []
        if missing:
            parts.append(f"{len(missing)} recorded image(s) are missing ({listing(missing, 5)})")
        if changed:
            parts.append(f"{len(changed)} file(s) changed ({listing(changed, 5)})")
        raise SegbenchError(
            f"the data under {where} changed since it started: {'; '.join(parts)}. A run's "
            f"split is fixed when it starts (split.json) and is never re-drawn: {fix} "
            f"(it looked in {cfg.dataset.get('root')}), or start a new run on the new data")
    used = {i for name in SPLIT_NAMES if name in recorded for i in recorded[name]}
    added = [i for i in by_id if i not in used]
    if added and not quiet:
        log.warning("%d image(s) in the dataset are not in %s's split (added after it started, "
                    "e.g. %s): they are not used; a run's split is fixed when it starts",
                    len(added), where, listing(added, 3))
    return out


def _change(then: list, now: list) -> str:
    image_then, size_then, mask_then, mask_size_then = then
    image_now, size_now, mask_now, mask_size_now = now
    if image_then != image_now or size_then != size_now:
        return f"{image_now}: {size_then} -> {size_now} bytes" if image_then == image_now else \
            f"{image_then} -> {image_now}"
    return f"{mask_now}: {mask_size_then} -> {mask_size_now} bytes" if mask_then == mask_now else \
        f"{mask_then} -> {mask_now}"
