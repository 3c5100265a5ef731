"""``predict``: diagnose new photos with one model or an ensemble, and write Kaggle submissions.

Each image is decoded with the same safe decoder and shrunk to the size the model's training
cache had, then resized exactly as in validation. Unreadable images are listed with their
reason and never stop a batch. Several models average their probabilities (optionally
weighted); they must share their class names.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cropdoc.bundle import BundleMeta, load_bundle
from cropdoc.data.augment import transform_batch
from cropdoc.data.loader import make_canvas
from cropdoc.device import pick_device
from cropdoc.errors import UserError
from cropdoc.inference.predictions import (
    Predictions,
    Scorer,
    collect_inputs,
    file_version,
    predict_paths,
    tta_views,
    write_predictions,
    write_submission,
)

__all__ = ["Predictions", "collect_inputs", "predict", "submission", "write_predictions"]


def predict(
    models: list[str | os.PathLike],
    inputs: list[str | os.PathLike],
    tta: bool = False,
    bs: int = 64,
    weights: list[float] | None = None,
    device: str = "auto",
) -> Predictions:
    """Class probabilities of every image in ``inputs`` from one model or an ensemble.

    Args:
        models: run folders or bundles (``model.safetensors`` + ``model.json``).
        inputs: images, folders and CSV files of paths.
        tta: also average over the mirrored view and two fixed crops (``TTA_VIEWS``).
        weights: one weight per model for the ensemble average (default: equal).
    """
    scorer = torch_scorer(models, weights, device, tta)
    info = scorer.info
    return predict_paths(inputs, info["classes"], info["cache_size"], scorer.probabilities, bs=bs)


def torch_scorer(
    models: list[str | os.PathLike],
    weights: list[float] | None = None,
    device: str = "auto",
    tta: bool = False,
) -> Scorer:
    """One model or a weighted ensemble as a ``Scorer`` (probabilities of decoded images)."""
    if weights is not None and len(weights) != len(models):
        raise UserError(f"--ensemble-weights has {len(weights)} numbers for {len(models)} models")
    loaded = [load_bundle(m) for m in models]
    dev = pick_device(device)
    for model, _ in loaded:  # channels_last, as in training
        model.to(dev, memory_format=torch.channels_last)
    classes = loaded[0][1].classes
    for path, (_, meta) in zip(models[1:], loaded[1:], strict=True):
        if meta.classes != classes:
            only_a = sorted(set(classes) - set(meta.classes))
            only_b = sorted(set(meta.classes) - set(classes))
            raise UserError(
                f"{path} has other classes than {models[0]} (only in the first: "
                f"{only_a or 'none'}; only in {path}: {only_b or 'none'}; order may differ)"
            )
    cache_size = max(meta.cache_size for _, meta in loaded)
    weights = weights or [1.0] * len(loaded)

    def probabilities(pixels: list[np.ndarray]) -> np.ndarray:
        canvas, sizes = make_canvas(pixels)
        probs = sum(
            w * _probabilities(model, meta, canvas.to(dev), sizes, tta)
            for w, (model, meta) in zip(weights, loaded, strict=True)
        )
        return probs / sum(weights)

    first = loaded[0][1]
    info = {
        "classes": list(classes),
        "cache_size": cache_size,
        "arch": "+".join(meta.arch for _, meta in loaded),
        "size": list(first.size),
        "version": "+".join(file_version(Path(m) / "model.safetensors") for m in models),
        "metrics": first.metrics,
    }
    return Scorer(probabilities, info, loaded[0])


def _probabilities(model, meta: BundleMeta, canvas, sizes, tta: bool) -> np.ndarray:
    """Class probabilities of a canvas batch, averaged over the TTA views with ``tta``."""
    return view_probabilities(model, meta, canvas, sizes, tta).mean(0)


@torch.no_grad()
def view_probabilities(model, meta: BundleMeta, canvas, sizes, tta: bool) -> np.ndarray:
    """``(views, images, classes)`` probabilities: the plain view first, then with ``tta``
    the other test-time views (``predictions.TTA_VIEWS``)."""
    aug = meta.augment()
    mean = torch.tensor(meta.mean, device=canvas.device)
    std = torch.tensor(meta.std, device=canvas.device)
    probs = [
        model(transform_batch(canvas, sizes, aug, False, mean, std, view=view)).float().softmax(1)
        for view in tta_views(tta)
    ]
    return torch.stack(probs).cpu().numpy().astype(np.float64)


def submission(
    models: list[str | os.PathLike],
    sample: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    **options,
) -> Path:
    """A Kaggle submission: ``image_id,label`` for every id of ``sample``, in its order."""
    return write_submission(lambda paths: predict(models, paths, **options), sample, images, out)
