"""Where tiles go: the grid that covers a whole photo with overlapping tiles (SAHI's
slicing), random tiles for training, and cutting a tile out of a photo."""

from __future__ import annotations

import numpy as np

TILE_BATCH = 16  # tiles per model call when scoring a photo


def starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles along one side of ``length`` pixels: neighbours share at least
    ``overlap`` of a tile, and the last tile ends at the edge (a side shorter than a tile
    gets one tile at 0, padded)."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    return [*range(0, length - tile, stride), length - tile]


def grid(height: int, width: int, tile: int, overlap: float) -> np.ndarray:
    """``(tiles, 2)`` top-left corners ``(y, x)`` of the tiles covering a photo, row by row."""
    ys, xs = starts(height, tile, overlap), starts(width, tile, overlap)
    return np.array([(y, x) for y in ys for x in xs], dtype=np.int64)


def random_corners(height: int, width: int, tile: int, count: int, rng) -> np.ndarray:
    """``(count, 2)`` top-left corners of tiles placed uniformly at random inside a photo."""
    y = rng.integers(0, max(0, height - tile) + 1, count)
    x = rng.integers(0, max(0, width - tile) + 1, count)
    return np.stack([y, x], axis=1)


def cut(pixels: np.ndarray, corner, tile: int, out: np.ndarray | None = None) -> np.ndarray:
    """The ``(tile, tile, 3)`` uint8 tile at ``corner`` (y, x) of ``pixels``; where the photo
    is smaller than the tile the rest is zero. Written into ``out`` when given."""
    y, x = int(corner[0]), int(corner[1])
    piece = pixels[y : y + tile, x : x + tile]
    if out is None:
        out = np.zeros((tile, tile, 3), np.uint8)
    else:
        out[...] = 0
    out[: piece.shape[0], : piece.shape[1]] = piece
    return out


def top_tiles(corners: np.ndarray, weights: np.ndarray, tile: int, k: int = 3) -> list[dict]:
    """The ``k`` tiles that weigh most in a photo's answer: box ``[x, y, width, height]``
    in the photo's pixels and weight."""
    order = np.argsort(-weights)[:k]
    return [
        {
            "box": [int(corners[i][1]), int(corners[i][0]), tile, tile],
            "weight": round(float(weights[i]), 4),
        }
        for i in order
    ]
