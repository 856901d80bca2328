"""read_rgb: every Pillow mode a COCO-style folder may hold -> [H, W, 3] uint8 RGB on the stored
pixel grid (EXIF orientation ignored); unreadable files fail with one line naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnet.data.image_io import read_rgb

H, W = 6, 10  # non-square, so a transposed result cannot pass


def _gray() -> np.ndarray:
    return (np.arange(H * W, dtype=np.uint8) * 4).reshape(H, W)


def _check(out: np.ndarray, expected: np.ndarray) -> None:
    assert out.dtype == np.uint8 and out.shape == (H, W, 3) and out.flags.c_contiguous and out.flags.writeable
    np.testing.assert_array_equal(out, expected)


def test_rgb_png_and_jpeg(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    _check(read_rgb(tmp_path / "a.png"), rgb)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    with Image.open(tmp_path / "a.jpg") as im:
        _check(read_rgb(tmp_path / "a.jpg"), np.asarray(im.convert("RGB")))  # Pillow's own decode


@pytest.mark.parametrize("mode, ext", [("L", "png"), ("L", "jpg"), ("1", "png")])
def test_grayscale_is_replicated(tmp_path: Path, mode: str, ext: str) -> None:
    gray = _gray() if mode == "L" else (_gray() > 100).astype(np.uint8) * 255
    Image.fromarray(gray).convert(mode).save(tmp_path / f"g.{ext}")
    with Image.open(tmp_path / f"g.{ext}") as im:
        stored = np.asarray(im.convert("L"))  # what the file holds after (lossy) encoding
    _check(read_rgb(tmp_path / f"g.{ext}"), np.repeat(stored[:, :, None], 3, axis=2))


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, : W // 2] = (200, 10, 30)
    rgb[:, W // 2 :] = (5, 180, 250)
    pal = Image.fromarray(rgb).quantize(colors=4)
    pal.save(tmp_path / "p.png")
    pal.save(tmp_path / "pt.png", transparency=0)
    for name in ("p.png", "pt.png"):
        _check(read_rgb(tmp_path / name), rgb)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped_not_composited(tmp_path: Path, mode: str) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 90, 90 if mode != "RGBA" else 20, 90 if mode != "RGBA" else 250
    rgba = np.dstack([rgb, np.full((H, W), 0, np.uint8)])  # fully transparent: compositing would change it
    im = Image.fromarray(rgba, "RGBA")
    im = im if mode == "RGBA" else im.convert(mode)
    im.save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as check:
        assert check.mode == mode
    _check(read_rgb(tmp_path / "a.png"), rgb)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
        expected = np.asarray(im.convert("RGB"))
    _check(read_rgb(tmp_path / "c.jpg"), expected)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16_bit_grayscale_is_scaled(tmp_path: Path, ext: str) -> None:
    values = np.array([0, 128, 129, 257, 32768, 65534, 65535], dtype=np.uint16)
    wide = np.zeros((H, W), np.uint16)
    wide[0, : len(values)] = values
    Image.fromarray(wide).save(tmp_path / f"w.{ext}")
    with Image.open(tmp_path / f"w.{ext}") as im:
        assert im.mode.startswith("I")  # I;16 (or I, depending on Pillow and format)
    out = read_rgb(tmp_path / f"w.{ext}")
    expected = np.zeros((H, W), np.uint8)
    expected[0, : len(values)] = [0, 0, 1, 1, 128, 255, 255]  # round(x / 257)
    _check(out, np.repeat(expected[:, :, None], 3, axis=2))


def test_32_bit_integer_grayscale_is_clipped_to_16_bits(tmp_path: Path) -> None:
    wide = np.zeros((H, W), np.int32)
    wide[0, :4] = [-5, 257 * 100, 70000, 2**31 - 1]
    Image.fromarray(wide, "I").save(tmp_path / "i.tif")
    with Image.open(tmp_path / "i.tif") as im:
        assert im.mode == "I"
    expected = np.zeros((H, W), np.uint8)
    expected[0, :4] = [0, 100, 255, 255]
    _check(read_rgb(tmp_path / "i.tif"), np.repeat(expected[:, :, None], 3, axis=2))


def test_float_grayscale_goes_through_pillow(tmp_path: Path) -> None:
    values = np.zeros((H, W), np.float32)
    values[0, :4] = [-3.0, 0.6, 100.5, 300.0]
    Image.fromarray(values, "F").save(tmp_path / "f.tif")
    expected = np.zeros((H, W), np.uint8)
    expected[0, :4] = [0, 0, 100, 255]  # clipped to 0..255, truncated
    _check(read_rgb(tmp_path / "f.tif"), np.repeat(expected[:, :, None], 3, axis=2))


def test_exif_orientation_is_ignored(tmp_path: Path) -> None:
    # Orientation 6 (display rotated 90°): annotations refer to the stored H x W grid, so keep it
    rgb = np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "r.png", exif=exif)
    with Image.open(tmp_path / "r.png") as im:
        assert im.getexif().get(0x0112) == 6
    _check(read_rgb(tmp_path / "r.png"), rgb)
    Image.fromarray(rgb).save(tmp_path / "r.jpg", exif=exif, quality=95)
    assert read_rgb(tmp_path / "r.jpg").shape == (H, W, 3)


@pytest.mark.parametrize("content", ["truncated", "garbage", "empty"])
def test_unreadable_file_is_one_line_naming_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "broken image.jpg"
    if content == "truncated":
        noise = np.random.default_rng(3).integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path, quality=90)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"" if content == "empty" else b"definitely not a JPEG\n\nsecond line")
    with pytest.raises(OSError) as info:
        read_rgb(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and "cannot read image" in message
