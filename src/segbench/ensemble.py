"""Ensembles of trained runs (the library side of `segbench ensemble` and of `predict` with
several runs): finding the member runs, checking that they can be averaged, loading them.

Members can be averaged when they see the same images the same way: identical preprocessing
(`resolution.*`, `model.in_channels` and every `dataset.*` key except those that only choose
the training/validation split) and, for `segbench ensemble`, the same recorded test split.
"""

from __future__ import annotations

import logging
from pathlib import Path

from segbench import SegbenchError
from segbench.rundir import (
    CONFIG,
    ENSEMBLE,
    METRICS,
    REPLICATE_KEYS,
    SPLIT,
    RunDir,
)

log = logging.getLogger(__name__)

# dataset keys that choose the training/validation split (or where the files are), not pixels.
SPLIT_KEYS = ("dataset.folds", "dataset.fold", "dataset.val_fraction", "dataset.train_fraction",
              "dataset.split_seed", "dataset.on_unpaired", "dataset.test_fraction")


def _finished(path: Path) -> bool:
    run = RunDir(path)
    return (run.is_run() and (path / METRICS).is_file() and run.has_checkpoint("best")
            and not (path / ENSEMBLE).is_file())


def find_members(paths: list[Path | str]) -> tuple[list[RunDir], bool]:
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
    from segbench.engine.device import autocast_dtype
    from segbench.models import load_trained
    from segbench.models.ensemble import Ensemble

    models, states, dtypes = [], [], []
    for m in members:
        config = m.read_config()
        model, state, _ = load_trained(m, checkpoint, device, config)
        models.append(model)
        states.append(state)
        dtypes.append(autocast_dtype(device, config.trainer.get("precision", "auto")))
    return Ensemble(models, dtypes).to(device).eval(), states


def shared_setting(members: list[RunDir], key: str, given=None):
    """`given`, or the members' common value of `eval.<key>` (an error when they differ)."""
    if given is not None:
        return given
    values = {m.read_config().get("eval", {}).get(key) for m in members}
    if len(values) > 1:
        raise SegbenchError(f"the runs use different eval.{key} ({sorted(map(str, values))}); "
                            f"choose one with eval.{key}=<value>")
    return values.pop()
