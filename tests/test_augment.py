"""Batch resize and augmentation on the device: geometry checked on real pixels."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from cropdoc.config import TrainConfig, parse_rand_augment
from cropdoc.core.errors import UserError
from cropdoc.data import randaugment
from cropdoc.data.augment import Augment, transform_batch
from cropdoc.data.randaugment import OPS, Plan

MEAN, STD = torch.zeros(3), torch.ones(3)  # keep pixels in 0..1 to read them back


def _halves(h: int, w: int) -> torch.Tensor:
    """uint8 (h, w, 3): red left half, blue right half."""
    image = torch.zeros(h, w, 3, dtype=torch.uint8)
    image[:, : w // 2, 0] = 255
    image[:, w // 2 :, 2] = 255
    return image


def _run(canvas, sizes, aug, train=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return transform_batch(canvas, sizes, aug, train, MEAN, STD, generator)


def test_validation_squish_keeps_the_layout():
    canvas = _halves(80, 120)[None]
    out = _run(canvas, torch.tensor([[80, 120]]), Augment(size=(32, 32), item_size=(32, 32)))
    assert out.shape == (1, 3, 32, 32)
    assert out[0, 0, :, :14].min() > 0.95 and out[0, 2, :, :14].max() < 0.05
    assert out[0, 2, :, 18:].min() > 0.95 and out[0, 0, :, 18:].max() < 0.05


def test_pad_adds_black_bars_and_crop_fills_the_box():
    canvas = torch.full((1, 40, 120, 3), 200, dtype=torch.uint8)  # 3:1 wide, grey
    sizes = torch.tensor([[40, 120]])
    padded = _run(canvas, sizes, Augment(size=(30, 30), item_size=(30, 30), resize="pad"))
    assert padded[0, :, :8].max() < 0.05 and padded[0, :, -8:].max() < 0.05  # bars
    assert padded[0, :, 13:17].min() > 0.7  # the picture in the middle
    cropped = _run(canvas, sizes, Augment(size=(30, 30), item_size=(30, 30), resize="crop"))
    assert cropped.min() > 0.7


def test_smaller_image_in_a_larger_canvas_is_read_on_its_own():
    alone = _run(
        _halves(60, 60)[None], torch.tensor([[60, 60]]), Augment(size=(24, 24), item_size=(24, 24))
    )
    canvas = torch.zeros(2, 90, 100, 3, dtype=torch.uint8)
    canvas[0, :60, :60] = _halves(60, 60)
    canvas[1] = 255
    both = _run(
        canvas, torch.tensor([[60, 60], [90, 100]]), Augment(size=(24, 24), item_size=(24, 24))
    )
    assert torch.allclose(both[0], alone[0], atol=1e-5)


def test_training_augmentation_is_random_but_reproducible():
    canvas = torch.randint(0, 255, (4, 64, 48, 3), dtype=torch.uint8)
    sizes = torch.tensor([[64, 48]] * 4)
    aug = Augment(size=(32, 24), item_size=(64, 48))
    a = _run(canvas, sizes, aug, train=True, seed=1)
    b = _run(canvas, sizes, aug, train=True, seed=1)
    c = _run(canvas, sizes, aug, train=True, seed=2)
    valid = _run(canvas, sizes, aug, train=False)
    assert a.shape == (4, 3, 32, 24) and torch.equal(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, valid)


def test_unknown_setting_gets_a_suggestion():
    with pytest.raises(UserError, match="did you mean 'epochs'"):
        TrainConfig.from_dict({"epohcs": 3})
    with pytest.raises(UserError, match="size"):
        TrainConfig(size="big").checked()


def _photo(demo_data, size=(96, 72)) -> tuple[Image.Image, torch.Tensor]:
    """A demo photo as PIL and as a float ``(1, 3, h, w)`` batch in 0..255."""
    path = sorted((demo_data / "train_images").rglob("*.jpg"))[3]
    image = Image.open(path).convert("RGB").resize(size)
    return image, torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()


def _one_op(name: str, level: float, sign: float = 1.0) -> Plan:
    return Plan(
        torch.tensor([[OPS.index(name)]]), torch.tensor([[level]]).double(), torch.tensor([[sign]])
    )


def _pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()


@pytest.mark.parametrize(
    "name, level, sign, pil, tolerance",
    [
        ("invert", 0.5, 1, ImageOps.invert, 0),
        ("posterize", 1.0, 1, lambda im: ImageOps.posterize(im, 4), 0),
        ("solarize", 1.0, 1, lambda im: ImageOps.solarize(im, 128), 0),
        ("auto_contrast", 0.3, 1, ImageOps.autocontrast, 1.5),
        ("equalize", 0.3, 1, ImageOps.equalize, 12),
        ("colour", 0.5, 1, lambda im: ImageEnhance.Color(im).enhance(1.45), 1.5),
        ("colour", 0.5, -1, lambda im: ImageEnhance.Color(im).enhance(0.55), 1.5),
        ("brightness", 1.0, -1, lambda im: ImageEnhance.Brightness(im).enhance(0.1), 1.5),
        ("contrast", 0.5, 1, lambda im: ImageEnhance.Contrast(im).enhance(1.45), 1.5),
        ("sharpness", 1.0, 1, lambda im: ImageEnhance.Sharpness(im).enhance(1.9), 1.5),
    ],
)
def test_rand_augment_colour_ops_match_pillow(demo_data, name, level, sign, pil, tolerance):
    """Each colour op of --rand-augment does to a real photo what Pillow's op does: the
    largest difference of a pixel is Pillow's rounding (equalize: its look-up table differs)."""
    image, x = _photo(demo_data)
    ours = randaugment.colour(x.clone(), _one_op(name, level, sign))
    theirs = _pil(pil(image))
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # Pillow keeps the border
    assert (ours - theirs)[inner].abs().max() <= tolerance, name
    assert not torch.equal(ours, x)


def test_rand_augment_geometry_and_the_whole_batch(demo_data):
    """The geometric ops are one matrix (rotation by 30 degrees at M = 10); a batch with
    --rand-augment differs from one without, is seeded, and validation is untouched."""
    rotate = randaugment.geometry(_one_op("rotate", 1.0))[0]
    turn = math.radians(30)
    cos, sin = math.cos(turn), math.sin(turn)
    assert torch.allclose(rotate[:2, :2], torch.tensor([[cos, -sin], [sin, cos]]).double())
    shift = randaugment.geometry(_one_op("translate_x", 0.5, -1))[0]
    assert shift[0, 2].item() == pytest.approx(-0.45)
    image, _ = _photo(demo_data, (128, 96))
    canvas = torch.from_numpy(np.array(image)).repeat(6, 1, 1, 1)
    sizes = torch.tensor([[96, 128]] * 6)
    plain = Augment(size=(48, 64), item_size=(96, 128))
    strong = dataclasses.replace(plain, rand=parse_rand_augment("3,10"))
    a, b = _run(canvas, sizes, strong, train=True, seed=4), _run(canvas, sizes, strong, True, 4)
    assert torch.equal(a, b) and a.shape == (6, 3, 48, 64)
    assert (a - _run(canvas, sizes, plain, train=True, seed=4)).abs().mean() > 0.05
    assert torch.equal(_run(canvas, sizes, strong), _run(canvas, sizes, plain))
    trivial = parse_rand_augment("trivial")
    assert trivial.n == 1 and trivial.trivial and trivial.m == 10
    levels = randaugment.draw(trivial, 1000, torch.Generator().manual_seed(0)).level
    assert 0 <= levels.min() < 0.05 and 0.95 < levels.max() <= 1
    for bad in ("9", "0,5", "2,11", "two,9", "2,nan"):
        with pytest.raises(UserError, match="--rand-augment takes N,M"):
            TrainConfig(data="x", rand_augment=bad).checked()
