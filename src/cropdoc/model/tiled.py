"""A tiled bundle on whole photos: the grid of overlapping tiles run a batch at a time (the
memory it takes does not grow with the photo beyond its pixels), pooled as in training.

``TileEncoder`` (tiles -> features, logits, attention scores) and ``BagHead`` (one photo's
tile outputs -> its logits, out-of-scope score and tile weights) are the two halves the
torch runtime runs here and ``export`` writes as two ONNX graphs, so both runtimes pool
the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from cropdoc.contract.bundle import TileMeta
from cropdoc.contract.grid import TILE_BATCH, cut, grid, top_tiles
from cropdoc.model.mil import MILModel
from cropdoc.model.scoring import OutOfScopeScore


class TileEncoder(nn.Module):
    """``forward(tiles) -> (features, logits, scores)`` of ``(n, 3, t, t)`` tiles."""

    def __init__(self, model: MILModel):
        super().__init__()
        self.model = model

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.tiles(tiles)


class BagHead(nn.Module):
    """``forward(features, logits, scores)`` of one photo's ``n`` tiles -> its ``(1,
    classes)`` logits, ``(1,)`` out-of-scope score and ``(n,)`` tile weights."""

    def __init__(self, model: MILModel, ood: OutOfScopeScore):
        super().__init__()
        self.model, self.ood = model, ood

    def forward(self, features, logits, scores):
        pooled_logits, pooled, weights = self.model.pool(features[None], logits[None], scores[None])
        return pooled_logits.float(), self.ood(pooled), weights[0]


def normalise(tiles: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(n, t, t, 3)`` uint8 tiles -> normalised float ``(n, 3, t, t)`` (channels_last)."""
    x = tiles.permute(0, 3, 1, 2).float().div_(255)
    return ((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).contiguous(
        memory_format=torch.channels_last
    )


@torch.no_grad()
def run_tiles(
    encode: Callable[[torch.Tensor], tuple],
    pixels: np.ndarray,
    tiles: TileMeta,
    mean: torch.Tensor,
    std: torch.Tensor,
    bs: int = TILE_BATCH,
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corners ``(n, 2)`` of the grid covering ``pixels`` and the tiles' features, logits
    and scores (float), ``bs`` tiles per call of ``encode`` (on ``mean``'s device)."""
    corners = grid(*pixels.shape[:2], tiles.tile, tiles.overlap)
    buffer = np.zeros((min(bs, len(corners)), tiles.tile, tiles.tile, 3), np.uint8)
    parts = []
    for start in range(0, len(corners), bs):
        chunk = corners[start : start + bs]
        for i, corner in enumerate(chunk):
            cut(pixels, corner, tiles.tile, buffer[i])
        x = normalise(torch.from_numpy(buffer[: len(chunk)]).to(mean.device), mean, std)
        parts.append([t.float() for t in encode(x)])
    return corners, *(torch.cat(outputs) for outputs in zip(*parts, strict=True))


def pool_photo(model: MILModel, pixels: np.ndarray, tiles: TileMeta, mean, std, bs=TILE_BATCH):
    """One whole photo through ``model`` as validation, trust fitting and explanations read
    it: the corners of its tiles, its ``(1, classes)`` logits, ``(1, features)`` pooled
    features and ``(tiles,)`` tile weights."""
    corners, *outputs = run_tiles(model.tiles, pixels, tiles, mean, std, bs)
    logits, pooled, weights = model.pool(*(t[None] for t in outputs))
    return corners, logits, pooled, weights[0]


def tile_scorer(loaded, device: torch.device) -> Callable[[list[np.ndarray]], tuple]:
    """``score(photos) -> (probabilities, ood scores, {"tiles": top tiles})`` of a loaded tiled
    ``(ScoringModel, BundleMeta)``, one photo at a time."""
    scoring, meta = loaded
    encoder = TileEncoder(scoring.model).to(device).eval()
    head = BagHead(scoring.model, scoring.ood).to(device).eval()
    mean = torch.tensor(meta.mean, device=device)
    std = torch.tensor(meta.std, device=device)

    @torch.no_grad()
    def score(photos: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict]:
        probs, ood, tops = [], [], []
        for pixels in photos:
            corners, *outputs = run_tiles(encoder, pixels, meta.tiles, mean, std)
            logits, o, weights = head(*outputs)
            probs.append((logits[0] / meta.trust.temperature).softmax(0).cpu().numpy())
            ood.append(float(o[0]))
            tops.append(top_tiles(corners, weights.cpu().numpy(), meta.tiles.tile))
        return np.stack(probs).astype(np.float64), np.array(ood), {"tiles": tops}

    return score
