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

from cropdoc.contract.bundle import BundleMeta
from cropdoc.core.errors import UserError
from cropdoc.core.progress import say
from cropdoc.data.inputs import collect_inputs
from cropdoc.inference.predictions import (
    Predictions,
    Scorer,
    file_version,
    predict_paths,
    write_predictions,
    write_submission,
)
from cropdoc.model.device import pick_device
from cropdoc.model.kinds import model_kind
from cropdoc.model.scoring import load_scoring_model

__all__ = ["Predictions", "collect_inputs", "predict", "submission", "write_predictions"]


def predict(
    models: list[str | os.PathLike],
    inputs: list[str | os.PathLike],
    tta: bool = False,
    bs: int = 64,
    weights: list[float] | None = None,
    device: str = "auto",
    quality: bool = True,
) -> Predictions:
    """Class probabilities of every image in ``inputs`` from one model or an ensemble.

    Args:
        models: run folders or bundles (``model.safetensors`` + ``model.json``).
        inputs: images, folders and CSV files of paths.
        tta: also average over the mirrored view and two fixed crops (``TTA_VIEWS``).
        weights: one weight per model for the ensemble average (default: equal).
        quality: check each photo's quality first (``cropdoc.contract.quality``): a photo that fails
            gets the verdict ``retake``.
    """
    return predict_paths(inputs, torch_scorer(models, weights, device, tta), bs, quality)


def torch_scorer(
    models: list[str | os.PathLike],
    weights: list[float] | None = None,
    device: str = "auto",
    tta: bool = False,
) -> Scorer:
    """One model or a weighted ensemble as a ``Scorer``. An ensemble averages the models'
    calibrated probabilities (weighted) and their out-of-scope scores (each model's own
    boundary is 1.0, so the mean keeps that meaning); its confidence floor is the mean of
    the models' floors."""
    if weights is not None and len(weights) != len(models):
        raise UserError(f"--ensemble-weights has {len(weights)} numbers for {len(models)} models")
    loaded = [load_scoring_model(m) for m in models]
    dev = pick_device(device)
    for model, _ in loaded:  # channels_last, as in training
        model.to(dev, memory_format=torch.channels_last)
    _check_same_classes(models, [meta for _, meta in loaded])
    _check_same_targets(models, [meta for _, meta in loaded])
    weights = weights or [1.0] * len(loaded)
    for path, (_, meta) in zip(models, loaded, strict=True):
        if not meta.trust.fitted:
            say(
                f"{path}: no calibration or out-of-scope statistics (an older bundle): "
                "probabilities are uncalibrated and every verdict is a diagnosis"
            )

    metas = [meta for _, meta in loaded]
    info = {
        "classes": list(metas[0].classes),
        "cache_size": _decode_size(metas),
        "arch": "+".join(meta.arch for meta in metas),
        "size": list(metas[0].size),
        "version": "+".join(file_version(Path(m) / "model.safetensors") for m in models),
        "metrics": metas[0].metrics,
        "min_confidence": float(np.mean([meta.trust.min_confidence for meta in metas])),
        "tile": metas[0].tiles.tile,
    }
    kinds = [model_kind(meta.tiles) for meta in metas]
    if len(kinds) > 1:  # an ensemble: of models that can be averaged
        for kind in kinds:
            kind.refuse("ensemble")
    score = kinds[0].scorer(loaded, weights, dev, tta)
    return Scorer(score, info, (loaded[0][0].model, metas[0]), metas[0].others, kinds[0])


def _decode_size(metas: list[BundleMeta]) -> int:
    """The longer side to decode photos to for all ``metas``: 0 (full size) when one
    reads full size (a tiled bundle does), else the largest cache size."""
    sizes = [meta.cache_size for meta in metas]
    return 0 if 0 in sizes else max(sizes)


def _check_same_targets(models: list, metas: list[BundleMeta]) -> None:
    """An ensemble's models answer the same targets (names, kinds and classes)."""

    def shape(meta: BundleMeta) -> list:
        return [(t.name, t.kind, t.classes) for t in meta.others]

    for path, meta in zip(models[1:], metas[1:], strict=True):
        if shape(meta) != shape(metas[0]):
            names = ", ".join(t.name for t in metas[0].targets) or "label"
            theirs = ", ".join(t.name for t in meta.targets) or "label"
            raise UserError(
                f"{path} answers other targets than {models[0]} ({theirs}, not {names}): "
                "an ensemble averages models of the same targets"
            )


def _check_same_classes(models: list, metas: list[BundleMeta]) -> None:
    classes = metas[0].classes
    for path, meta in zip(models[1:], metas[1:], strict=True):
        if meta.classes != classes:
            only_a = sorted(set(classes) - set(meta.classes))
            only_b = sorted(set(meta.classes) - set(classes))
            raise UserError(
                f"{path} has other classes than {models[0]} (only in the first: "
                f"{only_a or 'none'}; only in {path}: {only_b or 'none'}; order may differ)"
            )


def submission(
    models: list[str | os.PathLike],
    sample: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    target: str = "label",
    **options,
) -> Path:
    """A Kaggle submission: ``image_id,label`` for every id of ``sample``, in its order
    (``image_id,TARGET`` with another ``target`` of a multi-target model)."""
    return write_submission(
        lambda paths: predict(models, paths, **options), sample, images, out, target
    )


PARITY_PHOTOS = 32  # held-out photos of an export's parity check


def photo_parity(model_dir: str | os.PathLike, scorer: Scorer, photos: list | None = None) -> dict:
    """An export's parity on photos through its own runtime's preprocessing: the top-1
    agreement and the largest probability difference between the torch runtime and
    ``scorer`` on ``photos`` (default: ``held_out_photos`` of the run)."""
    photos = photos or held_out_photos(Path(model_dir))
    if not photos:
        return {"photos": 0}
    torch_side = predict([model_dir], photos, quality=False)
    other = predict_paths(photos, scorer, quality=False)
    diff = float(np.abs(torch_side.probs - other.probs).max())
    agree = float((torch_side.probs.argmax(1) == other.probs.argmax(1)).mean())
    return {"photos": len(other.paths), "top1_agreement": agree, "max_prob_diff": diff}


def held_out_photos(run: Path) -> list[Path]:
    """Up to ``PARITY_PHOTOS`` photos the run did not train on: its data's ``test_images``
    (Kaggle layout), else photos spread over its data (its ``config.yaml``); none when
    the run's data is not here."""
    from cropdoc.config import TrainConfig

    if not (run / "config.yaml").is_file():
        return []
    data = Path(TrainConfig.from_yaml(run / "config.yaml").data)
    if not data.exists():
        return []
    if (data / "test_images").is_dir():
        data = data / "test_images"
    try:
        found = collect_inputs([data])
    except UserError:
        return []
    return found[:: max(1, len(found) // PARITY_PHOTOS)][:PARITY_PHOTOS]
