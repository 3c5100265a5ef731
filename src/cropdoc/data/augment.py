"""Item resize and augmentation of whole batches on the training device, in one resampling.

For every output pixel we compute where it comes from: the augmentation (random resized
crop, flip, rotation, zoom, perspective warp, in the spirit of fastai's
``aug_transforms(size, min_scale=0.75)``) maps it into the item box, the item resize
(squish, crop or pad) maps the item box onto the source image, and one ``grid_sample``
reads the source. Images of a batch may differ in size: they sit in the top-left corner of
a common canvas and each one's own size is used. Validation batches get only the resize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    """What to do to a batch: sizes, resize method and augmentation strengths."""

    size: tuple[int, int]  # output (height, width)
    item_size: tuple[int, int]  # the item box (height, width) whose aspect the resize keeps
    resize: str = "squish"
    min_scale: float = 0.75
    flip: bool = True
    max_rotate: float = 10.0
    max_zoom: float = 1.1
    max_warp: float = 0.2
    max_lighting: float = 0.2
    p_affine: float = 0.75
    p_lighting: float = 0.75


def transform_batch(
    canvas: torch.Tensor,
    sizes: torch.Tensor,
    aug: Augment,
    train: bool,
    mean: torch.Tensor,
    std: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Turn uint8 ``(B, H, W, 3)`` canvases into normalised float ``(B, 3, h, w)`` inputs.

    Args:
        canvas: the images, each in the top-left corner, on the target device.
        sizes: ``(B, 2)`` heights and widths of the images inside the canvas.
        train: augment (random) or only resize (deterministic).
        mean, std: per-channel normalisation in 0..1 units, shape ``(3,)``.
        generator: CPU generator for the random parameters (reproducible batches).
    """
    device = canvas.device
    b, height, width = canvas.shape[:3]
    out_h, out_w = aug.size
    x = canvas.permute(0, 3, 1, 2).float()
    sizes = sizes.to(device=device, dtype=torch.float32)
    # shrink by whole factors first so the bilinear read below does not alias
    k = int(min(sizes[:, 0].min().item() / out_h, sizes[:, 1].min().item() / out_w))
    if k >= 2:
        x = F.avg_pool2d(x, k, ceil_mode=True)
        sizes = sizes / k
        height, width = x.shape[2], x.shape[3]
    grid = _output_grid(b, out_h, out_w, device)
    if train:
        grid = _augment_grid(grid, aug, b, generator, device)
    source = _item_to_source(grid, sizes, aug, train, generator)
    grid = torch.stack(
        [
            2 * source[..., 0] * sizes[:, 1, None, None] / width - 1,
            2 * source[..., 1] * sizes[:, 0, None, None] / height - 1,
        ],
        dim=-1,
    )
    padding = "zeros" if aug.resize == "pad" else "reflection"
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    x = x / 255.0
    if train and aug.max_lighting > 0:
        x = _lighting(x, aug, generator)
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last)


def _output_grid(b: int, h: int, w: int, device) -> torch.Tensor:
    """Normalised (-1..1) centres of the output pixels, ``(B, h, w, 2)`` as (x, y)."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=device, dtype=torch.float32) * 2 + 1) / w - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    return grid.unsqueeze(0).expand(b, h, w, 2)


def _uniform(generator, b: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(b, generator=generator) * (high - low) + low


def _chance(generator, b: int, p: float) -> torch.Tensor:
    return (torch.rand(b, generator=generator) < p).float()


def _augment_grid(grid, aug: Augment, b: int, generator, device) -> torch.Tensor:
    """Map output pixels into the item box (-1..1) through random crop, flip, rotation,
    zoom and perspective warp."""
    # random resized crop: area share in [min_scale, 1], aspect ratio in [3/4, 4/3]
    area = _uniform(generator, b, aug.min_scale, 1.0)
    log_ratio = _uniform(generator, b, math.log(3 / 4), math.log(4 / 3))
    crop_w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    crop_h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    centre_x = _uniform(generator, b, -1.0, 1.0) * (1 - crop_w)
    centre_y = _uniform(generator, b, -1.0, 1.0) * (1 - crop_h)
    # affine: flip, rotation and zoom, applied together with probability p_affine
    apply = _chance(generator, b, aug.p_affine)
    flip = torch.where(_chance(generator, b, 0.5 if aug.flip else 0.0) > 0, -1.0, 1.0)
    angle = torch.deg2rad(_uniform(generator, b, -aug.max_rotate, aug.max_rotate)) * apply
    zoom = 1 + (_uniform(generator, b, 1.0, aug.max_zoom) - 1) * apply
    warp_x = _uniform(generator, b, -aug.max_warp, aug.max_warp) * apply
    warp_y = _uniform(generator, b, -aug.max_warp, aug.max_warp) * apply
    params = [crop_w, crop_h, centre_x, centre_y, flip, angle, zoom, warp_x, warp_y]
    crop_w, crop_h, centre_x, centre_y, flip, angle, zoom, warp_x, warp_y = (
        p.to(device).view(b, 1, 1) for p in params
    )
    px, py = grid[..., 0], grid[..., 1]
    denominator = 1 + 0.5 * (warp_x * px + warp_y * py)
    px, py = px / denominator, py / denominator
    cos, sin = torch.cos(angle), torch.sin(angle)
    rx = (cos * px - sin * py) * flip / zoom
    ry = (sin * px + cos * py) / zoom
    return torch.stack([centre_x + crop_w * rx, centre_y + crop_h * ry], dim=-1)


def _item_to_source(grid, sizes, aug: Augment, train: bool, generator) -> torch.Tensor:
    """Map item-box coordinates (-1..1) to fractions (0..1) of each source image."""
    u = (grid + 1) / 2
    if aug.resize == "squish":
        return u
    b = grid.shape[0]
    item_aspect = aug.item_size[1] / aug.item_size[0]
    source_aspect = (sizes[:, 1] / sizes[:, 0]).view(b, 1, 1)
    wider = source_aspect > item_aspect
    if aug.resize == "crop":
        # keep the item's aspect: a window of the source, random in training, else central
        share_x = torch.where(wider, item_aspect / source_aspect, torch.ones_like(source_aspect))
        share_y = torch.where(wider, torch.ones_like(source_aspect), source_aspect / item_aspect)
        where = torch.rand(b, 2, generator=generator) if train else torch.full((b, 2), 0.5)
        where = where.to(grid.device)
        sx = where[:, 0].view(b, 1, 1) * (1 - share_x) + u[..., 0] * share_x
        sy = where[:, 1].view(b, 1, 1) * (1 - share_y) + u[..., 1] * share_y
        return torch.stack([sx, sy], dim=-1)
    # pad: the whole source fits in the item box, centred, with black bars
    scale_x = torch.where(wider, torch.ones_like(source_aspect), item_aspect / source_aspect)
    scale_y = torch.where(wider, source_aspect / item_aspect, torch.ones_like(source_aspect))
    sx = (u[..., 0] - 0.5) * scale_x + 0.5
    sy = (u[..., 1] - 0.5) * scale_y + 0.5
    return torch.stack([sx, sy], dim=-1)


def _lighting(x: torch.Tensor, aug: Augment, generator) -> torch.Tensor:
    """Random brightness and contrast in logit space, as fastai's Brightness and Contrast."""
    b = x.shape[0]
    m = aug.max_lighting
    brightness = 0.5 + (_uniform(generator, b, -m, m)) * _chance(generator, b, aug.p_lighting)
    log_c = _uniform(generator, b, math.log(1 - m), -math.log(1 - m))
    contrast = torch.exp(log_c * _chance(generator, b, aug.p_lighting))
    brightness = brightness.to(x.device).view(b, 1, 1, 1)
    contrast = contrast.to(x.device).view(b, 1, 1, 1)
    logit = torch.logit(x.clamp(1e-4, 1 - 1e-4))
    return torch.sigmoid(logit * contrast + torch.logit(brightness))
