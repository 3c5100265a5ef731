"""``predict``: diagnose new photos with one model or an ensemble, and write Kaggle submissions.

Each image is decoded with the same safe decoder and shrunk to the size the model's training
cache had, then resized exactly as in validation. Unreadable images are listed with their
reason and never stop a batch. Several models average their probabilities (optionally
weighted); they must share their class names.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cropdoc.bundle import load_bundle
from cropdoc.config import parse_size
from cropdoc.data.augment import Augment, transform_batch
from cropdoc.data.images import ImageError, is_image_name, load_image
from cropdoc.data.loader import make_canvas
from cropdoc.errors import UserError
from cropdoc.files import atomic_write_json, atomic_write_text
from cropdoc.progress import Progress

TTA_SEEDS = (1, 2)  # two seeded training-style augmentations, besides the plain and flipped view


@dataclass
class Predictions:
    """Class probabilities per readable image, and the unreadable ones with their reason."""

    classes: list[str]
    paths: list[str]
    probs: np.ndarray  # (images, classes)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def top(self, k: int) -> list[dict]:
        """Rows of path and the ``k`` likeliest classes with their probabilities."""
        rows = []
        for path, p in zip(self.paths, self.probs, strict=True):
            order = np.argsort(-p)[:k]
            rows.append(
                {
                    "path": path,
                    "top": [
                        {"label": self.classes[i], "prob": round(float(p[i]), 6)} for i in order
                    ],
                }
            )
        return rows


def collect_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Image files from files, folders (recursive, sorted) and CSV lists of paths."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(
                p
                for p in item.rglob("*")
                if p.is_file() and is_image_name(p) and not p.name.startswith(".")
            )
        elif item.suffix.lower() == ".csv" and item.is_file():
            with open(item, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.reader(f))
            column = rows[0].index("path") if rows and "path" in rows[0] else 0
            start = 1 if rows and not is_image_name(rows[0][column]) else 0
            paths += [item.parent / row[column] for row in rows[start:] if row]
        elif item.exists() or is_image_name(item):
            paths.append(item)
        else:
            raise UserError(f"{item} is not an image, a folder or a CSV of paths")
    if not paths:
        raise UserError("no images to predict: give image files, folders or a CSV of paths")
    return paths


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def predict(
    models: list[str | os.PathLike],
    inputs: list[str | os.PathLike],
    tta: bool = False,
    bs: int = 64,
    weights: list[float] | None = None,
    device: str = "auto",
    quiet: bool = False,
) -> Predictions:
    """Class probabilities of every image in ``inputs`` from one model or an ensemble.

    Args:
        models: run folders or bundles (``model.safetensors`` + ``model.json``).
        inputs: images, folders and CSV files of paths.
        tta: also average over a flipped view and two seeded augmentations.
        weights: one weight per model for the ensemble average (default: equal).
    """
    if weights is not None and len(weights) != len(models):
        raise UserError(f"--ensemble-weights has {len(weights)} numbers for {len(models)} models")
    loaded = [load_bundle(m) for m in models]
    classes = loaded[0][1]["classes"]
    for path, (_, meta) in zip(models[1:], loaded[1:], strict=True):
        if meta["classes"] != classes:
            only_a = sorted(set(classes) - set(meta["classes"]))
            only_b = sorted(set(meta["classes"]) - set(classes))
            raise UserError(
                f"{path} has other classes than {models[0]} (only in the first: "
                f"{only_a or 'none'}; only in {path}: {only_b or 'none'}; order may differ)"
            )
    paths = collect_inputs(inputs)
    cache_size = max(int(meta.get("cache_size", 256)) for _, meta in loaded)
    dev = _device(device)
    good, errors = [], []
    total = np.zeros((0, len(classes)))
    weights = weights or [1.0] * len(loaded)
    with Progress(len(paths), "predict", quiet=quiet) as progress:
        for start in range(0, len(paths), bs):
            chunk, pixels = [], []
            for path in paths[start : start + bs]:
                try:
                    pixels.append(load_image(path, max_size=cache_size))
                    chunk.append(str(path))
                except ImageError as exc:
                    errors.append((str(path), str(exc)))
            progress.update(len(paths[start : start + bs]))
            if not chunk:
                continue
            canvas, sizes = make_canvas(pixels)
            probs = sum(
                w * _probabilities(model.to(dev), meta, canvas.to(dev), sizes, tta)
                for w, (model, meta) in zip(weights, loaded, strict=True)
            )
            total = np.concatenate([total, probs / sum(weights)])
            good += chunk
    return Predictions(classes, good, total, errors)


@torch.no_grad()
def _probabilities(model, meta: dict, canvas, sizes, tta: bool) -> np.ndarray:
    aug = Augment(
        size=parse_size(meta["size"]),
        item_size=parse_size(meta.get("item_size", meta["size"])),
        resize=meta.get("resize", "squish"),
    )
    mean = torch.tensor(meta["mean"], device=canvas.device)
    std = torch.tensor(meta["std"], device=canvas.device)
    x = transform_batch(canvas, sizes, aug, False, mean, std)
    views = [x, torch.flip(x, dims=[3])] if tta else [x]
    if tta:
        for seed in TTA_SEEDS:
            generator = torch.Generator().manual_seed(seed)
            views.append(transform_batch(canvas, sizes, aug, True, mean, std, generator))
    probs = torch.stack([model(v).float().softmax(1) for v in views]).mean(0)
    return probs.cpu().numpy().astype(np.float64)


def write_predictions(predictions: Predictions, out: str | os.PathLike, k: int) -> Path:
    """``.json``: rows with the top-k; otherwise CSV ``path,label,prob,label_2,prob_2,...``
    plus the unreadable files with their reason."""
    out = Path(out)
    rows = predictions.top(k)
    if out.suffix.lower() == ".json":
        atomic_write_json(
            out,
            {
                "predictions": rows,
                "errors": [{"path": p, "reason": r} for p, r in predictions.errors],
            },
        )
        return out
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["path"]
    for i in range(1, k + 1):
        header += ["label", "prob"] if i == 1 else [f"label_{i}", f"prob_{i}"]
    writer.writerow([*header, "error"])
    for row in rows:
        cells = [row["path"]]
        for t in row["top"]:
            cells += [t["label"], f"{t['prob']:.6f}"]
        writer.writerow([*cells, ""])
    for path, reason in predictions.errors:
        writer.writerow([path, *[""] * (len(header) - 1), reason])
    atomic_write_text(out, buffer.getvalue())
    return out


def submission(
    models: list[str | os.PathLike],
    sample: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    **options,
) -> Path:
    """A Kaggle submission: ``image_id,label`` for every id of ``sample``, in its order."""
    sample, images = Path(sample), Path(images)
    with open(sample, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if "image_id" not in (reader.fieldnames or []):
            raise UserError(f"{sample} has no image_id column: is it a sample submission?")
        ids = [row["image_id"] for row in reader]
    missing = [i for i in ids if not (images / i).is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} image(s) of {sample.name} are not in {images} "
            f"(first: {missing[0]}): give the folder that holds them"
        )
    predictions = predict(models, [images / i for i in ids], **options)
    if predictions.errors:
        path, reason = predictions.errors[0]
        raise UserError(
            f"{len(predictions.errors)} image(s) could not be read "
            f"(first: {path}: {reason}): a submission needs every id"
        )
    labels = [predictions.classes[i] for i in predictions.probs.argmax(1)]
    text = "image_id,label\n" + "".join(f"{i},{lab}\n" for i, lab in zip(ids, labels, strict=True))
    return atomic_write_text(out, text)
