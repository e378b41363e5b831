"""`segbench predict run_dir=<dir> input=<file or folder> output=<folder>`: segment new images.

Each image goes through the run's own preprocessing and best checkpoint and comes back at its
original size (see segbench.inference.prediction). Writes <stem>_mask.png (0/255),
<stem>_overlay.png, optionally the probabilities (`predict.probabilities`), and areas.csv;
unreadable files are skipped with a warning and listed in areas.csv with their error; the command
fails only when no image could be read. Its log is <output>.predict.log, beside the masks folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from segbench import SegbenchError
from segbench.cli_args import path_arguments
from segbench.commands import log_file

# OmegaConf and the segbench modules that import torch load inside the functions that use them, so
# that `segbench --help` and argument errors answer at once.

CONFIG = "predict"
HELP = ("segment new images with a run (or an ensemble of runs): "
        "predict <run_dir...> input=<path> output=<dir>")

OWN_LOG_FILE = True  # predict.log goes beside the masks folder, not among the masks

prepare = path_arguments("run_dir", ("input", "output"), ("input", "output"),
                         must_exist=("run_dir",), many=True)

log = logging.getLogger("segbench.predict")


def run(cfg) -> dict:
    out_dir = Path(cfg.output).expanduser().resolve()  # output=. has a name too
    path = out_dir.parent / f"{out_dir.name}.predict.log"
    existed = path.exists()
    try:
        with log_file(path):
            return _run(cfg)
    except SegbenchError:
        if not existed:  # a refusal leaves nothing behind (the console said why)
            path.unlink(missing_ok=True)
        raise


def _run(cfg) -> dict:
    from omegaconf import OmegaConf

    from segbench.inference.prediction import (
        find_predictor_runs,
        list_inputs,
        load_predictor,
        predict_files,
        probability_format,
    )
    from segbench.runtime.device import resolve_device

    runs = list(cfg.run_dir) if OmegaConf.is_list(cfg.run_dir) else [cfg.run_dir]
    members = find_predictor_runs(runs)
    members[0].checkpoint_path(cfg.checkpoint)  # best | last
    members[0].warn_if_unfinished("predict")
    prob_format = probability_format(cfg.predict.probabilities)
    if int(cfg.batch_size) < 1:
        raise SegbenchError(f"batch_size={cfg.batch_size}; use 1 or more")
    source, out_dir = Path(cfg.input).expanduser(), Path(cfg.output).expanduser()
    files = list_inputs(source)
    if source.is_dir() and source.resolve() == out_dir.resolve():
        raise SegbenchError("output is the input folder: masks would mix with the images; "
                            "choose another output folder")
    eval_options = cast(dict, OmegaConf.to_container(cfg.eval))  # the `eval:` mapping
    predictor = load_predictor(members, cfg.checkpoint, resolve_device(cfg.device), eval_options)
    height, width = predictor.size
    log.info("predicting %d image(s) with %s (%s checkpoint, epoch %s) at %dx%d%s", len(files),
             predictor.describe(), cfg.checkpoint, predictor.epoch, height, width,
             ", flip TTA" if predictor.settings.tta else "")
    done = predict_files(predictor, files, out_dir, int(cfg.batch_size), prob_format,
                         float(cfg.predict.progress_interval_s))
    skipped, seconds = done["skipped"], done["seconds"]
    if skipped:
        log.warning("%d of %d file(s) could not be read and were skipped: %s", len(skipped),
                    len(files), ", ".join(f.name for f, _ in skipped))
    if done["predicted"] == 0:
        raise SegbenchError(f"none of the {len(files)} input file(s) could be read; see the "
                            "warnings above (each names the file and the problem)")
    log.info("wrote %d mask(s), overlays%s and areas.csv to %s in %.1fs (%.1f img/s)",
             done["predicted"], f", probabilities ({prob_format})" if prob_format else "", out_dir,
             seconds, len(files) / seconds if seconds > 0 else 0.0)
    return {"predicted": done["predicted"], "skipped": [str(f) for f, _ in skipped],
            "members": len(members), "config": OmegaConf.to_container(cfg.eval)}
