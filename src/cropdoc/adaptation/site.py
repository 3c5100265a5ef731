"""Adapt a bundle to a new site from a few labelled photos of it: training goes on from the
bundle's weights with its classes kept (a class the new photos lack keeps what it knew),
optionally with a share of its own training photos mixed in; then the temperature, the
confidence floor and the out-of-scope score are fitted again, on the new site's photos.

The photos the run trains and validates on are written to ``adapt.csv`` in the new run
folder (every command reads it), so the run is an ordinary run: ``evaluate``, ``predict``,
``export`` and ``serve`` take it, and ``train --resume`` resumes it.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from cropdoc.adaptation.lineage import parent_bundle, record
from cropdoc.config import TrainConfig
from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write_text, csv_row
from cropdoc.core.progress import say
from cropdoc.data.layouts import Item, discover
from cropdoc.data.loader import check_known

MANIFEST = "adapt.csv"
# what differs from training anew: the head is trained already, so no frozen epoch, a lower
# rate (measured on lab-to-field potato, docs/field.md) and small batches for few photos
LR = 0.003
BS = 16


def adapt(
    parent: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    mix: float = 0.0,
    epochs: int | str = "auto",
    lr: float = LR,
    bs: int = BS,
    valid_pct: float = 0.2,
    seed: int = 42,
    workers: int | None = None,
    device: str = "auto",
) -> dict:
    """Adapt the bundle ``parent`` (a run folder or a bundle) to the labelled photos
    ``data`` (a folder or a manifest; its own split, else ``valid_pct`` of each class held
    out to validate on), writing a new run in ``out``. ``mix``: photos of the parent's own
    training split mixed in per training photo of the new site (it needs the parent's run
    folder). Returns the run's summary with ``adapted``."""
    from cropdoc.engine.trainer import train

    parent, data, out = Path(parent), Path(data), Path(out)
    meta = parent_bundle(parent)
    if (out / "config.yaml").exists():
        raise UserError(f"{out} already holds a run: choose another --out")
    if mix < 0:
        raise UserError(f"--mix is a number of the parent's photos per new photo, not {mix:g}")
    site = site_photos(data, meta.classes, valid_pct, seed)
    training = [item for item in site if item.split == "train"]
    if not mix and len({item.label for item in site}) < 2:
        raise UserError(
            f"{data} holds photos of one class ({site[0].label}): give --mix too, so that "
            "the model goes on seeing the others"
        )
    mixed = parent_photos(parent, round(mix * len(training)), seed) if mix else []
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MANIFEST, manifest_text([*site, *mixed]))
    config = TrainConfig(
        data=str(out / MANIFEST),
        arch=meta.arch,
        weights=str(parent / "model.safetensors"),
        classes=list(meta.classes),
        size=f"{meta.size[0]}x{meta.size[1]}",
        item_size=f"{meta.item_size[0]}x{meta.item_size[1]}",
        resize=meta.resize,
        global_pool=meta.global_pool,
        cache_size=meta.cache_size,
        freeze_epochs=0,
        epochs=epochs,
        lr=lr,
        bs=min(bs, len(training) + len(mixed)),
        seed=seed,
        workers=workers,
        device=device,
        out=str(out),
    )
    say(
        f"adapt: {len(training)} training and {len(site) - len(training)} validation photos "
        f"of the new site, {len(mixed)} of the parent's mixed in"
    )
    summary = train(config)
    photos = {
        "train": len(training),
        "valid": len(site) - len(training),
        "parent_mixed": len(mixed),
    }
    return {**summary, "adapted": record(out, parent, "labelled", data, photos)}


def site_photos(data: Path, classes: tuple[str, ...], valid_pct: float, seed: int) -> list[Item]:
    """The labelled photos of the new site, each with its split: the data's own when it has
    validation photos, else ``valid_pct`` of each class (at least one of a class of two or
    more photos) held out, seeded. A label the bundle does not know is refused."""
    dataset = discover(data, min_classes=1)
    photos = [item for item in dataset.items if item.label is not None and item.split != "test"]
    check_known(str(data), [item.label for item in photos], classes)
    if not photos:
        raise UserError(f"{data} has no labelled photos to adapt on")
    if any(item.split == "valid" for item in photos):
        return [Item(i.path, i.label, i.split or "train") for i in photos]
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted({item.label for item in photos}):
        members = [item for item in photos if item.label == label]
        order = rng.permutation(len(members))
        held = max(round(valid_pct * len(members)), 1 if len(members) >= 2 else 0)
        for rank, n in enumerate(order):
            split = "valid" if rank < held else "train"
            chosen.append(Item(members[n].path, label, split))
    if not any(item.split == "train" for item in chosen):
        raise UserError(f"{data} leaves no photo to train on: add photos")
    if not any(item.split == "valid" for item in chosen):
        raise UserError(f"{data} leaves no photo to validate on: give at least two of a class")
    return chosen


def parent_photos(parent: Path, count: int, seed: int) -> list[Item]:
    """``count`` photos drawn (seeded) from the training split of the parent's run, for
    training; the parent must be a run folder whose photos are still where they were."""
    from cropdoc.data.cache import open_cache
    from cropdoc.data.loader import run_split

    if not (parent / "config.yaml").exists():
        raise UserError(
            f"--mix needs the parent's training photos: {parent} is a bundle without its "
            "run (give the run folder, or leave --mix out)"
        )
    config = TrainConfig.from_yaml(parent / "config.yaml")
    cache = open_cache(config.data, config.cache, config.cache_size, config.workers)
    split = run_split(cache, config)
    drawn = np.random.default_rng(seed).permutation(split.train)[:count]
    return [
        Item(Path(cache.images[int(i)].path), cache.images[int(i)].label, "train") for i in drawn
    ]


def manifest_text(items: list[Item]) -> str:
    """``path,label,split`` rows, absolute paths."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    for item in items:
        writer.writerow(csv_row([str(Path(item.path).absolute()), item.label, item.split]))
    return buffer.getvalue()
