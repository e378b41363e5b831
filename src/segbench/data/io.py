"""Reading images and masks from disk, with errors that name the file.

Every decoder (OpenCV for PNG, JPEG and BMP, tifffile for TIFF) is checked for the ways a damaged
file gets through it: OpenCV fills the missing part of a truncated JPEG with grey and only prints
"Premature end of JPEG file", so a JPEG must end with its end-of-image marker after its last scan;
tifffile returns an empty array for a TIFF cut inside its header. Either is "truncated or corrupt",
with the file's name, wherever segbench reads images (train, eval, verify, predict).

Pixels are read as they are meant, or refused by name, never silently otherwise: an image's size
is read from its header first and one over the pixel limit (`SEGBENCH_MAX_PIXELS`) is refused
before any decoding; a JPEG's EXIF orientation is applied (OpenCV's IMREAD_UNCHANGED ignores it,
while a mask drawn on the displayed picture follows it); a 16-bit PNG is scaled by its real bit
depth; an RGBA mask whose colour is constant is read from its alpha channel.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from segbench import SegbenchError

TIFF_SUFFIXES = {".tif", ".tiff"}
JPEG_START, JPEG_SCAN, JPEG_END = b"\xff\xd8", b"\xff\xda", b"\xff\xd9"
PNG_START = b"\x89PNG\r\n\x1a\n"


class CorruptImage(SegbenchError):
    """A file that exists but cannot be decoded completely (truncated, corrupt, not an image)."""


def corrupt(path: Path, detail: str) -> CorruptImage:
    return CorruptImage(f"{path} is truncated or corrupt ({detail}); replace it with a complete "
                        "copy (`segbench verify` lists every such file)")


# PIL's decompression-bomb limit is the convention (Image.MAX_IMAGE_PIXELS, ~89.5 megapixels,
# about 9500x9500): far above any 2D medical image, far below what fills memory.
MAX_PIXELS = "SEGBENCH_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 89_478_485
ORIENTATION = 0x0112  # the EXIF orientation tag
_PIL_LIMIT = threading.Lock()  # PIL's limit is process-wide: one thread sets it aside at a time


class TooLarge(SegbenchError):
    """An image whose header claims more pixels than the limit (refused before decoding)."""


def max_pixels() -> int:
    value = os.environ.get(MAX_PIXELS, "")
    try:
        return int(value) if value.strip() else DEFAULT_MAX_PIXELS
    except ValueError:
        raise SegbenchError(f"{MAX_PIXELS}={value!r}: give a whole number of pixels, e.g. "
                            f"{DEFAULT_MAX_PIXELS}") from None


def header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header without decoding its pixels; None when the header
    cannot be read (the decoder then says what is wrong with the file)."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                shape = tif.pages[0].shape
            return (int(shape[1]), int(shape[0])) if len(shape) >= 2 else None
        with _PIL_LIMIT:  # the check is ours (with its size in the message): PIL's is set aside
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as im:
                    return im.size
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except Exception:  # every header reader has its own errors
        return None


def check_size(path: Path) -> None:
    size = header_size(path)
    limit = max_pixels()
    if size is not None and size[0] * size[1] > limit:
        w, h = size
        raise TooLarge(f"{path} is {w}x{h} pixels ({w * h / 1e6:.0f} megapixels), over the "
                       f"limit of {limit} pixels; it is not decoded (it would need about "
                       f"{w * h * 3 / 2**30:.1f} GiB). Shrink it, or raise the limit: "
                       f"{MAX_PIXELS}=<pixels>")


def exif_orientation(path: Path) -> int:
    """The EXIF orientation of a JPEG (1: as stored), from its header."""
    try:
        with Image.open(path) as im:
            value = im.getexif().get(ORIENTATION, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels as displayed under EXIF `orientation` (PIL's ImageOps.exif_transpose)."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.rot90(a, 2).swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def png_significant_bits(data: bytes) -> int | None:
    """The PNG sBIT chunk's significant bits (the largest over channels), None without one."""
    at = 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"sBIT":
            return max(data[at + 8:at + 8 + length]) or None
        if kind in (b"IDAT", b"IEND"):
            return None
        at += 12 + length
    return None


def jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG's last scan is followed by its end-of-image marker (inside scan data every
    0xFF byte is stuffed, so FF D9 there can only be the real marker)."""
    scan = data.rfind(JPEG_SCAN)
    return scan != -1 and data.find(JPEG_END, scan + 2) != -1


def read_array(path: Path, alpha: bool = False) -> np.ndarray:
    """The file's pixels as displayed (any dtype): HxW or HxWxC, RGB channel order (RGBA with
    `alpha`)."""
    path = Path(path)
    try:
        check_size(path)
        if path.suffix.lower() in TIFF_SUFFIXES:
            arr = tifffile.imread(path)
        else:
            data = path.read_bytes()
            if data[:2] == JPEG_START and not jpeg_complete(data):
                raise corrupt(path, "the JPEG data ends before its end-of-image marker")
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if decoded is None:
                raise corrupt(path, "OpenCV cannot decode it" if data else "the file is empty")
            arr = decoded
            if arr.ndim == 3:
                to_rgb = cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB
                arr = cv2.cvtColor(arr, to_rgb)
            if data[:2] == JPEG_START:
                arr = orient(arr, exif_orientation(path))
    except FileNotFoundError:
        raise SegbenchError(f"file not found: {path}") from None
    except (PermissionError, IsADirectoryError) as err:
        raise SegbenchError(f"cannot read {path}: {err.strerror}") from None
    except SegbenchError:
        raise
    except Exception as err:  # every decoder has its own exception types
        raise corrupt(path, str(err).strip().splitlines()[0] if str(err).strip()
                      else type(err).__name__) from None
    if arr.ndim == 3 and arr.shape[2] == 4 and not alpha:
        arr = arr[..., :3]  # alpha carries no image content here
    if arr.size == 0:
        raise corrupt(path, "it holds no pixels")
    if arr.ndim not in (2, 3):
        raise SegbenchError(f"cannot read {path}: unexpected pixel array of shape {arr.shape}")
    return arr


def significant_bits(arr: np.ndarray, path: Path) -> int:
    """The real bit depth of the 16-bit pixels of file `path`: its PNG sBIT chunk where it has
    one, else the smallest of 10, 12, 14 and 16 bits that holds the largest value (12-bit CT or
    X-ray data is commonly stored in 16-bit files; dividing it by 257 would leave a few greys)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        head = b""
    bits = png_significant_bits(head) if head[:8] == PNG_START else None
    if bits and 8 < bits <= 16:
        return bits
    top = int(arr.max()) if arr.size else 0
    return next(b for b in (10, 12, 14, 16) if top < 1 << b)


def scale_16bit(arr: np.ndarray, path: Path) -> np.ndarray:
    """16-bit pixels of their real bit depth -> uint8 (full range of that depth -> 0..255)."""
    top = (1 << significant_bits(arr, path)) - 1
    return np.clip(np.asarray(arr, np.float64) * (255.0 / top), 0, 255).round().astype(np.uint8)


def to_uint8_image(arr: np.ndarray, channels: int, path: Path) -> np.ndarray:
    """HxWxchannels uint8 from an 8- or 16-bit image (scaled by its real bit depth); grey is
    replicated, colour averaged."""
    if arr.dtype == np.uint16:
        arr = scale_16bit(arr, path)
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
    raise SegbenchError(f"{path}: {arr.shape[2]} channels cannot become "
                        f"dataset.channels={channels}")


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    return to_uint8_image(read_array(path), channels, path)


def read_mask(path: Path) -> tuple[np.ndarray, set[int]]:
    """HxW uint8 mask in {0, 1} (foreground: value > 0), and the set of values the file held."""
    arr = np.asarray(read_array(path, alpha=True))
    if arr.ndim == 3 and arr.shape[2] == 4:
        colour, alpha = arr[..., :3], arr[..., 3]
        constant = (colour == colour.reshape(-1, 3)[0]).all()
        # A shape drawn as transparency on one colour lives in alpha alone; otherwise alpha is
        # only how the mask is shown and the colour holds it.
        arr = alpha if constant and alpha.min() != alpha.max() else colour
    if arr.ndim == 3:
        # RGB masks (Kvasir-Instrument) hold three identical channels; any non-zero channel counts.
        arr = arr.max(axis=2)
    values = set(np.unique(arr).tolist()) if arr.size else set()
    return (arr > 0).astype(np.uint8), values
