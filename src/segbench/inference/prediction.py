"""Segmenting new images with a trained run (the library side of `segbench predict`).

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
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from segbench import SegbenchError
from segbench.atomic import write_atomic
from segbench.data import image_reader
from segbench.inference.ensembling import check_members, find_members, load_ensemble
from segbench.inference.evaluation import eval_settings
from segbench.inference.loop import model_task, predict_probs
from segbench.metrics import predicted_labels
from segbench.models import load_trained
from segbench.progress import ItemProgress
from segbench.runs.rundir import RunDir
from segbench.runtime.device import autocast_dtype
from segbench.settings import Eval
from segbench.viz import class_palette, colour_labels, overlay

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def list_inputs(path: Path) -> list[Path]:
    """One image, or the images directly inside a folder (other files are ignored)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SegbenchError(f"input={path} does not exist; pass an image file or a folder of "
                            "images")
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
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
    """Probabilities at each image's own size: H x W foreground probabilities (binary), or
    C x H x W class probabilities (multiclass: softmax; multilabel: one sigmoid per class)."""
    batch = np.stack([resize_image(im, height, width) for im in images])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(device)
    probs = predict_probs(model, x, amp_dtype, tta=tta)
    binary = model_task(model).kind == "binary"
    # Bilinear back to each image's size, exactly as eval.native_resolution scores test images.
    out = [torch.nn.functional.interpolate(prob[None], size=image.shape[:2], mode="bilinear",
                                           align_corners=False)[0].cpu().numpy()
           for prob, image in zip(probs, images)]
    return [p[0] for p in out] if binary else out


PROBABILITY_FORMATS = {"npy": "_prob.npy", "png": "_prob.png"}


def probability_format(setting) -> str | None:
    """`predict.probabilities`: false (none), true or npy (float16 .npy), png (8-bit PNG)."""
    if setting in (None, False, "false", "none"):
        return None
    if setting is True or setting in ("true", "npy"):
        return "npy"
    if setting == "png":
        return "png"
    raise SegbenchError(f"predict.probabilities={setting}: use false, true (float16 .npy) or png "
                        "(8-bit PNG, probability x 255)")


def predicted_mask(prob: np.ndarray, task, threshold: float) -> np.ndarray:
    """One image's prediction from `predict_images`' probabilities: a bool mask (binary), or a
    uint8 label map as the task stores masks (class indices, or one bit per class)."""
    if task.kind == "binary":
        return prob >= threshold
    return predicted_labels(torch.from_numpy(prob)[None], task, threshold)[0].numpy()


def write_probability(out_dir: Path, stem: str, prob: np.ndarray, fmt: str) -> str:
    """The foreground probability at the image's size: float16 .npy (for thresholding or fusing
    later; 3 significant digits) or an 8-bit PNG (round(255 p)). Returns the file's name."""
    name = stem + PROBABILITY_FORMATS[fmt]
    if fmt == "png":
        write_png(out_dir / name, np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8))
    else:
        buffer = io.BytesIO()
        np.save(buffer, prob.astype(np.float16))
        write_atomic(out_dir / name, buffer.getvalue())
    return name


def write_png(path: Path, rgb_or_grey: np.ndarray) -> None:
    arr = rgb_or_grey if rgb_or_grey.ndim == 2 else cv2.cvtColor(rgb_or_grey, cv2.COLOR_RGB2BGR)
    ok, png = cv2.imencode(".png", arr)
    if not ok:
        raise SegbenchError(f"cannot encode {path} as PNG")
    write_atomic(path, png.tobytes())


@dataclass
class Predictor:
    """A run's model (or an ensemble of runs' models) with what predicting needs from the run:
    its decoding, resolution, autocast dtype and the resolved threshold and TTA."""

    model: torch.nn.Module
    members: list[RunDir]
    cfg: DictConfig             # the (first) run's config: decoding and resolution
    settings: Eval
    device: torch.device
    amp_dtype: torch.dtype | None
    epoch: object               # the checkpoint's epoch (an ensemble: each member's)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.cfg.resolution.height), int(self.cfg.resolution.width)

    def describe(self) -> str:
        if len(self.members) == 1:
            return str(self.members[0].path)
        return (f"an ensemble of {len(self.members)} runs "
                f"({', '.join(m.name() for m in self.members)})")

    def probabilities(self, images: list[np.ndarray]) -> list[np.ndarray]:
        height, width = self.size
        return predict_images(self.model, images, height=height, width=width, device=self.device,
                              amp_dtype=self.amp_dtype, tta=self.settings.tta)


def find_predictor_runs(paths: list[str]) -> list[RunDir]:
    """One run directory, or several runs (or a folder of runs): an ensemble's members."""
    one = Path(str(paths[0])).expanduser()
    if len(paths) == 1 and (RunDir(one).is_run() or not one.is_dir()
                            or not any(one.rglob("config.yaml"))):
        return [RunDir.open(one)]
    members, searched = find_members(paths)
    check_members(members, same_test=False, one_configuration=searched)
    return members


def load_predictor(members: list[RunDir], checkpoint: str, device,
                   given_eval: dict | None) -> Predictor:
    """The members' model on `device`, with threshold and TTA from the command line where given,
    else the runs' own (segbench.inference.evaluation.eval_settings)."""
    first = members[0]
    first.checkpoint_path(checkpoint)  # best | last
    cfg = first.read_config()
    settings = eval_settings(given_eval, [m.read_config().get("eval", {}) for m in members])
    if len(members) == 1:
        model, state, _ = load_trained(first, checkpoint, device, cfg)
        epoch = state.get("epoch")
        amp_dtype = autocast_dtype(device, cfg.trainer.get("precision", "auto"))
    else:
        model, states = load_ensemble(members, checkpoint, device)
        epoch, amp_dtype = ", ".join(str(st.get("epoch")) for st in states), None
    return Predictor(model.eval(), members, cfg, settings, device, amp_dtype, epoch)


AREA_FIELDS = ["image", "width", "height", "foreground_pixels", "foreground_fraction", "mask",
               "overlay", "error"]


def predict_files(predictor: Predictor, files: list[Path], out_dir: Path, batch_size: int,
                  probabilities: str | None = None, progress_interval_s: float = 30.0) -> dict:
    """<stem>_mask.png (0/255), <stem>_overlay.png (and with `probabilities`, npy or png, the
    probability map) per readable file and areas.csv in `out_dir`, with progress (a bar on a
    terminal, else lines); unreadable files are skipped with a warning and listed in areas.csv
    with their error. Returns {"predicted": n, "skipped": [(file, error)], "seconds": s}."""
    read_image = image_reader(predictor.cfg)  # the run's own decoding (e.g. its CT window)
    task = model_task(predictor.model)
    if task.kind != "binary" and probabilities == "png":
        raise SegbenchError(f"predict.probabilities=png is one foreground map per image; a "
                            f"{task.kind} run's probabilities are one map per class: use "
                            "predict.probabilities=true (float16 .npy, classes first)")
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = dict(zip(files, output_stems(files)))
    rows, skipped = [], []
    progress = ItemProgress(len(files), interval_s=float(progress_interval_s))
    for start in range(0, len(files), batch_size):
        if start:
            progress.update(batch_size)
        batch = []
        for f in files[start:start + batch_size]:
            try:
                batch.append((f, read_image(f)))
            except SegbenchError as err:
                log.warning("skipping %s", err)
                skipped.append((f, str(err)))
        if batch:
            probs = predictor.probabilities([image for _, image in batch])
            for (f, image), prob in zip(batch, probs):
                threshold = predictor.settings.threshold
                row = (write_prediction(out_dir, stems[f], f, image, prob, threshold)
                       if task.kind == "binary" else
                       write_labels(out_dir, stems[f], f, image, prob, task, threshold))
                if probabilities:
                    row["probability"] = write_probability(out_dir, stems[f], prob, probabilities)
                rows.append(row)
    progress.update(len(files) - progress.done)
    seconds = progress.close()
    fields = AREA_FIELDS[:-1] + (["probability"] if probabilities else []) + AREA_FIELDS[-1:]
    if task.kind != "binary":
        fields = fields[:5] + [f"pixels_{n}" for n in task.names] + fields[5:]
    unread = [{"image": f.name, "error": err} for f, err in skipped]
    write_areas(out_dir / "areas.csv", rows + unread, fields)
    return {"predicted": len(rows), "skipped": skipped, "seconds": seconds}


def write_prediction(out_dir: Path, stem: str, file: Path, image: np.ndarray, prob: np.ndarray,
                     threshold: float) -> dict:
    """One image's mask and overlay; its areas.csv row."""
    mask = (prob >= threshold).astype(np.uint8)
    write_png(out_dir / f"{stem}_mask.png", mask * 255)
    write_png(out_dir / f"{stem}_overlay.png",
              (overlay(image, mask, mask) * 255).round().astype(np.uint8))
    area = int(mask.sum())
    return {"image": file.name, "width": image.shape[1], "height": image.shape[0],
            "foreground_pixels": area, "foreground_fraction": f"{area / mask.size:.6f}",
            "mask": f"{stem}_mask.png", "overlay": f"{stem}_overlay.png", "error": ""}


def write_labels(out_dir: Path, stem: str, file: Path, image: np.ndarray, prob: np.ndarray,
                 task, threshold: float) -> dict:
    """One image's label map and overlay (several classes); its areas.csv row. Multiclass: a
    palette PNG whose pixel values are the declared mask values and whose colours are the
    classes'; multilabel: one 0/255 PNG per class (`<stem>_<class>_mask.png`)."""
    labels = predicted_mask(prob, task, threshold)
    row = {"image": file.name, "width": image.shape[1], "height": image.shape[0], "error": ""}
    if task.kind == "multiclass":
        values = np.array(task.values)
        write_palette_png(out_dir / f"{stem}_mask.png", values[labels], task, class_palette(task))
        row["mask"] = f"{stem}_mask.png"
    else:
        for k, name in enumerate(task.names):
            write_png(out_dir / f"{stem}_{name}_mask.png",
                      task.class_mask(labels, k).astype(np.uint8) * 255)
        row["mask"] = f"{stem}_<class>_mask.png"
    for k, name in enumerate(task.names):
        row[f"pixels_{name}"] = int(task.class_mask(labels, k).sum())
    fg = task.foreground_mask(labels)
    row["foreground_pixels"] = int(fg.sum())
    row["foreground_fraction"] = f"{fg.mean():.6f}"
    shown = (colour_labels(labels, task, image) * 255).round().astype(np.uint8)
    write_png(out_dir / f"{stem}_overlay.png", shown)
    row["overlay"] = f"{stem}_overlay.png"
    return row


def write_palette_png(path: Path, values: np.ndarray, task, palette: np.ndarray) -> None:
    """A palette (P mode) PNG: pixel values are the mask values, shown in each class's colour."""
    if values.max(initial=0) > 255:
        write_png(path, values.astype(np.uint16))  # 16-bit values have no palette form
        return
    img = Image.fromarray(values.astype(np.uint8), mode="P")
    colours = np.zeros((256, 3), np.uint8)
    for value, rgb in zip(task.values, palette, strict=True):
        colours[value] = rgb
    img.putpalette(colours.ravel().tolist())
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def write_areas(path: Path, rows: list[dict], fields: list[str] = AREA_FIELDS) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())
