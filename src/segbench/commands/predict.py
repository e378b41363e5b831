"""`segbench predict run_dir=<dir> input=<file or folder> output=<folder>`: segment new images.

Each image goes through the run's own preprocessing and best checkpoint and comes back at its
original size (see segbench.prediction). Writes <stem>_mask.png (0/255), <stem>_overlay.png and
areas.csv; unreadable files are skipped with a warning and listed in areas.csv with their error;
the command fails only when no image could be read.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from segbench import SegbenchError
from segbench.atomic import write_atomic
from segbench.cli_args import path_arguments

CONFIG = "predict"
HELP = "segment new images with a run (or an ensemble of runs): predict <run_dir...> input=<path> output=<dir>"

OWN_LOG_FILE = True  # predict.log goes beside the masks folder, not among the masks

prepare = path_arguments("run_dir", ("input", "output"), ("input", "output"), must_exist=("run_dir",),
                         many=True)

log = logging.getLogger("segbench.predict")


def run(cfg) -> dict:
    from segbench.commands import log_file

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
    import numpy as np
    from omegaconf import OmegaConf

    from segbench.data import image_reader
    from segbench.engine.device import autocast_dtype, resolve_device
    from segbench.prediction import (
        list_inputs,
        output_stems,
        predict_images,
        probability_format,
        write_png,
        write_probability,
    )
    from segbench.progress import ItemProgress
    from segbench.rundir import RunDir
    from segbench.settings import check_threshold
    from segbench.viz import overlay

    runs = list(cfg.run_dir) if OmegaConf.is_list(cfg.run_dir) else [cfg.run_dir]
    one = Path(str(runs[0])).expanduser()
    if len(runs) == 1 and (RunDir(one).is_run() or not one.is_dir()
                           or not any(one.rglob("config.yaml"))):
        members = [RunDir.open(one)]
    else:  # several runs, or a folder of runs: their mean probability
        from segbench.ensemble import check_members, find_members

        members, searched = find_members(runs)
        check_members(members, same_test=False, one_configuration=searched)
    run_dir = members[0]
    run_dir.checkpoint_path(cfg.checkpoint)  # best | last
    run_dir.warn_if_unfinished("predict")
    prob_format = probability_format(cfg.predict.probabilities)
    if int(cfg.batch_size) < 1:
        raise SegbenchError(f"batch_size={cfg.batch_size}; use 1 or more")
    source, out_dir = Path(cfg.input).expanduser(), Path(cfg.output).expanduser()
    files = list_inputs(source)
    if source.is_dir() and source.resolve() == out_dir.resolve():
        raise SegbenchError("output is the input folder: masks would mix with the images; "
                            "choose another output folder")
    train_cfg = run_dir.read_config()
    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype(device, train_cfg.trainer.get("precision", "auto"))
    if len(members) == 1:
        threshold = check_threshold(cfg.eval.threshold if cfg.eval.threshold is not None
                                    else train_cfg.eval.threshold)
        tta = bool(cfg.eval.tta if cfg.eval.tta is not None else train_cfg.eval.tta)
        model, state, _ = run_dir.load_model(cfg.checkpoint, device, train_cfg)
    else:
        from segbench.ensemble import load_ensemble, shared_setting

        threshold = check_threshold(shared_setting(members, "threshold", cfg.eval.threshold))
        tta = bool(shared_setting(members, "tta", cfg.eval.tta))
        model, states = load_ensemble(members, cfg.checkpoint, device)
        state = {"epoch": ", ".join(str(st.get("epoch")) for st in states)}
    model.eval()
    height, width = int(train_cfg.resolution.height), int(train_cfg.resolution.width)
    read_image = image_reader(train_cfg)  # the run's own decoding (e.g. its CT window)
    out_dir.mkdir(parents=True, exist_ok=True)
    using = (str(run_dir.path) if len(members) == 1 else
             f"an ensemble of {len(members)} runs ({', '.join(m.name() for m in members)})")
    log.info("predicting %d image(s) with %s (%s checkpoint, epoch %s) at %dx%d%s", len(files),
             using, cfg.checkpoint, state.get("epoch"), height, width, ", flip TTA" if tta else "")

    rows, skipped = [], []
    stems = dict(zip(files, output_stems(files)))
    progress = ItemProgress(len(files), interval_s=float(cfg.predict.progress_interval_s))
    for start in range(0, len(files), int(cfg.batch_size)):
        if start:
            progress.update(int(cfg.batch_size))
        batch = []
        for f in files[start:start + int(cfg.batch_size)]:
            try:
                batch.append((f, read_image(f)))
            except SegbenchError as err:
                log.warning("skipping %s", err)
                skipped.append((f, str(err)))
        if not batch:
            continue
        probs = predict_images(model, [im for _, im in batch], height=height, width=width,
                               device=device, amp_dtype=amp_dtype, tta=tta)
        for (f, image), prob in zip(batch, probs):
            mask = (prob >= threshold).astype(np.uint8)
            stem = stems[f]
            write_png(out_dir / f"{stem}_mask.png", mask * 255)
            shown = (overlay(image, mask, mask) * 255).round().astype(np.uint8)
            write_png(out_dir / f"{stem}_overlay.png", shown)
            area = int(mask.sum())
            rows.append({"image": f.name, "width": image.shape[1], "height": image.shape[0],
                         "foreground_pixels": area,
                         "foreground_fraction": f"{area / mask.size:.6f}",
                         "mask": f"{stem}_mask.png", "overlay": f"{stem}_overlay.png", "error": "",
                         **({"probability": write_probability(out_dir, stem, prob, prob_format)}
                            if prob_format else {})})
    progress.update(len(files) - progress.done)
    seconds = progress.close()
    rows += [{"image": f.name, "error": err} for f, err in skipped]
    fields = ["image", "width", "height", "foreground_pixels", "foreground_fraction", "mask",
              "overlay", *(["probability"] if prob_format else []), "error"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out_dir / "areas.csv", text.getvalue())
    predicted = len(rows) - len(skipped)
    if skipped:
        log.warning("%d of %d file(s) could not be read and were skipped: %s", len(skipped),
                    len(files), ", ".join(f.name for f, _ in skipped))
    if predicted == 0:
        raise SegbenchError(f"none of the {len(files)} input file(s) could be read; see the "
                            "warnings above (each names the file and the problem)")
    log.info("wrote %d mask(s), overlays%s and areas.csv to %s in %.1fs (%.1f img/s)", predicted,
             f", probabilities ({prob_format})" if prob_format else "", out_dir, seconds,
             len(files) / seconds if seconds > 0 else 0.0)
    return {"predicted": predicted, "skipped": [str(f) for f, _ in skipped], "members": len(members),
            "config": OmegaConf.to_container(cfg.eval)}
