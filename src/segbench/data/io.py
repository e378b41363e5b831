"""Reading images and masks from disk, with errors that name the file.

Every decoder (OpenCV for PNG, JPEG and BMP, tifffile for TIFF) is checked for the ways a damaged
file gets through it: OpenCV fills the missing part of a truncated JPEG with grey and only prints
"Premature end of JPEG file", so a JPEG must end with its end-of-image marker after its last scan;
tifffile returns an empty array for a TIFF cut inside its header. Either is "truncated or corrupt",
with the file's name, wherever segbench reads images (train, eval, verify, predict).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from segbench import SegbenchError

TIFF_SUFFIXES = {".tif", ".tiff"}
JPEG_START, JPEG_SCAN, JPEG_END = b"\xff\xd8", b"\xff\xda", b"\xff\xd9"


class CorruptImage(SegbenchError):
    """A file that exists but cannot be decoded completely (truncated, corrupt, not an image)."""


def corrupt(path: Path, detail: str) -> CorruptImage:
    return CorruptImage(f"{path} is truncated or corrupt ({detail}); replace it with a complete "
                        "copy (`segbench verify` lists every such file)")


def jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG's last scan is followed by its end-of-image marker (inside scan data every
    0xFF byte is stuffed, so FF D9 there can only be the real marker)."""
    scan = data.rfind(JPEG_SCAN)
    return scan != -1 and data.find(JPEG_END, scan + 2) != -1


def read_array(path: Path) -> np.ndarray:
    """The file's pixels as stored (any dtype): HxW or HxWxC, RGB channel order."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            arr = tifffile.imread(path)
        else:
            data = path.read_bytes()
            if data[:2] == JPEG_START and not jpeg_complete(data):
                raise corrupt(path, "the JPEG data ends before its end-of-image marker")
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise corrupt(path, "OpenCV cannot decode it" if data else "the file is empty")
            if arr.ndim == 3:
                arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    except FileNotFoundError:
        raise SegbenchError(f"file not found: {path}") from None
    except (PermissionError, IsADirectoryError) as err:
        raise SegbenchError(f"cannot read {path}: {err.strerror}") from None
    except SegbenchError:
        raise
    except Exception as err:  # every decoder has its own exception types
        raise corrupt(path, str(err).strip().splitlines()[0] if str(err).strip()
                      else type(err).__name__) from None
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]  # alpha carries no image content here
    if arr.size == 0:
        raise corrupt(path, "it holds no pixels")
    if arr.ndim not in (2, 3):
        raise SegbenchError(f"cannot read {path}: unexpected pixel array of shape {arr.shape}")
    return arr


def to_uint8_image(arr: np.ndarray, channels: int, path: Path) -> np.ndarray:
    """HxWxchannels uint8 from an 8- or 16-bit image; grey is replicated, colour averaged."""
    if arr.dtype == np.uint16:
        arr = (arr / 257).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise SegbenchError(
            f"{path}: {arr.dtype} pixels need a dataset-specific conversion (e.g. a CT window); "
            "this dataset reads 8-bit images only"
        )
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == channels:
        return arr
    if channels == 3 and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if channels == 1 and arr.shape[2] == 3:
        return cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)[..., None]
    raise SegbenchError(f"{path}: {arr.shape[2]} channels cannot become dataset.channels={channels}")


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    return to_uint8_image(read_array(path), channels, path)


def read_mask(path: Path) -> tuple[np.ndarray, set[int]]:
    """HxW uint8 mask in {0, 1} (foreground: value > 0), and the set of values the file held."""
    arr = read_array(path)
    if arr.ndim == 3:
        # RGB masks (Kvasir-Instrument) hold three identical channels; any non-zero channel counts.
        arr = arr.max(axis=2)
    values = set(np.unique(arr).tolist()) if arr.size else set()
    return (arr > 0).astype(np.uint8), values
