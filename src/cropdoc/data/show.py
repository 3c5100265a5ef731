"""``show``: the label list with a few random photos per label, as one PNG grid (as the
QEUR23_VATT5 blog post does with fastai's ``show_batch``)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cropdoc.core.files import atomic_write
from cropdoc.data.images import ImageError, load_image
from cropdoc.data.layouts import Dataset, discover

THUMB = 192
LABEL_WIDTH = 260


def show_samples(
    data: str | os.PathLike | Dataset,
    out: str | os.PathLike = "samples.png",
    per_label: int = 3,
    seed: int = 42,
) -> dict:
    """Draw ``per_label`` random images of every class into a grid PNG at ``out``.

    Each row starts with the class name and its image count. Unreadable images are
    passed over for others of the same class. Returns the path and what was shown.
    """
    dataset = data if isinstance(data, Dataset) else discover(data)
    rng = random.Random(seed)
    counts = dataset.counts()
    rows: dict[str, list[np.ndarray]] = {}
    for label in dataset.classes:
        paths = [i.path for i in dataset.labelled if i.label == label]
        rng.shuffle(paths)
        rows[label] = []
        for path in paths:
            if len(rows[label]) == per_label:
                break
            try:
                rows[label].append(load_image(path, max_size=THUMB))
            except ImageError:
                continue
    grid = Image.new(
        "RGB", (LABEL_WIDTH + per_label * (THUMB + 4), len(rows) * (THUMB + 4)), "white"
    )
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=18)
    for r, (label, images) in enumerate(rows.items()):
        y = r * (THUMB + 4)
        draw.text((8, y + THUMB // 2 - 20), label, fill="black", font=font)
        draw.text((8, y + THUMB // 2 + 4), f"{counts[label]} images", fill="dimgray", font=font)
        for c, pixels in enumerate(images):
            thumb = Image.fromarray(pixels)
            x = LABEL_WIDTH + c * (THUMB + 4)
            grid.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
    out = Path(out)
    atomic_write(out, lambda f: grid.save(f, "PNG"))
    return {
        "out": str(out),
        "classes": counts,
        "shown": {label: len(images) for label, images in rows.items()},
    }
