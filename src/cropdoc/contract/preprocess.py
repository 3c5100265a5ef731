"""The numpy preprocessing every exported runtime shares (ONNX, OpenVINO, LiteRT, and
export's int8 calibration): a photo or its tiles as the model's float32 input. It mirrors
the PyTorch path's validation transform exactly (whole-factor average pooling, then
bilinear sampling at the output pixel centres, by the same squish, crop or pad mapping), so
every runtime sees the same inputs."""

from __future__ import annotations

import numpy as np

from cropdoc.contract.bundle import BundleMeta
from cropdoc.contract.grid import cut


def tile_inputs(pixels: np.ndarray, corners: np.ndarray, meta: BundleMeta) -> np.ndarray:
    """The ``(n, 3, t, t)`` float32 inputs of the tiles at ``corners`` of ``pixels``."""
    tile = meta.tiles.tile
    batch = np.zeros((len(corners), tile, tile, 3), np.uint8)
    for i, corner in enumerate(corners):
        cut(pixels, corner, tile, batch[i])
    mean, std = np.asarray(meta.mean, np.float32), np.asarray(meta.std, np.float32)
    x = (batch.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess(pixels: np.ndarray, meta: BundleMeta, view=None) -> np.ndarray:
    """One ``(H, W, 3)`` uint8 image -> the ``(3, h, w)`` float32 input the model expects;
    ``view`` is a test-time view's map (``contract.views.view_map``), None for the plain one."""
    out_h, out_w = meta.size
    h, w = pixels.shape[:2]
    x = pixels.astype(np.float32)
    k = int(min(h / out_h, w / out_w))
    if k >= 2:
        x = _average_pool(x, k)
        h, w = h / k, w / k
    fx, fy = _fractions(meta, h, w, *_output_coordinates(out_h, out_w, view))
    zeros = meta.resize == "pad"
    rows = _interpolate(x, fy * h - 0.5, axis=0, zeros=zeros)
    x = _interpolate(rows, fx * w - 0.5, axis=1, zeros=zeros)
    mean, std = np.asarray(meta.mean, np.float32), np.asarray(meta.std, np.float32)
    x = (x / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _average_pool(x: np.ndarray, k: int) -> np.ndarray:
    """k x k means; the last, partial windows average only the pixels they hold."""
    h, w = x.shape[:2]
    ph, pw = -(-h // k) * k, -(-w // k) * k
    padded = np.zeros((ph, pw, 3), np.float32)
    padded[:h, :w] = x
    counts = np.zeros((ph, pw), np.float32)
    counts[:h, :w] = 1
    sums = padded.reshape(ph // k, k, pw // k, k, 3).sum(axis=(1, 3))
    n = counts.reshape(ph // k, k, pw // k, k).sum(axis=(1, 3))
    return sums / n[..., None]


def _output_coordinates(out_h: int, out_w: int, view) -> tuple[np.ndarray, np.ndarray]:
    """Where each output column and row falls in the item box, as fractions (0..1)."""
    ux = (np.arange(out_w, dtype=np.float64) + 0.5) / out_w
    uy = (np.arange(out_h, dtype=np.float64) + 0.5) / out_h
    if view is not None:
        ax, cx, ay, cy = view
        ux = (ax * (2 * ux - 1) + cx + 1) / 2
        uy = (ay * (2 * uy - 1) + cy + 1) / 2
    return ux, uy


def _fractions(meta: BundleMeta, h: float, w: float, ux: np.ndarray, uy: np.ndarray):
    """Where item-box fractions ``ux``, ``uy`` fall in the source, as fractions (0..1)."""
    method = meta.resize
    if method == "squish":
        return ux, uy
    item_h, item_w = meta.item_size
    item_aspect, source_aspect = item_w / item_h, w / h
    wider = source_aspect > item_aspect
    if method == "crop":
        share_x = item_aspect / source_aspect if wider else 1.0
        share_y = 1.0 if wider else source_aspect / item_aspect
        return 0.5 * (1 - share_x) + ux * share_x, 0.5 * (1 - share_y) + uy * share_y
    scale_x = 1.0 if wider else item_aspect / source_aspect
    scale_y = source_aspect / item_aspect if wider else 1.0
    return (ux - 0.5) * scale_x + 0.5, (uy - 0.5) * scale_y + 0.5


def _interpolate(x: np.ndarray, coords: np.ndarray, axis: int, zeros: bool) -> np.ndarray:
    """Linear interpolation along ``axis`` at pixel ``coords``, with grid_sample's borders:
    reflection then clamping, or zeros outside."""
    n = x.shape[axis]
    if not zeros:
        coords = _reflect(coords, n)
        coords = np.clip(coords, 0, n - 1)
    low = np.floor(coords).astype(np.int64)
    frac = (coords - low).astype(np.float32)
    result = 0
    for index, weight in ((low, 1 - frac), (low + 1, frac)):
        inside = (index >= 0) & (index < n)
        taken = np.take(x, np.clip(index, 0, n - 1), axis=axis)
        shape = [1, 1, 1]
        shape[axis] = -1
        result = result + taken * (weight * inside).reshape(shape)
    return result


def _reflect(coords: np.ndarray, n: int) -> np.ndarray:
    """Reflect coordinates at the pixel edges -0.5 and n - 0.5 (align_corners=False)."""
    shifted = np.abs(coords + 0.5)
    flips = np.floor(shifted / n)
    extra = np.fmod(shifted, n)
    return np.where(flips % 2 == 0, extra - 0.5, n - extra - 0.5)
