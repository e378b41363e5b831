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

import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from segbench import SegbenchError
from segbench.atomic import write_atomic

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


def write_probability(out_dir: Path, stem: str, prob: np.ndarray, fmt: str) -> str:
    """The foreground probability at the image's size: float16 .npy (for thresholding or fusing
    later; 3 significant digits) or an 8-bit PNG (round(255 p)). Returns the file's name."""
    import io

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
