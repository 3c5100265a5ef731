"""A bundle's model as it scores photos: logits and the out-of-scope score in one pass.

The same module runs in the torch runtime and is what ``export`` writes to ONNX, so both
runtimes compute the same features, the same kNN distance and the same score.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from cropdoc.build import check_finite, load_bundle
from cropdoc.bundle import BundleError, BundleMeta, TrustMeta
from cropdoc.errors import one_line
from cropdoc.models import features_and_logits
from cropdoc.targets import Target, outputs

TRUST_FILE = "trust.safetensors"


class OutOfScopeScore(nn.Module):
    """``forward(features) -> score``: the Mahalanobis or the kNN distance of penultimate
    features (``trust.ood``) over the bundle's threshold, so 1.0 is the boundary; zeros for
    a bundle without out-of-scope statistics."""

    def __init__(self, trust: TrustMeta, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.method, self.k, self.threshold = trust.ood_method, trust.ood_k, trust.ood_threshold
        for name in ("ood_means", "ood_precision", "ood_bank"):
            self.register_buffer(name, tensors.get(name, torch.zeros(0)).float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = features.float()
        if self.method == "mahalanobis":
            d = features[:, None, :] - self.ood_means[None]  # (images, classes, features)
            squared = ((d @ self.ood_precision) * d).sum(-1).min(1).values
            return squared.clamp_min(0).sqrt() / self.threshold
        if self.method == "knn":
            unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
            kth = (unit @ self.ood_bank.T).topk(self.k, dim=1).values[:, -1]
            return (2 - 2 * kth).clamp_min(0).sqrt() / self.threshold
        return torch.zeros_like(features[:, 0])


class ScoringModel(nn.Module):
    """``forward(x) -> (logits, ood_score, *others)`` of whole-photo inputs: the label's
    logits, the out-of-scope score (``OutOfScopeScore``) and, for a multi-target bundle,
    one output per other target (logits, or values in the column's units). A tiled
    bundle's model is a ``MILModel``: ``cropdoc.tiles.scoring`` runs it tile by tile with
    the same ``ood``."""

    def __init__(
        self,
        model: nn.Module,
        trust: TrustMeta,
        tensors: dict[str, torch.Tensor],
        targets: tuple[Target, ...] = (),
    ):
        super().__init__()
        self.model = model
        self.ood = OutOfScopeScore(trust, tensors)
        self.targets = targets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features, logits = features_and_logits(self.model, x)
        if not self.targets:
            return logits, self.ood(features)
        label, *others = outputs(logits, self.targets)
        return label, self.ood(features), *others


def load_scoring_model(folder: str | os.PathLike) -> tuple[ScoringModel, BundleMeta]:
    """The bundle's model with its out-of-scope statistics (``trust.safetensors``), in
    eval mode; a bundle without them scores 0 (an old bundle, or one not yet fitted)."""
    from safetensors.torch import load_file

    model, meta = load_bundle(folder)
    tensors, path = {}, Path(folder) / TRUST_FILE
    if meta.trust.ood_method:
        try:
            tensors = load_file(path)
        except Exception as exc:  # safetensors raises its own error kinds
            raise BundleError(f"cannot read {path}: {one_line(exc, 120)}") from None
        check_finite(path, tensors)
        needed = ("ood_bank",) if meta.trust.ood_method == "knn" else ("ood_means", "ood_precision")
        if any(name not in tensors for name in needed):
            raise BundleError(
                f"{path} lacks {', '.join(needed)}: fit it again with cropdoc calibrate"
            )
    return ScoringModel(model, meta.trust, tensors, meta.targets).eval(), meta
