"""Batch resize and augmentation on the device: geometry checked on real pixels."""

from __future__ import annotations

import pytest
import torch

from cropdoc.config import TrainConfig
from cropdoc.data.augment import Augment, transform_batch
from cropdoc.errors import UserError

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
