"""What ``train`` chooses for the settings left at ``auto``, their defaults: the input size
from the architecture's own pretrained config and the photos' shape (and a cache that holds
it), and the epochs from the number of training photos. The rules were measured on real leaf
photos (docs/real.md); each choice is said in one line and kept in the run's config.yaml.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

from cropdoc.config import AUTO, TrainConfig
from cropdoc.core.progress import say

SAMPLE = 200  # photos whose sizes (read from their headers) give the dataset's shape
STRIDE = 16  # the sides of a non-square input: multiples of a CNN's stride
SQUARE = 0.05  # photos whose shape is within 5% of square get the architecture's own size
ASPECTS = (0.5, 2.0)  # the widest and tallest input the photos' shape may ask for
DEFAULT_SIDE = 224  # an architecture without a pretrained config's size
STEPS = 80  # --epochs auto: about this many optimizer steps after unfreezing
EPOCHS = (5, 40)  # ... in at least 5 epochs and at most 40


def choose_sizes(config: TrainConfig) -> TrainConfig:
    """``config`` with ``size`` (and ``item_size``) chosen where they are ``auto``: the
    architecture's own input size (its pretrained config's, as timm evaluates it), made the
    shape of the photos (their median width / height, within 1:2 and 2:1) at about the same
    number of pixels, sides a multiple of 16 (square photos keep it exactly); a model of one
    fixed input size keeps its own. The cache is made to hold the largest side."""
    if config.size != AUTO and config.item_size != AUTO:
        return config
    from cropdoc.model.archs import has_fixed_size

    side, fixed = arch_side(config.arch), has_fixed_size(config.arch)
    aspect = 1.0 if fixed else photo_aspect(config.data)
    size = config.parsed.size or shaped(side, aspect)
    text = f"{size[0]}x{size[1]}" if size[0] != size[1] else str(size[0])
    item = text if config.item_size == AUTO else config.item_size
    cache = config.cache_size and max(config.cache_size, *size, *(config.parsed.item_size or ()))
    if config.size == AUTO:
        shape = "its own" if fixed else f"photos {aspect:.2f} wide for 1 high"
        say(f"size auto: {text} ({config.arch} takes {side} px; {shape})")
    return dataclasses.replace(config, size=text, item_size=item, cache_size=cache)


def choose_epochs(config: TrainConfig, photos: int) -> TrainConfig:
    """``config`` with ``epochs`` chosen where it is ``auto``: enough epochs for about
    ``STEPS`` optimizer steps of ``config.bs`` of the ``photos`` training photos (a small
    set sees each photo more often), within ``EPOCHS``."""
    if config.epochs != AUTO:
        return config
    steps = max(1, photos // (int(config.bs) * config.accum))
    epochs = min(max(math.ceil(STEPS / steps), EPOCHS[0]), EPOCHS[1])
    say(f"epochs auto: {epochs} ({photos} training photos, {steps} steps an epoch)")
    return dataclasses.replace(config, epochs=epochs)


def arch_side(arch: str) -> int:
    """The side of ``arch``'s own input size (its pretrained config's)."""
    from cropdoc.model.timm_import import timm

    cfg = timm.get_pretrained_cfg(arch.split(".")[0])
    return int(cfg.input_size[-1]) if cfg and cfg.input_size else DEFAULT_SIDE


def shaped(side: int, aspect: float) -> tuple[int, int]:
    """(height, width) of about ``side * side`` pixels, ``aspect`` wide for 1 high, each a
    multiple of ``STRIDE``; ``(side, side)`` for a shape within ``SQUARE`` of square."""
    if abs(aspect - 1) <= SQUARE:
        return side, side
    aspect = min(max(aspect, ASPECTS[0]), ASPECTS[1])
    height = side / math.sqrt(aspect)
    return _round(height), _round(height * aspect)


def _round(value: float) -> int:
    return max(STRIDE, STRIDE * round(value / STRIDE))


def photo_aspect(data: str) -> float:
    """The median width / height of up to ``SAMPLE`` photos of ``data`` (evenly spread over
    the list), upright as their EXIF orientation says; 1.0 when none can be read."""
    from PIL import Image, UnidentifiedImageError

    from cropdoc.data.layouts import discover

    items = discover(data).items
    step = max(1, len(items) // SAMPLE)
    ratios = []
    for item in items[::step][:SAMPLE]:
        try:
            with Image.open(Path(item.path)) as im:
                width, height = im.size
                turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientation
        except (OSError, UnidentifiedImageError, ValueError):
            continue
        ratios.append(height / width if turned else width / height)
    return statistics.median(ratios) if ratios else 1.0
