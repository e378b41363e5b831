"""The checkpoint file format: atomic checkpoints that `torch.load(path, weights_only=True)` can
read. It lives beside the run directory (rundir.py), which names and finds the checkpoints; what
goes into them is the engine's (`engine.trainer.last_checkpoint`).

A checkpoint holds tensors and plain Python values only (dicts, lists, numbers, strings): never a
pickled object. It is written to a temporary file in the same folder, flushed to disk and renamed
over the old one, so a crash or kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from segbench import SegbenchError
from segbench.atomic import write_atomic


def save_checkpoint(state: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise SegbenchError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # objects torch's weights-only loader refuses
        detail = re.search(r"WeightsUnpickler error: ([^\n]*?)(\. Please use|$)", str(err), re.M)
        raise SegbenchError(
            f"cannot load checkpoint {path}: it holds Python objects, not only tensors and plain "
            f"values ({detail[1] if detail else 'refused by the weights-only loader'}), so it is "
            "not a segbench checkpoint; segbench never runs code from a checkpoint") from None
    except Exception as err:  # a truncated zip, a foreign file, ...
        raise SegbenchError(f"cannot load checkpoint {path}: it is truncated or corrupt "
                            f"({_first_sentence(err)}); it is not a complete segbench "
                            "checkpoint: restore it from a copy, or train the configuration again "
                            "in a new run directory") from None


def _first_sentence(err: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip() or type(err).__name__
    first = re.split(r"(?<=[a-z])\. ", text.splitlines()[0])[0][:200]
    return first if len(first) > 20 else f"{type(err).__name__}: {first}"
