"""Safe decoding: every colour mode to 8-bit RGB, orientation, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import digest, exif_rotated, png16, save_rgb
from PIL import Image

from cropdoc.data.images import ImageError, load_image, read_image


def test_cmyk_jpeg_becomes_rgb_of_the_same_colour(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (40, 30), (40, 160, 60)).convert("CMYK").save(path, quality=95)
    pixels = load_image(path)
    assert pixels.shape == (30, 40, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - (40, 160, 60)).max() <= 6


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535] * 8] * 16, np.uint16)
    pixels = load_image(png16(tmp_path / "deep.png", values))
    assert pixels.shape == (16, 32, 3)
    assert list(pixels[0, :4, 0]) == [0, 1, 128, 255]
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((20, 40, 4), np.uint8)
    rgba[..., :3] = (200, 10, 10)
    rgba[:, :20, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    pixels = load_image(tmp_path / "a.png")
    assert tuple(pixels[5, 5]) == (200, 10, 10)
    assert tuple(pixels[5, 30]) == (255, 255, 255)
    la = Image.fromarray(rgba[..., 3]).convert("L")
    Image.merge("LA", (la, Image.fromarray(rgba[..., 3]))).save(tmp_path / "la.png")
    assert tuple(load_image(tmp_path / "la.png")[5, 30]) == (255, 255, 255)


def test_palette_and_grayscale(tmp_path):
    Image.new("RGB", (30, 20), (10, 120, 240)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        tmp_path / "p.png"
    )
    assert np.abs(load_image(tmp_path / "p.png").astype(int) - (10, 120, 240)).max() <= 8
    Image.new("L", (30, 20), 77).save(tmp_path / "g.jpg")
    gray = load_image(tmp_path / "g.jpg")
    assert gray.shape == (20, 30, 3) and np.abs(gray.astype(int) - 77).max() <= 2


def test_exif_orientation_is_applied(tmp_path):
    pixels = load_image(exif_rotated(tmp_path / "r.jpg"))
    # stored 60 wide x 30 high, red left; turned 90 degrees clockwise: red on top
    assert pixels.shape == (60, 30, 3)
    assert pixels[5, 15, 0] > 200 and pixels[5, 15, 2] < 60
    assert pixels[55, 15, 2] > 200 and pixels[55, 15, 0] < 60


def test_reduced_decoding_matches_full_decoding(tmp_path):
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    big = Image.fromarray(coarse).resize((640, 480), Image.Resampling.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=95)
    small, original = read_image(tmp_path / "big.jpg", max_size=256)
    assert small.shape == (192, 256, 3) and original == (640, 480)
    reference = np.asarray(Image.open(tmp_path / "big.jpg").resize((256, 192)))
    assert np.abs(small.astype(int) - reference.astype(int)).mean() < 3


def test_never_enlarges(tmp_path):
    save_rgb(tmp_path / "s.png", (1, 2, 3), size=(50, 40), fmt="PNG")
    assert load_image(tmp_path / "s.png", max_size=256).shape == (40, 50, 3)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("not a picture"), "not an image"),
        (lambda p: p.write_bytes(p.with_name("ok.jpg").read_bytes()[:400]), "truncated"),
        (lambda p: Image.new("RGB", (1, 1)).save(p, "PNG"), "too small"),
        (lambda p: Image.new("1", (10000, 9000)).save(p, "PNG"), "decompression bomb"),
        (lambda p: Image.new("RGB", (40, 40)).save(p, "GIF"), "not an image"),
    ],
)
def test_bad_files_raise_a_reason_and_stay_unchanged(tmp_path, make, reason):
    save_rgb(tmp_path / "ok.jpg", (9, 9, 9), size=(200, 150))
    path = tmp_path / "bad.jpg"
    make(path)
    before = digest(tmp_path)
    with pytest.raises(ImageError, match=reason):
        load_image(path, max_size=64)
    assert digest(tmp_path) == before


def test_pixel_cap_is_configurable(tmp_path):
    save_rgb(tmp_path / "ok.png", (9, 9, 9), size=(100, 100), fmt="PNG")
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(tmp_path / "ok.png", max_pixels=5000)
