"""What train chooses for settings left at auto (engine/defaults.py), on small generated
folders of photos of several shapes: the architecture's own size in the photos' shape, a
fixed-size model's own size, a cache that holds it, and the choice kept in config.yaml."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from cropdoc.config import TrainConfig
from cropdoc.engine.defaults import choose_sizes, photo_aspect, shaped


def photos(root, size: tuple[int, int], count: int = 6, orientation: int = 1):
    """``count`` photos of ``size`` (width, height) per class, stored with ``orientation``."""
    rng = np.random.default_rng(0)
    for label in ("rust", "healthy"):
        for i in range(count):
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            exif = Image.Exif()
            exif[0x0112] = orientation
            (root / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / label / f"{i}.jpg", exif=exif.tobytes())
    return root


def auto(data, arch: str, **settings) -> TrainConfig:
    values = {"size": "auto", "item_size": "auto", **settings}
    return choose_sizes(TrainConfig(data=str(data), arch=arch, **values).checked())


def test_the_size_is_the_architectures_own_in_the_photos_shape(tmp_path):
    square = auto(photos(tmp_path / "square", (300, 300)), "tf_efficientnet_lite0")
    assert (square.size, square.item_size, square.cache_size) == ("224", "224", 256)
    tall = auto(photos(tmp_path / "tall", (300, 400)), "tf_efficientnet_lite0")
    assert tall.size == tall.item_size == "256x192"  # 3:4, about 224 x 224 pixels
    # stored landscape, shown portrait (EXIF orientation 6): the shape as shown counts
    turned = photos(tmp_path / "turned", (400, 300), orientation=6)
    assert photo_aspect(turned) == pytest.approx(0.75)
    assert auto(turned, "tf_efficientnet_lite0").size == "256x192"
    # a model of one input size keeps its own; the cache is raised to hold a larger one
    assert auto(tmp_path / "tall", "test_vit").size == "160"
    lite2 = auto(tmp_path / "square", "tf_efficientnet_lite2")
    assert lite2.size == "260" and lite2.cache_size == 260


def test_given_sizes_are_kept_and_auto_is_checked_later(tmp_path):
    data = photos(tmp_path / "data", (300, 400))
    given = auto(data, "tf_efficientnet_lite0", size="128", item_size="192")
    assert (given.size, given.item_size) == ("128", "192")
    half = auto(data, "tf_efficientnet_lite0", size="160")
    assert (half.size, half.item_size) == ("160", "160")
    for aspect, (height, width) in ((1.0, (224, 224)), (2.0, (160, 320)), (9.0, (160, 320))):
        assert shaped(224, aspect) == (height, width)
        assert height % 16 == 0 and width % 16 == 0 or height == width


@pytest.mark.slow
def test_a_run_keeps_what_was_chosen(tmp_path):
    from cropdoc.engine.trainer import train
    from cropdoc.testing import TINY_TRAINING

    data = photos(tmp_path / "data", (90, 120), count=4)
    settings = {**TINY_TRAINING, "size": "auto", "item_size": "auto", "arch": "test_resnet"}
    run = train(TrainConfig(data=str(data), cache=str(tmp_path / "cache"),
                            out=str(tmp_path / "run"), **settings))["run"]  # fmt: skip
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["size"], saved["item_size"]) == ("192x144", "192x144") and run


def test_epochs_follow_the_number_of_training_photos():
    import math

    from cropdoc.engine.defaults import EPOCHS, STEPS, choose_epochs

    def epochs(photos: int, bs: int) -> int:
        config = TrainConfig(data="x", epochs="auto", bs=bs).checked()
        return choose_epochs(config, photos).epochs

    assert epochs(12, 8) == EPOCHS[1]  # a handful of photos: the most epochs
    assert epochs(100_000, 64) == EPOCHS[0]  # a large set: the fewest
    middle = epochs(800, 64)
    assert middle == math.ceil(STEPS / (800 // 64)) and EPOCHS[0] <= middle <= EPOCHS[1]
    assert epochs(800, 32) <= middle  # more steps an epoch with smaller batches: fewer epochs
    given = TrainConfig(data="x", epochs=3).checked()
    assert choose_epochs(given, 800).epochs == 3
