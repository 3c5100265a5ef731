"""How well a model's heatmaps find the lesions: the pointing game (is the heat's peak on
a lesion?) and the share of heat inside the lesion masks, against chance."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cropdoc.contract.bundle import BundleMeta
from cropdoc.core.errors import UserError
from cropdoc.data.images import load_image
from cropdoc.data.loader import labelled_images
from cropdoc.inference.explain import Explainer


def localisation(heat: np.ndarray, mask: np.ndarray, dilate: int = 8) -> dict:
    """Pointing game and energy of one heatmap against a lesion mask: ``hit`` is whether the
    heatmap's peak falls inside the mask dilated by ``dilate`` pixels, ``energy`` the share
    of the heat inside the mask, ``chance`` the share of the image the dilated mask covers
    (the hit rate of a peak placed at random)."""
    mask = mask.astype(bool)
    grown = torch.from_numpy(mask.astype(np.float32))[None, None]
    grown = F.max_pool2d(grown, 2 * dilate + 1, stride=1, padding=dilate)[0, 0].numpy() > 0
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    total = float(heat.sum())
    return {
        "hit": bool(grown[peak]),
        "energy": float(heat[mask].sum()) / total if total > 0 else 0.0,
        "chance": float(grown.mean()),
    }


def score(
    model: str | os.PathLike,
    masks: str | os.PathLike,
    images: list[str | os.PathLike] | None = None,
    method: str = "gradcam",
    dilate: int = 8,
    device: str = "auto",
) -> dict:
    """Localisation score of ``model`` on the images that have a non-empty lesion mask in
    ``masks`` (a PNG named like the image, in any sub-folder; the demo data's ``masks/``).

    Images default to the run's validation split. Returns the pointing-game hit rate and
    the mean share of heat inside the masks, overall and per class.
    """
    from cropdoc.core.progress import Progress
    from cropdoc.data.inputs import collect_inputs

    found = {p.stem: p for p in Path(masks).rglob("*.png")}
    if not found:
        raise UserError(f"{masks} holds no mask PNGs")
    if images is None:
        paths = [Path(p) for p in _validation_paths(Path(model))]
    else:
        paths = collect_inputs(images)
    pairs = [(p, found[p.stem]) for p in paths if p.stem in found]
    if not pairs:
        raise UserError(f"none of the {len(paths)} images has a mask in {masks}")
    explainer = Explainer(model, device)
    per_class: dict[str, list[dict]] = {}
    with Progress(len(pairs), "score", lines=False) as progress:
        for path, mask_path in pairs:
            mask = _mask(explainer, mask_path)
            progress.update()
            if not mask.any():
                continue  # a healthy leaf: nothing to point at
            item = explainer(path, method)
            per_class.setdefault(mask_path.parent.name, []).append(
                localisation(item.heatmap, mask, dilate)
            )
    if not per_class:
        raise UserError(f"every mask in {masks} for these images is empty")
    everything = [r for results in per_class.values() for r in results]
    return {
        "method": method,
        "dilate": dilate,
        **_summary(everything),
        "per_class": {name: _summary(results) for name, results in sorted(per_class.items())},
    }


def _mask(explainer: Explainer, path: Path) -> np.ndarray:
    """A lesion mask as the heatmap sees the photo: at full resolution for a tiled bundle,
    else through the validation transform, as the model saw it."""
    pixels = load_image(path, max_size=explainer.meta.cache_size)
    return explainer.kind.seen(pixels, explainer.meta, explainer.device)[..., 0] > 127


def _summary(results: list[dict]) -> dict:
    """Pointing game, heat inside the masks and chance, averaged over ``results``."""
    return {
        "images": len(results),
        "pointing_game": round(float(np.mean([r["hit"] for r in results])), 4),
        "energy_inside": round(float(np.mean([r["energy"] for r in results])), 4),
        "chance": round(float(np.mean([r["chance"] for r in results])), 4),
    }


def _validation_paths(run: Path) -> list[str]:
    """The image files of the run's validation split."""
    cache, indices, _ = labelled_images(run, BundleMeta.read(run).cache_size)
    return [cache.images[int(i)].path for i in indices]
