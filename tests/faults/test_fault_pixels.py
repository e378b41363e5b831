"""Images read as they are meant, or refused by name: EXIF orientation, masks in alpha, 12-bit
data in 16-bit PNGs, NaN in CT slices, split files from Windows editors, images whose header
claims more pixels than memory holds (refused before decoding), and `verify`'s warnings on masks
that are all background or all foreground."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import run_cli
from segbench import SegbenchError
from segbench.data.files import read_ids
from segbench.data.io import TooLarge, read_array, read_image, read_mask


def png_header_only(path, width: int, height: int) -> None:
    """A small PNG whose header claims width x height (grey, 8-bit), with a little pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 100_000)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [30000, 40000])
def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path, side, monkeypatch):
    path = tmp_path / "huge.png"
    png_header_only(path, side, side)
    with pytest.raises(TooLarge) as err:
        read_array(path)
    message = str(err.value)
    assert f"is {side}x{side} pixels" in message and "over the limit of 89478485" in message
    assert "SEGBENCH_MAX_PIXELS" in message and "truncated" not in message
    monkeypatch.setenv("SEGBENCH_MAX_PIXELS", "100")
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((20, 20), np.uint8))
    with pytest.raises(TooLarge, match="over the limit of 100 pixels"):
        read_array(small)


def test_predict_skips_and_lists_an_image_over_the_limit(tiny_run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "ok.png"), np.full((64, 64, 3), 80, np.uint8))
    png_header_only(images / "huge.png", 30000, 30000)
    proc = run_cli("predict", f"run_dir={tiny_run}", f"input={images}",
                   f"output={tmp_path / 'out'}", cwd=tmp_path)
    assert "huge.png is 30000x30000 pixels" in proc.stdout
    areas = (tmp_path / "out" / "areas.csv").read_text()
    assert "huge.png" in areas and "over the limit" in areas
    assert (tmp_path / "out" / "ok_mask.png").is_file()


def test_a_jpeg_with_an_exif_orientation_is_read_as_displayed(tmp_path):
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:10, :20] = 255  # a bright block top left, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "r.jpg", quality=100, exif=exif.tobytes())
    shown = read_image(tmp_path / "r.jpg")
    expected = np.asarray(Image.open(tmp_path / "r.jpg").transpose(Image.Transpose.ROTATE_270))
    assert shown.shape == (60, 40, 3)  # as a viewer (and a mask drawn on it) sees it
    assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 2
    assert shown[:20, -10:].mean() > 200  # the block is now top right


def test_a_mask_whose_shape_lives_in_alpha_is_read_from_alpha(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 255  # one colour everywhere
    rgba[8:16, 8:16, 3] = 255  # the shape: opaque where the object is
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    mask, _ = read_mask(tmp_path / "m.png")
    assert mask.sum() == 64 and mask[8:16, 8:16].all()
    coloured = rgba.copy()
    coloured[..., :3] = 0
    coloured[20:24, 20:24, :3] = 255
    coloured[..., 3] = 200  # a translucent overlay: the colour holds the mask
    Image.fromarray(coloured, "RGBA").save(tmp_path / "c.png")
    assert read_mask(tmp_path / "c.png")[0].sum() == 16


def test_12_bit_data_in_a_16_bit_png_keeps_its_grey_levels(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 256).round().astype(np.uint16), (8, 1))
    cv2.imwrite(str(tmp_path / "x.png"), ramp)
    image = read_image(tmp_path / "x.png", channels=1)[..., 0]
    assert image.max() == 255 and len(np.unique(image)) > 200  # not 5-9 grey levels (/257)
    full = (ramp.astype(np.uint32) * 16).astype(np.uint16)  # 16-bit data still divides by 257
    cv2.imwrite(str(tmp_path / "f.png"), full)
    assert read_image(tmp_path / "f.png", 1).max() == round(int(full.max()) / 257)


def test_nan_pixels_in_a_ct_slice_are_refused_by_name(tmp_path):
    from omegaconf import OmegaConf

    from segbench.data.lung_ct import read_image as read_ct

    hu = np.full((16, 16), -500, np.float32)
    hu[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "s.tif", hu)
    cfg = OmegaConf.create({"window": [-1000, 400], "channels": 1})
    with pytest.raises(SegbenchError, match=r"s.tif holds 1 NaN or infinite pixel\(s\) of 256"):
        read_ct(tmp_path / "s.tif", cfg)


@pytest.mark.parametrize("encoding,newline", [("utf-8-sig", "\n"), ("utf-8", "\r\n"),
                                              ("utf-8-sig", "\r\n")])
def test_split_files_from_windows_editors_keep_their_first_id(tmp_path, encoding, newline):
    path = tmp_path / "train.txt"
    path.write_bytes(newline.join(["case1.png", "case2", "case3"]).encode(encoding)
                     + newline.encode())
    assert read_ids(path) == ["case1", "case2", "case3"]


def test_verify_reports_and_warns_about_all_foreground_masks(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(10):
        cv2.imwrite(str(root / "images" / f"{i}.png"), np.full((32, 32, 3), 40 + i, np.uint8))
        rgba = np.zeros((32, 32, 4), np.uint8)  # white everywhere, the shape in alpha only
        rgba[..., :3] = 255
        rgba[4:12, 4:12, 3] = 255
        mask = rgba if i < 5 else np.full((32, 32), 255, np.uint8)  # half of them all foreground
        cv2.imwrite(str(root / "masks" / f"{i}.png"), cv2.cvtColor(mask, cv2.COLOR_RGBA2BGRA)
                    if mask.ndim == 3 else mask)
    proc = run_cli("verify", "dataset=folder", f"dataset.root={root}", cwd=tmp_path,
                   check=False)
    assert "full masks   " in proc.stdout and "all: 50.0%" in proc.stdout, proc.stdout[-3000:]
    assert "50% of 10 masks are all foreground" in proc.stdout
