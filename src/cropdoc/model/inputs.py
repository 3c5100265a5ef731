"""A bundle's torch view of photos: its validation transform on a canvas batch, and the
calibrated scores of a batch over the test-time views."""

from __future__ import annotations

import numpy as np
import torch

from cropdoc.contract.bundle import BundleMeta
from cropdoc.contract.views import tta_views
from cropdoc.data.augment import Augment, transform_batch
from cropdoc.data.loader import make_canvas


@torch.no_grad()
def view_scores(model, meta: BundleMeta, canvas, sizes, tta: bool):
    """``(views, images, classes)`` calibrated probabilities, ``(views, images)``
    out-of-scope scores of a ``ScoringModel`` and, per other target of a multi-target
    bundle, its ``(views, images, classes)`` probabilities or ``(views, images)`` values:
    the plain view first, then with ``tta`` the other test-time views
    (``contract.views.TTA_VIEWS``)."""
    probs, ood, answers = [], [], [[] for _ in meta.others]
    for view in tta_views(tta):
        logits, score, *others = model(validation_input(meta, canvas, sizes, view))
        probs.append((logits.float() / meta.trust.temperature).softmax(1))
        ood.append(score.float())
        for target, out, kept in zip(meta.others, others, answers, strict=True):
            kept.append(out.float().softmax(1) if target.kind == "class" else out.float())
    return _stacked(probs), _stacked(ood), [_stacked(a) for a in answers]


def _stacked(views: list[torch.Tensor]) -> np.ndarray:
    return torch.stack(views).cpu().numpy().astype(np.float64)


def validation_input(meta: BundleMeta, canvas, sizes, view=None) -> torch.Tensor:
    """The normalised model input of a canvas batch through the bundle's validation
    transform (and a test-time ``view``), on the canvas's device."""
    mean = torch.tensor(meta.mean, device=canvas.device)
    std = torch.tensor(meta.std, device=canvas.device)
    return transform_batch(canvas, sizes, validation_augment(meta), False, mean, std, view=view)


def validation_augment(meta: BundleMeta) -> Augment:
    """The bundle's validation transform: its size, item size and resize method."""
    return Augment(size=meta.size, item_size=meta.item_size, resize=meta.resize)


def model_input(
    pixels: np.ndarray, meta: BundleMeta, device: torch.device
) -> tuple[torch.Tensor, np.ndarray]:
    """The normalised input the model sees for ``pixels`` and the same as uint8 pixels."""
    aug = validation_augment(meta)
    canvas, sizes = make_canvas([pixels])
    zero, one = torch.zeros(3, device=device), torch.ones(3, device=device)
    plain = transform_batch(canvas.to(device), sizes, aug, False, zero, one)
    mean = torch.tensor(meta.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(meta.std, device=device).view(1, 3, 1, 1)
    seen = (plain[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy()
    return (plain - mean) / std, seen
