"""Ensembles of trained runs (the library side of `segbench ensemble` and of `predict` with
several runs): finding the member runs, checking that they can be averaged, loading them,
evaluating their mean probability on the shared test split and writing it as a run-like directory.

Members can be averaged when they see the same images the same way: identical preprocessing
(`resolution.*`, `model.in_channels` and every `dataset.*` key except those that only choose
the training/validation split) and, for `segbench ensemble`, the same recorded test split.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from omegaconf import OmegaConf

from segbench import SegbenchError
from segbench.data import select_splits
from segbench.data.splits import split_document
from segbench.inference.evaluation import (
    Runtime,
    Split,
    Subject,
    eval_batch_size,
    eval_settings,
    evaluate_split,
    input_shape,
    with_data_root,
)
from segbench.inference.loop import metric_line
from segbench.models import load_trained
from segbench.models.averaged import Ensemble
from segbench.models.info import inference_latency
from segbench.runs.rundir import (
    CONFIG,
    ENSEMBLE,
    METRICS,
    REPLICATE_KEYS,
    SPLIT,
    RunDir,
    read_json,
    write_json,
)
from segbench.runtime.device import autocast_dtype

log = logging.getLogger(__name__)

# dataset keys that choose the training/validation split (or where the files are), not pixels.
SPLIT_KEYS = ("dataset.folds", "dataset.fold", "dataset.val_fraction", "dataset.train_fraction",
              "dataset.split_seed", "dataset.on_unpaired", "dataset.test_fraction")


def _finished(path: Path) -> bool:
    run = RunDir(path)
    return (run.is_run() and (path / METRICS).is_file() and run.has_checkpoint("best")
            and not (path / ENSEMBLE).is_file())


def find_members(paths: Sequence[Path | str]) -> tuple[list[RunDir], bool]:
    """The runs named (run directories, or folders searched for finished runs) and whether
    any came from searching a folder."""
    members, searched = [], False
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise SegbenchError(f"{path}: no such run directory or folder")
        if RunDir(path).is_run():
            if not RunDir(path).has_checkpoint("best"):
                raise SegbenchError(f"{path} has no checkpoints/best.pt: it has not finished an "
                                    "epoch; finish or resume it first")
            members.append(RunDir(path))
            continue
        found = sorted(p.parent for p in path.rglob(CONFIG) if _finished(p.parent))
        if not found:
            raise SegbenchError(f"no finished training runs below {path} (a run directory holds "
                                f"{CONFIG}, {SPLIT}, {METRICS} and checkpoints/best.pt)")
        members += [RunDir(p) for p in found]
        searched = True
    unique = list({m.path.resolve(): m for m in members}.values())
    if len(unique) < 2:
        raise SegbenchError(f"an ensemble needs at least 2 runs, got {len(unique)} "
                            f"({', '.join(str(m.path) for m in unique)})")
    return unique, searched


def preprocessing(settings: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in settings.items()
            if (k.startswith(("dataset.", "resolution.")) or k == "model.in_channels")
            and not k.startswith(SPLIT_KEYS)}


def _differences(members: list[RunDir], table: list[dict[str, str]]) -> list[str]:
    keys = sorted({k for t in table for k in t})
    out = []
    for k in keys:
        first: dict[str, str] = {}  # each value, with the first run that has it
        for t, m in zip(table, members):
            first.setdefault(t.get(k, "-"), m.name())
        if len(first) > 1:
            out.append(f"{k}: " + ", ".join(f"{v} ({name})" for v, name in list(first.items())[:4]))
    return out


def check_members(members: list[RunDir], *, same_test: bool, one_configuration: bool) -> dict:
    """SegbenchError unless the members can be averaged; returns what they have in common:
    {"settings": first member's settings, "test": test ids, "groups", "differences"}."""
    settings = [m.settings() for m in members]
    bad = _differences(members, [preprocessing(s) for s in settings])
    if bad:
        raise SegbenchError("the runs' preprocessing differs, so their probabilities cannot be "
                            "averaged pixel by pixel: " + "; ".join(bad[:6]))
    differences = _differences(members, [{k: v for k, v in s.items() if k not in REPLICATE_KEYS}
                                         for s in settings])
    if differences and one_configuration:
        raise SegbenchError(
            "the runs found are more than one configuration (" + "; ".join(differences[:4])
            + "); pass one configuration's folder (its folds or seeds) or name the run "
            "directories to ensemble")
    out = {"settings": settings[0], "differences": differences}
    if same_test:
        splits = [m.read_split() for m in members]
        tests = [list(s["splits"].get("test", [])) for s in splits]
        for m, t in zip(members[1:], tests[1:]):
            if sorted(t) != sorted(tests[0]):
                only_a, only_b = set(tests[0]) - set(t), set(t) - set(tests[0])
                raise SegbenchError(
                    f"the runs were tested on different images: {members[0].name()} has "
                    f"{len(tests[0])} test images, {m.name()} {len(t)} ({len(only_a)} only in the "
                    f"first, {len(only_b)} only in the second, e.g. "
                    f"{sorted(only_a | only_b)[:3]}); an ensemble needs one shared test split")
        out["test"] = tests[0]
    return out


def load_ensemble(members: list[RunDir], checkpoint: str, device):
    """(Ensemble on `device`, the members' checkpoint states)."""
    models, states, dtypes = [], [], []
    for m in members:
        config = m.read_config()
        model, state, _ = load_trained(m, checkpoint, device, config)
        models.append(model)
        states.append(state)
        dtypes.append(autocast_dtype(device, config.trainer.get("precision", "auto")))
    return Ensemble(models, dtypes).to(device).eval(), states


def ensemble_members(run: RunDir) -> list[RunDir] | None:
    """The members of an ensemble directory (its ensemble.json), None for a training run."""
    if not (run / ENSEMBLE).is_file():
        return None
    members = [RunDir(row["run"]) for row in read_json(run / ENSEMBLE).get("members", [])]
    for m in members:
        if not m.has_checkpoint("best"):
            raise SegbenchError(f"{run.path} is an ensemble of runs that are not all there any "
                                f"more ({m.path} has no checkpoints/best.pt); restore them or "
                                "build the ensemble again")
    return members


def load_subject(run: RunDir, checkpoint: str, device) -> tuple[Subject, object]:
    """(the model of a training run or of an ensemble directory on `device`, its epoch(s))."""
    members = ensemble_members(run)
    if members is not None:
        model, states = load_ensemble(members, checkpoint, device)
        return Subject(model, device), ", ".join(str(st.get("epoch")) for st in states)
    config = run.read_config()
    model, state, _ = load_trained(run, checkpoint, device, config)
    dtype = autocast_dtype(device, config.trainer.get("precision", "auto"))
    return Subject(model.eval(), device, dtype), state.get("epoch")


@dataclass
class Request:
    """What `segbench ensemble` was asked: the members' checkpoint, where and how to evaluate."""

    checkpoint: str
    device: torch.device
    given_eval: dict            # the command line's eval.* (null: the members' own)
    batch_size: int | None = None
    data_root: str | None = None
    searched: bool = False      # members found below a folder: they must be one configuration


def build_ensemble(members: list[RunDir], out: RunDir, request: Request) -> dict:
    """Evaluate the members' mean probability on their shared test split and write `out` as a
    run-like directory (config.yaml, split.json, ensemble.json, metrics.json, per-case files and
    figures) that `segbench report` reads; returns its metrics.json record."""
    if any(out.path.resolve() == m.path.resolve() for m in members):
        raise SegbenchError(f"output={out.path} is one of the runs; choose another folder")
    common = check_members(members, same_test=True, one_configuration=request.searched)
    for line in common["differences"]:
        log.info("members differ in %s", line)
    # flip TTA is the ensemble's own choice (its YAML default is false), not the members'
    settings = eval_settings(request.given_eval, [m.read_config().get("eval", {}) for m in members])
    ensemble, states = load_ensemble(members, request.checkpoint, request.device)
    train_cfg = with_data_root(members[0].read_config(), request.data_root)
    splits = select_splits(train_cfg, {"test": common["test"]}, ["test"])
    log.info("ensemble of %d runs (%s checkpoints%s) on %d test images: %s", len(members),
             request.checkpoint, ", flip TTA" if settings.tta else "", len(splits["test"]),
             ", ".join(m.name() for m in members))
    out.path.mkdir(parents=True, exist_ok=True)
    record = evaluate_split(Subject(ensemble, request.device), Split(train_cfg, splits["test"]),
                            settings, out.path,
                            Runtime(eval_batch_size(train_cfg.trainer, request.batch_size)))
    rows = member_rows(members, states)
    result = {"test": record.pop("test"),
              "ensemble": {"members": len(members), "checkpoint": request.checkpoint,
                           "tta": settings.tta,
                           "method": "mean of the members' sigmoid probabilities, then the "
                                     "threshold"},
              **record,
              "model": {"name": "ensemble", **summed_facts(members),
                        "latency_ms": inference_latency(ensemble, input_shape(train_cfg),
                                                        request.device)
                        if settings.latency else None},
              "split_sizes": {"test": len(splits["test"])},
              "train_seconds": sum((m.read_metrics() or {}).get("train_seconds", 0.0)
                                   for m in members),
              "members": rows}
    out.write_config(ensemble_config(train_cfg, request.checkpoint, settings, common["differences"],
                                     len(members)))
    out.write_split(split_document(splits, {"dataset": train_cfg.dataset.name,
                                            "ensemble_of": [str(m.path) for m in members]}))
    write_json(out / ENSEMBLE, {"members": rows, "differences": common["differences"]})
    out.write_metrics(result)
    out.set_status("finished")
    log.info("test (ensemble of %d): %s", len(members), metric_line(result["test"]))
    return result


def member_rows(members: list[RunDir], states: list[dict]) -> list[dict]:
    """ensemble.json's table: each member's path, name, seed, fold, epoch and test Dice."""
    rows = []
    for m, state in zip(members, states, strict=True):
        s, record = m.settings(), m.read_metrics() or {}
        rows.append({"run": str(m.path), "name": m.name(), "seed": s.get("seed"),
                     "fold": (s.get("dataset.fold") if s.get("dataset.folds", "null") != "null"
                              else None),
                     "epoch": state.get("epoch"), "test_dice": record.get("test", {}).get("dice")})
    return rows


def summed_facts(members: list[RunDir]) -> dict:
    """The members' parameters and FLOPs summed (None where a member has not recorded one)."""
    facts = [(m.read_metrics() or {}).get("model", {}) for m in members]
    out = {}
    for key in ("params", "flops", "gflops"):
        values = [f.get(key) for f in facts]
        out[key] = None if any(v is None for v in values) else sum(values)
    return out


def ensemble_config(train_cfg, checkpoint: str, settings, differences: list[str],
                    members: int) -> dict:
    """A run-like config.yaml: the first member's config with what the ensemble changed, so that
    `segbench report` tells it apart from the single models by its settings."""
    config = cast(dict, OmegaConf.to_container(train_cfg, resolve=True))
    config["ensemble"] = {"members": members, "checkpoint": checkpoint}
    config.setdefault("eval", {}).update(tta=settings.tta, threshold=settings.threshold,
                                         native_resolution=settings.native_resolution,
                                         surface_metrics=settings.surface_metrics)
    config.setdefault("dataset", {})["fold"] = None
    merged = OmegaConf.create(config)
    for line in differences:  # members of several configurations: no single value
        OmegaConf.update(merged, line.split(":", 1)[0], "mixed", merge=False)
    return cast(dict, OmegaConf.to_container(merged))
