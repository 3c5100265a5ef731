"""Training bags: random tiles of each photo at native resolution, augmented as tiles."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from cropdoc.contract.grid import cut, random_corners
from cropdoc.data.loader import Batches


class TileBatches(Batches):
    """``Batches`` of bags: each photo gives ``count`` tiles of ``tile`` pixels placed at
    random (by seed, epoch and batch, so a resumed epoch sees the same tiles); yields
    ``(photos, count, 3, tile, tile)`` inputs and the photos' targets."""

    def __init__(self, *args, tile: int, count: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.tile, self.count = tile, count
        self._epoch = 0

    def epoch(self, epoch: int = 0, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._epoch = epoch
        for inputs, targets in super().epoch(epoch, skip):
            yield inputs.unflatten(0, (len(targets), self.count)), targets

    def _canvas(self, batch: np.ndarray, pin: bool) -> tuple:
        rng = np.random.default_rng([self.seed, self._epoch, *map(int, batch[:2]), len(batch)])
        tiles = torch.zeros(
            (len(batch) * self.count, self.tile, self.tile, 3), dtype=torch.uint8, pin_memory=pin
        )
        view = tiles.numpy()
        for row, index in enumerate(batch):
            pixels = self.cache.pixels(int(index))
            corners = random_corners(*pixels.shape[:2], self.tile, self.count, rng)
            for j, corner in enumerate(corners):
                cut(pixels, corner, self.tile, view[row * self.count + j])
        sizes = torch.full((len(tiles), 2), self.tile)
        targets = torch.as_tensor(self.targets[batch], dtype=torch.long)
        return tiles, sizes, targets
