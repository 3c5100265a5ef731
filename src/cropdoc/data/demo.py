"""The embedded demo dataset: procedurally drawn rice-leaf photos with small, local lesions.

``make_demo_data`` writes a Kaggle paddy-style folder (``train_images/<label>/``,
``train.csv``, ``test_images/``, ``sample_submission.csv``) plus ``masks/<label>/<id>.png``,
the lesion mask of each training image. Each disease is a different kind of small lesion
(spots, spindles, streaks, margins, patches, bands, mildew, holes, yellow tips); ``normal``
leaves have none. Lesions are a few to a few dozen pixels across in a 480x640 photo, so a
128 px downscale loses much of them. As in the paddy data, ``train.csv`` gives each photo a
rice ``variety`` and the crop's ``age`` in days, and both show: a variety has its own leaf
width, shade and taper (``LOOKS``), and older plants have longer leaves. Output depends
only on the seed.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write_bytes, atomic_write_text
from cropdoc.core.progress import Progress, say
from cropdoc.data.leaves import LESION_SCALE, LESIONS, Leaf, bounds
from cropdoc.data.workers import fork_pool

CLASSES = (
    "bacterial_leaf_blight",
    "bacterial_leaf_streak",
    "bacterial_panicle_blight",
    "blast",
    "brown_spot",
    "dead_heart",
    "downy_mildew",
    "hispa",
    "normal",
    "tungro",
)
VARIETIES = (
    "ADT45",
    "IR20",
    "KarnatakaPonni",
    "Onthanel",
    "Ponni",
    "Surya",
    "Zonal",
    "AtchayaPonni",
)
# Each variety's look: (leaf width factor, colour gain of red, green, blue, taper exponent:
# small keeps the blade wide up to a blunt tip, large narrows it early to a sharp one).
LOOKS = {
    "ADT45": (0.72, (1.0, 1.0, 1.0), 0.35),
    "IR20": (0.72, (1.0, 1.0, 1.0), 1.2),
    "KarnatakaPonni": (0.72, (1.3, 1.05, 0.6), 0.35),
    "Onthanel": (0.72, (1.3, 1.05, 0.6), 1.2),
    "Ponni": (1.3, (1.0, 1.0, 1.0), 0.35),
    "Surya": (1.3, (1.0, 1.0, 1.0), 1.2),
    "Zonal": (1.3, (1.3, 1.05, 0.6), 0.35),
    "AtchayaPonni": (1.3, (1.3, 1.05, 0.6), 1.2),
}
AGES = (45, 82)  # days; a leaf's length grows from 0.7 to 1.1 of its young length
WIDTH, HEIGHT = 480, 640
MARKER = ".cropdoc-demo"
FIELD_LESION_SCALE = 2.0  # field photos: spots of 25-35 px, 3-4 px once 2048 px shrink to 256


def make_demo_data(
    out: str | os.PathLike,
    per_class: int = 50,
    seed: int = 0,
    workers: int | None = None,
    size: tuple[int, int] | None = None,
    lesion_scale: float | None = None,
    classes: list[str] | None = None,
    views: int = 1,
) -> dict:
    """Write the demo dataset to ``out`` and return a summary (paths and counts).

    Args:
        size: ``(height, width)`` of large field photos (``draw_field_photo``: many
            leaves, lesions of a few pixels); default the 640x480 close-up photos.
        lesion_scale: pixels per lesion unit (default 1.6 in close-ups, 2.0 in field photos).
        classes: a subset of ``CLASSES`` (default all).
        views: photos of each plant (``views_of``: the photo, then other framings and
            light of the same leaves), named ``ID-V.jpg``, with a ``plant`` column.

    Refuses a non-empty folder that is not an earlier demo dataset, so no user file is touched.
    """
    out = Path(out).expanduser()
    if per_class < 2:
        raise UserError("--per-class must be at least 2")
    classes = list(classes or CLASSES)
    unknown = sorted(set(classes) - set(CLASSES))
    if unknown or len(classes) < 2:
        raise UserError(f"--classes takes two or more of {', '.join(CLASSES)}")
    if size is not None and min(size) < 256:
        raise UserError("--size of field photos must be at least 256 pixels a side")
    scale = lesion_scale or (LESION_SCALE if size is None else FIELD_LESION_SCALE)
    if not 0.25 <= scale <= 8:
        raise UserError("--lesion-scale must be between 0.25 and 8")
    if not 1 <= views <= 10:
        raise UserError("--views must be from 1 to 10 photos of each plant")
    version = {"per_class": per_class, "seed": seed, "version": 3}
    if (size, lesion_scale, classes) != (None, None, list(CLASSES)):
        version.update(size=size and list(size), lesion_scale=scale, classes=classes)
    if views > 1:
        version.update(views=views)
    settings = json.dumps(version)
    marker = out / MARKER
    if out.exists() and any(out.iterdir()):
        if not marker.exists():
            raise UserError(f"{out} is not empty and holds no demo dataset: choose a new folder")
        if marker.read_text() == settings and (out / "sample_submission.csv").exists():
            say(f"demo-data: {out} is already there")
            return _summary(out, per_class, classes, views)
    atomic_write_text(marker, "")  # an unfinished demo dataset: rewritten on the next run
    rows = _draw_all(out, classes, per_class, seed, size, scale, workers, views)
    train = [r for r in rows if not r["test"]]
    test = [r for r in rows if r["test"]]
    columns = ["image_id", "label", "variety", "age"] + (["plant"] if views > 1 else [])
    atomic_write_text(out / "train.csv", _csv(columns, train))
    atomic_write_text(
        out / "sample_submission.csv",
        _csv(["image_id", "label"], [{"image_id": r["image_id"], "label": ""} for r in test]),
    )
    atomic_write_text(marker, settings)
    return _summary(out, per_class, classes, views)


def _draw_all(out: Path, classes, per_class, seed, size, scale, workers, views) -> list[dict]:
    """Draw every photo (a tenth more per class as test images) in worker processes; the
    rows of ``train.csv`` and the test images, in order."""
    n_test = max(1, per_class // 10)
    tasks = []
    for label in classes:
        c = CLASSES.index(label)
        for i in range(per_class + n_test):
            image_id = f"{100000 + c * 1000 + i}.jpg"
            task = (str(out), label, c, i, i >= per_class, image_id, seed, size, scale, views)
            tasks.append(task)
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    pool = fork_pool(workers) if workers > 1 else None
    rows = []
    try:
        results = pool.imap(_write_one, tasks, chunksize=4) if pool else map(_write_one, tasks)
        with Progress(len(tasks), "demo-data") as progress:
            for written in results:
                rows += written
                progress.update()
    finally:
        if pool:
            pool.terminate()
    return rows


def _summary(out: Path, per_class: int, classes: list[str], views: int = 1) -> dict:
    return {
        "root": str(out),
        "classes": classes,
        "train_images": per_class * len(classes) * views,
        "test_images": len(list((out / "test_images").iterdir())),
        "masks": str(out / "masks"),
    }


def _csv(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_one(task: tuple) -> list[dict]:
    out, label, class_index, index, is_test, image_id, seed, size, scale, views = task
    rng = np.random.default_rng([seed, class_index, index])
    plant = np.random.default_rng([seed, class_index, index, 1])  # its own stream
    variety = VARIETIES[int(plant.integers(len(VARIETIES)))]
    age = int(plant.integers(AGES[0], AGES[1] + 1))
    if size is None:
        image, mask = draw_leaf_photo(label, rng, variety, age)
    else:
        image, mask = draw_field_photo(label, rng, size, scale, variety, age)
    out, rows = Path(out), []
    shots = views_of(image, mask, views, np.random.default_rng([seed, class_index, index, 2]))
    for v, (view, view_mask) in enumerate(shots):
        name = image_id if views == 1 else f"{Path(image_id).stem}-{v}.jpg"
        jpeg = io.BytesIO()
        Image.fromarray(view).save(jpeg, "JPEG", quality=90)
        if is_test:
            atomic_write_bytes(out / "test_images" / name, jpeg.getvalue())
        else:
            atomic_write_bytes(out / "train_images" / label / name, jpeg.getvalue())
            png = io.BytesIO()
            Image.fromarray(view_mask).save(png, "PNG")
            atomic_write_bytes(out / "masks" / label / f"{Path(name).stem}.png", png.getvalue())
        row = {"image_id": name, "label": label, "test": is_test, "variety": variety, "age": age}
        rows.append({**row, "plant": Path(image_id).stem} if views > 1 else row)
    return rows


def views_of(
    image: np.ndarray, mask: np.ndarray, count: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` photos of one plant: the photo itself, then crops of 60-90% of its area at
    random places, mirrored half the time, 15% lighter or darker at most, back at full size
    (the mask cut and mirrored alike)."""
    shots = [(image, mask)]
    height, width = image.shape[:2]
    for _ in range(count - 1):
        share = np.sqrt(rng.uniform(0.6, 0.9))
        h, w = int(height * share), int(width * share)
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        crop = Image.fromarray(image[y : y + h, x : x + w]).resize((width, height), Image.BILINEAR)
        cut = Image.fromarray(mask[y : y + h, x : x + w]).resize((width, height), Image.NEAREST)
        view, view_mask = np.asarray(crop).astype(np.float32), np.asarray(cut)
        if rng.random() < 0.5:
            view, view_mask = view[:, ::-1], view_mask[:, ::-1]
        view = np.clip(view * rng.uniform(0.85, 1.15), 0, 255).astype(np.uint8)
        shots.append((np.ascontiguousarray(view), np.ascontiguousarray(view_mask)))
    return shots


def _grown(leaf: Leaf, variety: str, age: int) -> Leaf:
    """``leaf`` as ``variety`` grows it at ``age`` days: its width, tint and taper, and a
    length that grows with the age."""
    width, tint, taper = LOOKS[variety]
    growth = 0.7 + 0.4 * (age - AGES[0]) / (AGES[1] - AGES[0])
    return replace(
        leaf, width=leaf.width * width, length=leaf.length * growth, taper=taper, tint=tint
    )


def draw_leaf_photo(
    label: str, rng: np.random.Generator, variety: str = "ADT45", age: int = 60
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one ``HEIGHT x WIDTH`` photo of ``variety`` rice leaves at ``age`` days with
    ``label``'s lesions.

    Returns the uint8 RGB image and the uint8 lesion mask (255 on lesions, else 0).
    """
    ys, xs = _grid()
    image = _background(rng)
    leaves = []
    for k in range(int(rng.integers(2, 4))):
        front = k > 0
        x0 = rng.uniform(0.3, 0.7) * WIDTH if front else rng.uniform(0.1, 0.9) * WIDTH
        angle = np.deg2rad(rng.uniform(-105, -75) if front else rng.uniform(-125, -55))
        leaf = Leaf(
            base=np.array([x0, HEIGHT + 20.0]),
            direction=np.array([np.cos(angle), np.sin(angle)]),
            length=rng.uniform(0.85, 1.1) * HEIGHT,
            width=rng.uniform(30, 42) if front else rng.uniform(20, 34),
        )
        leaf = _grown(leaf, variety, age)
        _paint_leaf(image, leaf, xs, ys, rng)
        leaves.append(leaf)
    leaf = leaves[-1]
    lesion = np.zeros((HEIGHT, WIDTH), np.float32)
    if label != "normal":
        LESIONS[label](image, lesion, leaf, xs, ys, rng)
    _light(image, xs, ys, rng)
    image += rng.standard_normal(image.shape, dtype=np.float32) * 3.0
    mask = np.where(lesion > 0.35, 255, 0).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def draw_field_photo(
    label: str,
    rng: np.random.Generator,
    size: tuple[int, int],
    lesion_scale: float = 2.0,
    variety: str = "ADT45",
    age: int = 60,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one large ``size`` (height, width) field photo: many rice leaves across the
    frame, ``label``'s lesions on half of them (``lesion_scale`` pixels per lesion unit: at
    2.0 a brown spot is 25-35 px across, 3-4 px once a 2048 px photo is shrunk to 256).

    Returns the uint8 RGB image and the uint8 lesion mask (255 on lesions, else 0).
    """
    height, width = size
    ys, xs = _grid(height, width)
    image = _background(rng, height, width)
    leaves = []
    for _ in range(max(3, round(3 * height * width / (HEIGHT * WIDTH)))):
        angle = np.deg2rad(rng.uniform(-130, -50))
        leaf = Leaf(
            base=np.array([rng.uniform(0, width), rng.uniform(0.45, 1.05) * height]),
            direction=np.array([np.cos(angle), np.sin(angle)]),
            length=rng.uniform(0.3, 0.55) * height,
            width=rng.uniform(14, 24),
            lesion_scale=lesion_scale,
        )
        leaf = _grown(leaf, variety, age)
        _paint_leaf(image, leaf, xs, ys, rng)
        leaves.append(leaf)
    lesion = np.zeros((height, width), np.float32)
    if label != "normal":  # the front half of the leaves (none hides their lesions)
        for leaf in leaves[-max(1, len(leaves) // 2) :]:
            LESIONS[label](image, lesion, leaf, xs, ys, rng)
    _light(image, xs, ys, rng)
    image += rng.standard_normal(image.shape, dtype=np.float32) * 3.0
    mask = np.where(lesion > 0.35, 255, 0).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8), mask


@functools.cache
def _grid(height: int = HEIGHT, width: int = WIDTH) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return ys, xs


def _background(rng: np.random.Generator, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    base = rng.choice([[92, 74, 52], [70, 82, 50], [110, 96, 70], [60, 70, 60]]).astype(np.float32)
    coarse = rng.uniform(0.7, 1.2, (12, 9)).astype(np.float32)
    shade = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * 6
    return base[None, None, :] * shade[..., None] + noise


def _paint_leaf(image, leaf: Leaf, xs, ys, rng) -> None:
    window = bounds(leaf, xs.shape)
    t, v = leaf.coords(xs[window], ys[window])
    half = leaf.half_width(t)
    inside = (t >= 0) & (t <= 1) & (np.abs(v) <= half)
    green = np.array([rng.uniform(55, 95), rng.uniform(120, 165), rng.uniform(30, 60)], np.float32)
    spacing = rng.uniform(5.0, 7.0)
    t, v, half = t[inside], v[inside], half[inside]
    veins = 1.0 + 0.07 * np.cos(2 * np.pi * v / spacing) + 0.12 * (np.abs(v) < 1.5)
    edge = 1.0 - 0.25 * (np.abs(v) / np.maximum(half, 1e-3)) ** 4
    along = 0.9 + 0.2 * t
    green = green * np.asarray(leaf.tint, np.float32)
    image[window][inside] = green[None, :] * (veins * edge * along)[:, None]


def _light(image, xs, ys, rng) -> None:
    angle = rng.uniform(0, 2 * np.pi)
    height, width = xs.shape
    ramp = np.cos(angle) * (xs / width - 0.5) + np.sin(angle) * (ys / height - 0.5)
    gain = rng.uniform(0.9, 1.1) + rng.uniform(0.1, 0.3) * ramp
    image *= gain[..., None]
