"""Fit a trained run's trust statistics and write them into its bundle: the temperature
and the lowest confidence to answer with (on the validation split, or another labelled
folder), and the out-of-scope score (the training split's features as the bank, the
threshold on the validation images)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from cropdoc.config import TrainConfig
from cropdoc.contract import calibration
from cropdoc.contract.bundle import BundleMeta, TrustMeta, save_meta
from cropdoc.contract.ood import KEEP, Layered, Mahalanobis, OutOfScope, knn_distance, threshold_of
from cropdoc.core.errors import UserError
from cropdoc.core.progress import say
from cropdoc.data.cache import Cache, open_cache
from cropdoc.data.loader import Split, labelled_images, run_split
from cropdoc.model.build import load_bundle, write_safetensors
from cropdoc.model.device import pick_device
from cropdoc.model.kinds import model_kind
from cropdoc.model.scoring import TRUST_FILE

METHOD = "mahalanobis-layers"  # the out-of-scope score, by measurement (docs/real.md)
K = 10  # neighbours of the kNN score, where it is chosen


@torch.no_grad()
def cache_outputs(
    model, meta: BundleMeta, cache: Cache, indices, device, bs: int = 64, levels=()
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits of cached images through the validation transform, and their features: the
    penultimate ones, then the pooled features of the stages ``levels`` (a tiled bundle's
    penultimate features only, pooled over the tiles covering each photo)."""
    model.to(device).eval()
    return model_kind(meta.tiles).cache_outputs(model, meta, cache, indices, device, bs, levels)


def fit_trust(
    run: str | os.PathLike,
    data: str | os.PathLike | None = None,
    method: str = METHOD,
    keep: float = KEEP,
    device: str = "auto",
) -> dict:
    """Fit and store the trust statistics of the run folder ``run``; with ``data`` (a
    labelled folder), the temperature, confidence floor and threshold come from it instead
    of the run's validation split. Returns the fitted values and the calibration before
    and after."""
    run = Path(run)
    if not (run / "config.yaml").exists():
        raise UserError(
            f"{run} is a bundle without its run: the out-of-scope score needs the run's "
            "training images (give the run folder)"
        )
    config = TrainConfig.from_yaml(run / "config.yaml")
    if data is None:
        cache = open_cache(config.data, config.cache, config.cache_size, config.workers)
        split = run_split(cache, config)
        return fit_split(run, cache, split, method=method, keep=keep, device=device)
    meta = BundleMeta.read(run)
    held = labelled_images(run, meta.cache_size, data, meta.classes)
    try:
        cache = open_cache(config.data, config.cache, config.cache_size, config.workers)
    except UserError as exc:  # the training images moved or are gone
        if not meta.trust.ood_method:
            raise UserError(
                f"the out-of-scope statistics need the run's training images, which cannot "
                f"be read ({exc}): put them back at {config.data}"
            ) from None
        say(
            f"calibrate: the run's training images are not at {config.data}; the bundle's "
            f"out-of-scope statistics stay, their threshold is refitted on {data}"
        )
        return fit_held(run, held, keep, device)
    split = run_split(cache, config)
    return fit_split(run, cache, split, held, method, keep, device)


def fit_held(run: Path, held: tuple[Cache, np.ndarray, np.ndarray], keep: float, device: str):
    """Refit the temperature, the floor and the out-of-scope threshold of the bundle in
    ``run`` on the ``held`` images (cache, indices, targets), keeping its out-of-scope
    statistics (``trust.safetensors``) as they are."""
    model, meta = load_bundle(run)
    held_cache, indices, targets = held
    levels = meta.trust.ood_levels
    logits, layers = cache_outputs(
        model, meta, held_cache, indices, pick_device(device), levels=levels
    )
    ood = stored_score(run, meta)
    ood.threshold = threshold_of(distances(ood, layers), keep)
    return _store(run, meta, logits, targets, ood, keep, training=0, levels=levels)


def refit_threshold(run: Path, cache: Cache, indices, keep: float, device: str) -> dict:
    """Refit only the out-of-scope threshold of the bundle in ``run``, on the unlabelled
    photos ``indices`` of ``cache`` (``keep`` of them in scope); its temperature, floor and
    statistics stay. Returns the bundle's trust values."""
    model, meta = load_bundle(run)
    if not meta.trust.ood_method:
        return dataclasses.asdict(meta.trust)
    _, layers = cache_outputs(
        model, meta, cache, indices, pick_device(device), levels=meta.trust.ood_levels
    )
    threshold = threshold_of(distances(stored_score(run, meta), layers), keep)
    trust = dataclasses.replace(meta.trust, ood_threshold=threshold, ood_keep=keep)
    save_meta(run, dataclasses.replace(meta, trust=trust))
    say(f"trust: out-of-scope threshold {threshold:.4f} on {len(indices)} photos")
    return dataclasses.asdict(trust)


def stored_score(run: Path, meta: BundleMeta) -> OutOfScope | Mahalanobis | Layered:
    """The bundle's out-of-scope score from its ``trust.safetensors`` (threshold 1.0)."""
    from safetensors.numpy import load_file

    tensors = load_file(run / TRUST_FILE)
    if meta.trust.ood_method == "knn":
        return OutOfScope(tensors["ood_bank"], meta.trust.ood_k, 1.0)
    if meta.trust.ood_method == "mahalanobis-layers":
        return Layered.from_tensors(tensors, 1.0)
    return Mahalanobis(tensors["ood_means"], tensors["ood_precision"], 1.0)


def distances(ood: OutOfScope | Mahalanobis | Layered, layers: list[np.ndarray]) -> np.ndarray:
    """The out-of-scope distance of each photo from its ``layers`` (``cache_outputs``')."""
    if isinstance(ood, OutOfScope):
        return knn_distance(layers[0], ood.bank, ood.k)
    if isinstance(ood, Layered):
        return ood.distance(layers)
    return ood.distance(layers[0])


def fit_split(
    run: str | os.PathLike,
    cache: Cache,
    split: Split,
    held: tuple[Cache, np.ndarray, np.ndarray] | None = None,
    method: str = METHOD,
    keep: float = KEEP,
    device: str = "auto",
) -> dict:
    """Fit the statistics of the bundle in ``run`` from a training ``split`` of ``cache``
    (the bank) and ``held`` images (cache, indices, targets; default the split's
    validation images) for the temperature, the floor and the threshold; store them."""
    run = Path(run)
    model, meta = load_bundle(run)
    dev = pick_device(device)
    held_cache, indices, targets = held or (cache, split.valid, split.targets[split.valid])
    levels = model_kind(meta.tiles).ood_levels(model) if method == "mahalanobis-layers" else ()
    method = method if levels or method != "mahalanobis-layers" else "mahalanobis"
    _, train_layers = cache_outputs(model, meta, cache, split.train, dev, levels=levels)
    logits, layers = cache_outputs(model, meta, held_cache, indices, dev, levels=levels)
    train_targets = split.targets[split.train]
    classes = len(meta.classes)
    if method == "knn":
        ood = OutOfScope.fit(train_layers[0], layers[0], K, keep)
    elif method == "mahalanobis-layers":
        ood = Layered.fit(train_layers, train_targets, classes, layers, keep)
    else:
        ood = Mahalanobis.fit(train_layers[0], train_targets, classes, layers[0], keep)
    return _store(run, meta, logits, targets, ood, keep, len(split.train), levels)


def _store(
    run: Path,
    meta: BundleMeta,
    logits,
    targets,
    ood,
    keep: float,
    training: int,
    levels: tuple[int, ...] = (),
):
    """Fit the temperature and the floor on ``logits``, store them with the out-of-scope
    score ``ood`` (read from the stages ``levels`` too) in the bundle; the fitted values
    and the calibration before and after."""
    temperature = calibration.fit_temperature(logits, targets)
    before = calibration.softmax(logits)
    after = calibration.softmax(logits, temperature)
    kinds = {OutOfScope: "knn", Mahalanobis: "mahalanobis", Layered: "mahalanobis-layers"}
    trust = TrustMeta(
        temperature=temperature,
        min_confidence=calibration.min_confidence(after, targets),
        ood_method=kinds[type(ood)],
        ood_k=getattr(ood, "k", 0),
        ood_threshold=ood.threshold,
        ood_keep=keep,
        ood_levels=tuple(levels) if isinstance(ood, Layered) else (),
    )
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ood.tensors().items()}
    write_safetensors(run / TRUST_FILE, tensors)
    save_meta(run, dataclasses.replace(meta, trust=trust))
    result = {
        **dataclasses.asdict(trust),
        "images": len(targets),
        "training_images": training,
        "nll": [calibration.nll(before, targets), calibration.nll(after, targets)],
        "ece": [calibration.ece(before, targets), calibration.ece(after, targets)],
    }
    bank = f"{training} training photos" if training else "the bundle's statistics"
    say(
        f"trust: temperature {temperature:.3f}, ECE {result['ece'][0]:.4f} -> "
        f"{result['ece'][1]:.4f}, min confidence {trust.min_confidence:.3f}, out-of-scope "
        f"threshold {ood.threshold:.4f} ({trust.ood_method}, {bank})"
    )
    return result
