"""`segbench verify dataset=<name>`: check a dataset on disk before training on it.

The full check decodes every file once: counts per split, unpaired files, unreadable files,
image sizes and channels, mask value sets and the share of empty masks. It prints a report,
writes verify.json and exits non-zero when it finds a problem. `quick_check()` is the cheap
part that `train` runs before its first epoch: every listed file is there and not empty, and
one sample of each split decodes.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from segbench import SegbenchError
from segbench.data import EXPECTED_MASK_VALUES, dataset_module, default_read
from segbench.data.files import UnpairedFiles, listing
from segbench.data.source import Sample
from segbench.data.splits import make_splits, split_settings
from segbench.task import task_of

log = logging.getLogger(__name__)


def _reader(cfg: DictConfig):
    module = dataset_module(cfg.dataset)
    read = getattr(module, "read", default_read)
    return lambda sample: read(sample, cfg.dataset)


def quick_check(cfg: DictConfig, splits: dict[str, list[Sample]]) -> None:
    """Every file of every split exists and is not empty; each split's first sample decodes."""
    bad = []
    for samples in splits.values():
        for s in samples:
            for path in (s.image, s.mask):
                try:
                    if os.stat(path).st_size == 0:
                        bad.append(f"{path} (empty file)")
                except OSError:
                    bad.append(f"{path} (missing)")
    if bad:
        raise SegbenchError(f"{len(bad)} dataset file(s) cannot be used: {listing(bad)}. "
                            f"Restore them, then check with `segbench verify "
                            f"dataset={cfg.dataset.name} dataset.root={cfg.dataset.root}`")
    read = _reader(cfg)
    for samples in splits.values():
        read(samples[0])  # raises a SegbenchError naming the file


def describe(path: Path) -> str:
    """'<channels>ch <dtype>' of an image file from its header, without decoding the pixels."""
    if Path(path).suffix.lower() in (".tif", ".tiff"):
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape, dtype = page.shape, page.dtype
        channels = shape[2] if len(shape) == 3 else 1
        return f"{channels}ch {dtype}"
    with Image.open(path) as im:
        bands = len(im.getbands())
        dtype = {"1": "bool", "I": "int32", "F": "float32"}.get(im.mode, "uint8")
        if im.mode.startswith("I;16"):
            dtype = "uint16"
        return f"{bands}ch {dtype}" + (" palette" if im.mode == "P" else "")


def _inspect(read, sample: Sample) -> dict:
    """What verify needs to know about one image/mask pair, or the problem reading it."""
    try:
        kinds = (describe(sample.image), describe(sample.mask))
    except Exception as err:  # each header reader has its own errors; the decode names the file
        kinds = ("?", "?")
        log.debug("header of %s: %s", sample.image, err)
    try:
        image, mask, values = read(sample)
    except SegbenchError as err:
        return {"error": str(err)}
    return {"size": f"{mask.shape[1]}x{mask.shape[0]}", "image_kind": kinds[0],
            "mask_kind": kinds[1], "values": tuple(sorted(values)), "empty": not mask.any(),
            "full": bool(mask.all()),
            "mean": float(np.mean(image))}


class _Collect(logging.Handler):
    """The warnings the dataset module logs while listing, for the report."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _groups_text(samples: list[Sample]) -> str:
    groups = {s.group for s in samples if s.group is not None}
    return f" ({len(groups)} patient{'s' if len(groups) != 1 else ''})" if groups else ""


def _pools_origin(d) -> str:
    """Where the train/test pools come from: files that came with the data, or a seeded draw
    (a folder without train.txt/test.txt, LGG and lung CT by test_fraction and split_seed)."""
    if d.get("name") == "synthetic":
        return "generated"
    root = Path(str(d.get("root") or "")).expanduser()
    if "test_fraction" in d and not (root / "train.txt").is_file():
        return (f"seeded: test_fraction {d.test_fraction}, split_seed {d.get('split_seed', 0)}"
                + ("; no train.txt/test.txt" if d.get("name") == "folder" else ""))
    return "as shipped"


def _grouped(errors: list[str], shown: int = 10) -> str:
    """The errors, those that differ only in the file they name said once with the files listed
    (ten masks holding the same undeclared labels are one line, not ten)."""
    by_text: dict[str, list[str]] = {}
    for e in errors:
        path, sep, rest = e.partition(": ")
        key, name = (rest, Path(path).name) if sep and Path(path).exists() else (e, "")
        by_text.setdefault(key, []).append(name)
    parts = []
    for text, names in list(by_text.items())[:shown]:
        named = [n for n in names if n]
        files = (f" ({len(named)} files: {', '.join(named[:5])}{', ...' if len(named) > 5 else ''})"
                 if len(named) > 1 else f" ({named[0]})" if named else "")
        parts.append(text + files)
    more = len(by_text) - shown
    return " | ".join(parts) + (f" ... and {more} more" if more > 0 else "")


def verify_dataset(cfg: DictConfig) -> dict:
    """The full check; returns the report (problems under "problems")."""
    d = cfg.dataset
    report: dict = {"dataset": d.name, "root": str(d.get("root")), "problems": [], "warnings": []}
    pools = _list_pools(d, report)
    if pools is None:
        return report
    report["pools"] = {k: len(v) for k, v in pools.items()}
    report["pools_origin"] = _pools_origin(d)
    try:
        splits = make_splits(pools, **split_settings(d))
        report["splits"] = {k: len(v) for k, v in splits.items()}
    except SegbenchError as err:
        report["problems"].append(str(err))
        splits = pools
    good = _read_pairs(cfg, splits, report)
    _describe_files(d, good, report)
    _describe_masks(splits, good, report)
    report["split_text"] = {k: f"{len(v)}{_groups_text(v)}" for k, v in splits.items()}
    return report


def _list_pools(d: DictConfig, report: dict) -> dict[str, list[Sample]] | None:
    """The dataset's pools as its module lists them, with unpaired files reported (a problem, or
    a warning with on_unpaired=skip) and the warnings it logs collected; None when it cannot
    list them (the report says why)."""
    module = dataset_module(d)
    problems, warnings = report["problems"], report["warnings"]
    collect = _Collect()
    data_log = logging.getLogger("segbench.data")
    data_log.addHandler(collect)
    try:
        strict = OmegaConf.merge(d, {"on_unpaired": "error"}) if "on_unpaired" in d else d
        try:
            pools = module.list_splits(strict)
        except UnpairedFiles as err:
            report["unpaired"] = err.names
            (warnings if d.get("on_unpaired") == "skip" else problems).append(str(err))
            pools = module.list_splits(OmegaConf.merge(d, {"on_unpaired": "skip"}))
    except SegbenchError as err:
        problems.append(str(err))
        return None
    finally:
        data_log.removeHandler(collect)
    warnings += [m for m in collect.messages if "on_unpaired=skip" not in m]
    return pools


def _read_pairs(cfg: DictConfig, splits: dict[str, list[Sample]],
                report: dict) -> list[tuple[str, dict]]:
    """Every pair decoded once (in threads): (split name, its facts) of the pairs that could be
    read; the others are a problem in the report."""
    read = _reader(cfg)
    samples = [(name, s) for name, items in splits.items() for s in items]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        facts = list(pool.map(lambda item: _inspect(read, item[1]), samples))
    errors = [f["error"] for f in facts if "error" in f]
    good = [(name, f) for (name, _), f in zip(samples, facts, strict=True) if "error" not in f]
    if errors:
        report["unreadable"] = errors
        report["problems"].append(f"{len(errors)} image/mask pair(s) cannot be used: "
                                  + _grouped(errors))
    report["pairs"] = len(samples)
    return good


def _describe_files(d: DictConfig, good: list[tuple[str, dict]], report: dict) -> None:
    """Image sizes, file kinds and mask value sets of the readable pairs, and the task."""
    report["image_sizes"] = dict(Counter(f["size"] for _, f in good).most_common())
    report["image_files"] = dict(Counter(f["image_kind"] for _, f in good).most_common())
    report["mask_files"] = dict(Counter(f["mask_kind"] for _, f in good).most_common())
    value_sets = Counter(str(set(f["values"])) for _, f in good)
    report["mask_value_sets"] = dict(value_sets.most_common())
    task = task_of(d)
    if task.kind != "binary":
        report["task"] = task.describe()
    odd = sorted({v for _, f in good for v in f["values"]} - EXPECTED_MASK_VALUES)
    if odd and task.kind == "binary":
        report["warnings"].append(
            f"masks hold values outside {{0, 1, 255}} ({odd[:20]}): they are binarized as "
            "value > 0; check that this is what the masks mean")


def _describe_masks(splits: dict[str, list[Sample]], good: list[tuple[str, dict]],
                    report: dict) -> None:
    """The share of empty and of full masks per split, and the count of black images."""
    warnings = report["warnings"]
    report["empty_masks"] = {
        name: round(float(np.mean([f["empty"] for n, f in good if n == name])), 4)
        for name in splits if any(n == name for n, _ in good)}
    if good:
        report["empty_masks"]["all"] = round(float(np.mean([f["empty"] for _, f in good])), 4)
    report["full_masks"] = {
        name: round(float(np.mean([f["full"] for n, f in good if n == name])), 4)
        for name in report["empty_masks"] if name != "all"}
    if good:
        report["full_masks"]["all"] = round(float(np.mean([f["full"] for _, f in good])), 4)
        warnings += _extremes(report["empty_masks"]["all"], report["full_masks"]["all"], len(good))
    # Slices outside the body are black; most of a dataset black means a reading problem.
    report["black_images"] = sum(f["mean"] < 1 for _, f in good)
    if good and report["black_images"] > len(good) / 2:
        warnings.append(f"{report['black_images']} of {len(good)} images are black (mean below "
                        "1 of 255) after reading: check the files (and dataset.window for CT)")


# Masks all background or all foreground in this share of pairs or more mean a reading problem
# (a mask read from the wrong channel, an inverted mask) or a dataset unfit for segmentation.
EMPTY_WARNING, FULL_WARNING = 0.9, 0.05


def _extremes(empty: float, full: float, n: int) -> list[str]:
    out = []
    if empty >= EMPTY_WARNING:
        out.append(f"{empty:.0%} of {n} masks are empty (no foreground): check that the masks are "
                   "read as meant (their values, their channel) before training")
    if full >= FULL_WARNING:
        out.append(f"{full:.0%} of {n} masks are all foreground: an inverted mask, or a shape held "
                   "in a channel that was not read, reads so; check them before training")
    return out


def format_report(report: dict) -> str:
    def counts(d: dict) -> str:
        return ", ".join(f"{k}: {v}" for k, v in d.items()) or "-"

    lines = [f"dataset {report['dataset']} at {report['root']}"]
    if "task" in report:
        task = report["task"]
        values = task.get("mask_values")
        classes = (", ".join(f"{v}: {n}" for v, n in zip(values, task["classes"], strict=True))
                   if values else ", ".join(task["classes"]))
        ignore = f"; ignore {task['ignore_index']}" if "ignore_index" in task else ""
        lines.append(f"  task         {task['task']} ({classes}{ignore})")
    if "pools" in report:
        lines.append(f"  pairs        {report.get('pairs', 0)} image/mask pairs, "
                     f"{len(report.get('unpaired', []))} unpaired file(s), "
                     f"{len(report.get('unreadable', []))} unusable pair(s)")
        lines.append(f"  test split   {counts(report['pools'])} "
                     f"({report.get('pools_origin', 'as shipped')})")
    if "split_text" in report:
        lines.append(f"  splits       {counts(report['split_text'])}")
    for key, title in (("image_sizes", "image sizes"), ("image_files", "image files"),
                       ("mask_files", "mask files"), ("mask_value_sets", "mask values")):
        if key in report:
            lines.append(f"  {title:<12} {counts(report[key])}")
    if "black_images" in report:
        lines.append(f"  black images {report['black_images']}")
    if report.get("empty_masks"):
        lines.append("  empty masks  " + ", ".join(f"{k}: {v:.1%}"
                                                   for k, v in report["empty_masks"].items()))
    if report.get("full_masks"):
        lines.append("  full masks   " + ", ".join(f"{k}: {v:.1%}"
                                                   for k, v in report["full_masks"].items()))
    lines += [f"  warning: {w}" for w in report["warnings"]]
    lines += [f"  PROBLEM: {p}" for p in report["problems"]]
    lines.append(f"{len(report['problems'])} problem(s) found" if report["problems"]
                 else "OK: no problems found")
    return "\n".join(lines)
