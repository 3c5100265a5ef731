"""Multiple-instance learning: a photo is a bag of tiles, its label supervises the bag.

``MILModel`` runs a timm model on every tile and pools the tiles per photo, so a healthy
tile of a diseased photo is not told to say "diseased":

- ``max``: each class's logit is its largest over the tiles (the photo is diseased when
  some tile is);
- ``attention``: gated attention (Ilse, Tomczak and Welling 2018) weighs the tiles'
  features, and the classifier reads their weighted mean.

Either way ``pool`` also returns the weight of each tile in the answer (which tiles drove
it) and the photo's pooled features (for the out-of-scope score).
"""

from __future__ import annotations

import torch
from torch import nn

from cropdoc.model.archs import features_and_logits

POOLINGS = ("max", "attention")


class GatedAttention(nn.Module):
    """One score per tile from its features: ``w . (tanh(V h) * sigmoid(U h))``."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.v, self.u, self.w = (
            nn.Linear(dim, hidden),
            nn.Linear(dim, hidden),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        gated = torch.tanh(self.v(features)) * torch.sigmoid(self.u(features))
        return self.w(gated).squeeze(-1)


class MILModel(nn.Module):
    """A timm model (``body``) on tiles, pooled per photo. ``forward`` takes ``(photos,
    tiles, 3, h, w)`` bags and returns the photos' logits."""

    def __init__(self, body: nn.Module, pooling: str = "max"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}")
        self.body, self.pooling = body, pooling
        dim = getattr(body, "head_hidden_size", None) or body.num_features
        self.attention = GatedAttention(dim) if pooling == "attention" else None

    @property
    def pretrained_cfg(self) -> dict:
        return getattr(self.body, "pretrained_cfg", {}) or {}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.body.set_grad_checkpointing(enable)

    def get_classifier(self) -> nn.Module:
        return self.body.get_classifier()

    def tiles(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features, logits and attention scores (zeros for max pooling) of ``(n, 3, h, w)``
        tiles."""
        features, logits = features_and_logits(self.body, x)
        if self.attention is None:
            return features, logits, torch.zeros_like(logits[:, 0])
        return features, logits, self.attention(features)

    def pool(self, features, logits, scores) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(photos, tiles, ...)`` tile outputs -> the photos' logits, pooled features and
        each tile's weight in the answer (summing to 1 per photo)."""
        if self.attention is not None:
            weights = scores.float().softmax(-1)
            pooled = (weights[..., None] * features.float()).sum(-2)
            return self.body.get_classifier()(pooled.to(features.dtype)), pooled, weights
        pooled_logits = logits.max(-2).values
        answer = pooled_logits.argmax(-1)  # how much each tile says the photo's answer
        says = logits.gather(-1, answer[:, None, None].expand(*logits.shape[:2], 1))
        weights = says.squeeze(-1).float().softmax(-1)
        return pooled_logits, (weights[..., None] * features.float()).sum(-2), weights

    def forward(self, bags: torch.Tensor) -> torch.Tensor:
        photos, count = bags.shape[:2]
        outputs = self.tiles(bags.flatten(0, 1))
        return self.pool(*(t.unflatten(0, (photos, count)) for t in outputs))[0]
