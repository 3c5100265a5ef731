"""A bundle's model as it scores photos: logits and the out-of-scope score in one pass.

The same module runs in the torch runtime and is what ``export`` writes to ONNX, so both
runtimes compute the same features, the same kNN distance and the same score.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from cropdoc.contract.bundle import BundleError, BundleMeta, TrustMeta
from cropdoc.contract.targets import Target
from cropdoc.core.errors import one_line
from cropdoc.model.archs import features_logits_levels
from cropdoc.model.build import check_finite, load_bundle
from cropdoc.model.multihead import outputs

TRUST_FILE = "trust.safetensors"


class OutOfScopeScore(nn.Module):
    """``forward(features, levels) -> score``: the Mahalanobis or the kNN distance of
    penultimate features, or the layered Mahalanobis distance of them and of the pooled
    features of the middle stages ``levels`` (``trust.ood``), over the bundle's threshold,
    so 1.0 is the boundary; zeros for a bundle without out-of-scope statistics."""

    def __init__(self, trust: TrustMeta, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.method, self.k, self.threshold = trust.ood_method, trust.ood_k, trust.ood_threshold
        self.levels = trust.ood_levels  # the stages whose pooled features are read
        for name in ("ood_means", "ood_precision", "ood_bank", "ood_scales"):
            self.register_buffer(name, tensors.get(name, torch.zeros(0)).float())
        for n in range(len(self.levels) + 1 if self.levels else 0):
            for name in (f"ood_means_{n}", f"ood_precision_{n}"):
                self.register_buffer(name, tensors[name].float())

    def forward(self, features: torch.Tensor, levels: list[torch.Tensor] = ()) -> torch.Tensor:
        features = features.float()
        if self.method == "mahalanobis-layers":
            layers = [features, *(level.float() for level in levels)]
            total = sum(
                _mahalanobis(
                    f, getattr(self, f"ood_means_{n}"), getattr(self, f"ood_precision_{n}")
                )
                / self.ood_scales[n]
                for n, f in enumerate(layers)
            )
            return total / self.threshold
        if self.method == "mahalanobis":
            return _mahalanobis(features, self.ood_means, self.ood_precision) / self.threshold
        if self.method == "knn":
            unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
            kth = (unit @ self.ood_bank.T).topk(self.k, dim=1).values[:, -1]
            return (2 - 2 * kth).clamp_min(0).sqrt() / self.threshold
        return torch.zeros_like(features[:, 0])


def _mahalanobis(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor):
    """The smallest Mahalanobis distance of each row of ``features`` to a class mean."""
    d = features[:, None, :] - means[None]  # (images, classes, features)
    return ((d @ precision) * d).sum(-1).min(1).values.clamp_min(0).sqrt()


class ScoringModel(nn.Module):
    """``forward(x) -> (logits, ood_score, *others)`` of whole-photo inputs: the label's
    logits, the out-of-scope score (``OutOfScopeScore``) and, for a multi-target bundle,
    one output per other target (logits, or values in the column's units). A tiled
    bundle's model is a ``MILModel``: ``cropdoc.model.tiled`` runs it tile by tile with
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
        features, logits, levels = features_logits_levels(self.model, x, self.ood.levels)
        ood = self.ood(features, levels)
        if not self.targets:
            return logits, ood
        label, *others = outputs(logits, self.targets)
        return label, ood, *others


def needed_tensors(trust: TrustMeta) -> list[str]:
    """The names ``trust.safetensors`` must hold for the bundle's out-of-scope score."""
    if trust.ood_method == "knn":
        return ["ood_bank"]
    if trust.ood_method == "mahalanobis":
        return ["ood_means", "ood_precision"]
    parts = range(len(trust.ood_levels) + 1)
    return ["ood_scales", *(f"ood_{kind}_{n}" for n in parts for kind in ("means", "precision"))]


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
        needed = needed_tensors(meta.trust)
        if any(name not in tensors for name in needed):
            raise BundleError(
                f"{path} lacks {', '.join(needed)}: fit it again with cropdoc calibrate"
            )
    return ScoringModel(model, meta.trust, tensors, meta.targets).eval(), meta
