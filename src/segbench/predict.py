"""`segbench predict run_dir=<dir> input=<file or folder> output=<folder>`: segment new images.

Each image goes through the run's own preprocessing (its dataset's decoding, e.g. the CT window,
and dataset.channels; resize to the run's
resolution; the model scales and normalises internally), its best checkpoint (optionally with
flip TTA), and back to the image's original size: the probabilities are resized, then
thresholded, so a mask's edges are as smooth at full size as the network's output allows.

Writes <stem>_mask.png (0/255), <stem>_overlay.png and areas.csv (foreground pixels and fraction
per image). Unreadable files are skipped with a warning and listed in areas.csv with their error;
the command fails only when no image could be read.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from segbench import SegbenchError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def list_inputs(path: Path) -> list[Path]:
    """One image, or the images directly inside a folder (other files are ignored)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SegbenchError(f"input={path} does not exist; pass an image file or a folder of images")
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise SegbenchError(f"no images in {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def output_stems(files: list[Path]) -> list[str]:
    """File stems, or whole names where two inputs share a stem (a.png and a.jpg)."""
    stems = [f.stem for f in files]
    return [f.name if stems.count(f.stem) > 1 else f.stem for f in files]


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """As the training cache resizes (segbench.data.cache.resize_pair): area down, bilinear up."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    interp = cv2.INTER_AREA if height * width < h * w else cv2.INTER_LINEAR
    out = cv2.resize(image, (width, height), interpolation=interp)
    return out.reshape(height, width, image.shape[2])


@torch.no_grad()
def predict_images(model, images: list[np.ndarray], *, height: int, width: int, device,
                   amp_dtype=None, tta: bool = False) -> list[np.ndarray]:
    """Foreground probabilities at each image's own size."""
    from segbench.engine.evaluate import predict_probs

    batch = np.stack([resize_image(im, height, width) for im in images])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(device)
    probs = predict_probs(model, x, amp_dtype, tta=tta)
    # Bilinear back to each image's size, exactly as eval.native_resolution scores test images.
    return [torch.nn.functional.interpolate(prob[None], size=image.shape[:2], mode="bilinear",
                                            align_corners=False)[0, 0].cpu().numpy()
            for prob, image in zip(probs, images)]


def _write_png(path: Path, rgb_or_grey: np.ndarray) -> None:
    arr = rgb_or_grey if rgb_or_grey.ndim == 2 else cv2.cvtColor(rgb_or_grey, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), arr):
        raise SegbenchError(f"cannot write {path}; is the output folder writable?")


def predict_task(cfg: DictConfig) -> dict:
    from segbench.data import image_reader
    from segbench.engine.checkpoint import load_checkpoint
    from segbench.engine.device import autocast_dtype, resolve_device
    from segbench.models import build_model
    from segbench.viz import overlay

    run_dir = Path(cfg.run_dir).expanduser()
    if not (run_dir / "config.yaml").is_file():
        raise SegbenchError(f"{run_dir} is not a segbench training run: config.yaml is missing")
    if cfg.checkpoint not in ("best", "last"):
        raise SegbenchError(f"checkpoint={cfg.checkpoint!r}; use best or last")
    if int(cfg.batch_size) < 1:
        raise SegbenchError(f"batch_size={cfg.batch_size}; use 1 or more")
    source, out_dir = Path(cfg.input).expanduser(), Path(cfg.output).expanduser()
    files = list_inputs(source)
    if source.is_dir() and source.resolve() == out_dir.resolve():
        raise SegbenchError("output is the input folder: masks would mix with the images; "
                            "choose another output folder")
    train_cfg = OmegaConf.load(run_dir / "config.yaml")
    threshold = float(cfg.eval.threshold if cfg.eval.threshold is not None else train_cfg.eval.threshold)
    tta = bool(cfg.eval.tta if cfg.eval.tta is not None else train_cfg.eval.tta)
    if not 0 < threshold < 1:
        raise SegbenchError(f"eval.threshold={threshold}; use a probability between 0 and 1")
    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype(device, train_cfg.trainer.get("precision", "auto"))
    state = load_checkpoint(run_dir / "checkpoints" / f"{cfg.checkpoint}.pt", map_location=device)
    model = build_model(train_cfg, pretrained=False)  # the checkpoint holds the weights
    model.load_state_dict(state["model"])
    model.to(device).eval()
    height, width = int(train_cfg.resolution.height), int(train_cfg.resolution.width)
    read_image = image_reader(train_cfg)  # the run's own decoding (e.g. its CT window)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("predicting %d image(s) with %s (%s checkpoint, epoch %s) at %dx%d%s", len(files),
             run_dir, cfg.checkpoint, state.get("epoch"), height, width, ", flip TTA" if tta else "")

    rows, skipped = [], []
    stems = dict(zip(files, output_stems(files)))
    for start in range(0, len(files), int(cfg.batch_size)):
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
            _write_png(out_dir / f"{stem}_mask.png", mask * 255)
            shown = (overlay(image, mask, mask) * 255).round().astype(np.uint8)
            _write_png(out_dir / f"{stem}_overlay.png", shown)
            area = int(mask.sum())
            rows.append({"image": f.name, "width": image.shape[1], "height": image.shape[0],
                         "foreground_pixels": area,
                         "foreground_fraction": f"{area / mask.size:.6f}",
                         "mask": f"{stem}_mask.png", "overlay": f"{stem}_overlay.png", "error": ""})
    rows += [{"image": f.name, "error": err} for f, err in skipped]
    fields = ["image", "width", "height", "foreground_pixels", "foreground_fraction", "mask",
              "overlay", "error"]
    with open(out_dir / "areas.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    predicted = len(rows) - len(skipped)
    if skipped:
        log.warning("%d of %d file(s) could not be read and were skipped: %s", len(skipped),
                    len(files), ", ".join(f.name for f, _ in skipped))
    if predicted == 0:
        raise SegbenchError(f"none of the {len(files)} input file(s) could be read; see the "
                            "warnings above (each names the file and the problem)")
    log.info("wrote %d mask(s), overlays and areas.csv to %s", predicted, out_dir)
    return {"predicted": predicted, "skipped": [str(f) for f, _ in skipped],
            "config": OmegaConf.to_container(cfg.eval)}
