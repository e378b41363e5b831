"""`segbench ensemble <folder or run dirs>`: the mean of several runs' foreground probabilities on
their shared test split, written as a run-like directory that `segbench report` reads (see
segbench.inference.ensembling for which runs can be averaged)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import cast

from segbench.cli_args import path_arguments, quote
from segbench.runs.rundir import RunDir

# Hydra, OmegaConf (about a second to import) and segbench's inference modules (torch) load inside
# the functions that use them, so that `segbench --help` and argument errors answer at once.

CONFIG = "ensemble"
HELP = "average several runs' probabilities on their test split: ensemble <folder or run dirs>"

log = logging.getLogger("segbench.inference.ensembling")

_paths = path_arguments("runs", ("output", "data_root"), many=True, must_exist=("runs",))


def _runs_value(argv: list[str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    line = next(a for a in argv if a.startswith("runs="))
    value = OverridesParser.create().parse_override(line).value()
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def prepare(argv: list[str]) -> list[str]:
    """Positional paths -> `runs`; without `output`, the ensemble goes beside the runs."""
    out = _paths(argv)
    if any(a.startswith("output=") for a in out) or not any(a.startswith("runs=") for a in out):
        return out
    runs = [os.path.abspath(Path(r).expanduser()) for r in _runs_value(out)]
    base = Path(runs[0]) if len(runs) == 1 else Path(os.path.commonpath(runs))
    tta = any(a.replace(" ", "") in ("eval.tta=true", "eval.tta=True") for a in out)
    return out + [quote("output", str(base / ("ensemble_tta" if tta else "ensemble")))]


def run(cfg) -> dict:
    from omegaconf import OmegaConf

    from segbench.inference.ensembling import Request, build_ensemble, find_members
    from segbench.runtime.device import resolve_device

    runs = list(cfg.runs) if OmegaConf.is_list(cfg.runs) else [cfg.runs]
    members, searched = find_members(runs)
    out = RunDir(Path(cfg.output).expanduser())
    eval_options = cast(dict, OmegaConf.to_container(cfg.eval))  # the `eval:` mapping
    request = Request(cfg.checkpoint, resolve_device(cfg.device), eval_options, cfg.batch_size,
                      cfg.data_root, searched)
    result = build_ensemble(members, out, request)
    log.info("wrote %s", out.path)
    return result
