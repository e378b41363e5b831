"""Seeded, group-aware splits. The test split is the dataset's own; validation is carved from the
training pool (a seeded `val_fraction`, or fold k of a K-fold partition with `folds`/`fold`);
`train_fraction` keeps a seeded subset of what remains for training.

Cross-validation (`dataset.folds=K dataset.fold=k`): the training pool's groups (patients, or
images where a sample has no group) are shuffled with `split_seed` and dealt one by one to the
fold holding the fewest images so far, so folds are patient-disjoint and about equal in images.
Fold k is the validation split, the other K-1 folds train; the test split is the dataset's own
and the same for every fold."""

from __future__ import annotations

import numpy as np

from segbench import SegbenchError
from segbench.data.source import Sample


def _groups(samples: list[Sample]) -> list[str]:
    """Unit of splitting: the sample's group (patient) where it has one, else the sample itself."""
    seen: dict[str, None] = {}
    for s in samples:
        seen.setdefault(s.group if s.group is not None else s.id, None)
    return list(seen)


def _take(samples: list[Sample], groups: set[str]) -> list[Sample]:
    return [s for s in samples if (s.group if s.group is not None else s.id) in groups]


def split_groups(samples: list[Sample], fraction: float,
                 seed: int) -> tuple[list[Sample], list[Sample]]:
    """(rest, held_out): about `fraction` of the groups held out, chosen by `seed`."""
    groups = _groups(samples)
    n_out = int(round(fraction * len(groups)))
    if fraction > 0:
        n_out = min(max(n_out, 1), len(groups) - 1)
    order = np.random.default_rng(seed).permutation(len(groups))
    out = {groups[i] for i in order[:n_out]}
    return _take(samples, set(groups) - out), _take(samples, out)


# The test split's own seed stream, apart from validation's (split_seed) and train_fraction's
# (split_seed + 1): the test images stay the same whatever the other fractions are.
TEST_SEED_OFFSET = 7919


def carve_test(samples: list[Sample], fraction: float, seed: int,
               unit: str = "images") -> tuple[list[Sample], list[Sample]]:
    """(training pool, test) for datasets without an official test split: about `fraction` of
    the groups (patients) or images, chosen by `seed`."""
    if not 0.0 < fraction < 1.0:
        raise SegbenchError(f"dataset.test_fraction must be in (0, 1), got {fraction}")
    n = len(_groups(samples))
    if n < 3:
        raise SegbenchError(
            f"the dataset has {n} {unit}: too few to split into train, validation and test "
            f"(at least 3 {unit} are needed). Point dataset.root at the whole dataset"
        )
    return split_groups(samples, fraction, seed + TEST_SEED_OFFSET)


def split_settings(dataset) -> dict:
    """make_splits()'s keyword arguments from a dataset config (older configs lack `folds`)."""
    folds = dataset.get("folds")
    fold = dataset.get("fold")
    return {"val_fraction": float(dataset.get("val_fraction", 0.2)),
            "train_fraction": float(dataset.get("train_fraction", 1.0)),
            "seed": int(dataset.get("split_seed", 0)),
            "folds": None if folds is None else int(folds),
            "fold": None if fold is None else int(fold)}


def fold_assignment(samples: list[Sample], folds: int, seed: int) -> list[list[str]]:
    """The groups (patients, or image ids) of each of `folds` folds: a seeded shuffle of the
    groups, each dealt to the fold with the fewest images so far (ties: the lowest fold)."""
    groups = _groups(samples)
    if folds < 2:
        raise SegbenchError(f"dataset.folds={folds}: cross-validation needs at least 2 folds "
                            "(or dataset.folds=null for one validation split)")
    if folds > len(groups):
        unit = "patients" if any(s.group is not None for s in samples) else "images"
        raise SegbenchError(f"dataset.folds={folds} but the training pool has {len(groups)} "
                            f"{unit}: use at most {len(groups)} folds")
    size: dict[str, int] = {}
    for s in samples:
        key = s.group if s.group is not None else s.id
        size[key] = size.get(key, 0) + 1
    assignment: list[list[str]] = [[] for _ in range(folds)]
    filled = [0] * folds
    for i in np.random.default_rng(seed).permutation(len(groups)):
        k = min(range(folds), key=lambda f: (filled[f], f))
        assignment[k].append(groups[i])
        filled[k] += size[groups[i]]
    return [sorted(a) for a in assignment]


def make_splits(pools: dict[str, list[Sample]], *, val_fraction: float, train_fraction: float,
                seed: int, folds: int | None = None, fold: int | None = None,
                record: dict | None = None) -> dict[str, list[Sample]]:
    """train/val/test from a dataset's pools ('train', 'test' and optionally its own 'val');
    with `folds`, validation is fold `fold` of the training pool's K-fold partition (and
    `record`, when given, gets its description for split.json under "cv")."""
    if not 0.0 < train_fraction <= 1.0:
        raise SegbenchError(f"dataset.train_fraction must be in (0, 1], got {train_fraction}")
    if folds is not None:
        if "val" in pools:
            raise SegbenchError(
                "dataset.folds is set but the dataset has its own validation list (val.txt): "
                "cross-validation would ignore it. Remove val.txt or set dataset.folds=null")
        if fold is None or not 0 <= fold < folds:
            raise SegbenchError(f"dataset.fold={fold}: with dataset.folds={folds} use a fold in "
                                f"0..{folds - 1}, e.g. `-m dataset.fold="
                                f"{','.join(str(k) for k in range(folds))}`")
        assignment = fold_assignment(pools["train"], folds, seed)
        val = _take(pools["train"], set(assignment[fold]))
        held = {s.id for s in val}
        train = [s for s in pools["train"] if s.id not in held]
        if record is not None:
            grouped = any(s.group is not None for s in pools["train"])
            record["cv"] = {"folds": folds, "fold": fold, "seed": seed,
                            "unit": "groups" if grouped else "images", "assignment": assignment}
    elif "val" in pools:
        train, val = pools["train"], pools["val"]
    else:
        if not 0.0 < val_fraction < 1.0:
            raise SegbenchError(f"dataset.val_fraction must be in (0, 1), got {val_fraction}")
        if len(_groups(pools["train"])) < 2:
            raise SegbenchError(
                "the training split has fewer than 2 images/patients: nothing to carve a "
                "validation split from"
            )
        train, val = split_groups(pools["train"], val_fraction, seed)
    if train_fraction < 1.0:
        _, train = split_groups(train, train_fraction, seed + 1)
    splits = {"train": train, "val": val, "test": pools["test"]}
    for name, items in splits.items():
        if not items:
            raise SegbenchError(f"the {name} split is empty: check the dataset and its split "
                                "settings")
    _check_disjoint(splits)
    return splits


def _check_disjoint(splits: dict[str, list[Sample]]) -> None:
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ids = {s.id for s in splits[a]} & {s.id for s in splits[b]}
            groups = ({s.group for s in splits[a] if s.group}
                      & {s.group for s in splits[b] if s.group})
            if ids or groups:
                shared = sorted(ids or groups)[:5]
                raise SegbenchError(f"the {a} and {b} splits share images/patients: {shared}")


def split_document(splits: dict[str, list[Sample]], info: dict) -> dict:
    """What split.json holds: the ids (and groups) of each split, with `info` (dataset, seed)."""
    doc = {**info, "counts": {k: len(v) for k, v in splits.items()},
           "splits": {k: [s.id for s in v] for k, v in splits.items()}}
    groups = {k: sorted({s.group for s in v if s.group}) for k, v in splits.items()}
    if any(groups.values()):
        doc["groups"] = groups
    return doc
