"""Item resize and augmentation of whole batches on the training device, in one resampling.

For every output pixel we compute where it comes from: the augmentation (random resized
crop, flip, rotation, zoom, perspective warp, in the spirit of fastai's
``aug_transforms(size, min_scale=0.75)``) maps it into the item box, the item resize
(squish, crop or pad) maps the item box onto the source image; all of it is one 3x3
projective matrix per image, and one ``grid_sample`` reads the source. Brightness and
contrast are then folded with the normalisation into one multiply-add. Images of a batch
may differ in size: they sit in the top-left corner of a common canvas and each one's own
size is used. ``--rand-augment`` (``randaugment.py``) adds its geometric ops to the matrix
and its colour ops before the lighting. Validation batches get only the resize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cropdoc.config import RandAugment
from cropdoc.data import randaugment

CPU_CHUNK = 16


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
    rand: RandAugment | None = None  # RandAugment / TrivialAugment (training)


def transform_batch(
    canvas: torch.Tensor,
    sizes: torch.Tensor,
    aug: Augment,
    train: bool,
    mean: torch.Tensor,
    std: torch.Tensor,
    generator: torch.Generator | None = None,
    view: tuple[float, float, float, float] | None = None,
) -> torch.Tensor:
    """Turn uint8 ``(B, H, W, 3)`` canvases into normalised float ``(B, 3, h, w)`` inputs
    (NCHW; a channels_last model converts them in its first layer).

    Args:
        canvas: the images, each in the top-left corner, on the target device.
        sizes: ``(B, 2)`` heights and widths of the images inside the canvas.
        train: augment (random) or only resize (deterministic).
        mean, std: per-channel normalisation in 0..1 units, shape ``(3,)``.
        generator: CPU generator for the random parameters (reproducible batches).
        view: a fixed map ``(ax, cx, ay, cy)`` of output coordinates (-1..1) into the item
            box, ``x' = ax * x + cx`` and ``y' = ay * y + cy``: a test-time view.
    """
    device = canvas.device
    b, height, width = canvas.shape[:3]
    out_h, out_w = aug.size
    sizes = sizes.to(torch.float64).cpu()
    # shrink by whole factors first so the bilinear read below does not alias
    k = int(min(sizes[:, 0].min().item() / out_h, sizes[:, 1].min().item() / out_w))
    if k >= 2:
        sizes = sizes / k
        height, width = -(-height // k), -(-width // k)
    # one projective map per image: output pixel -> item box -> source -> canvas
    matrix = _to_canvas(sizes, height, width) @ _item_to_source(sizes, aug, train, generator)
    plan = randaugment.draw(aug.rand, b, generator) if train and aug.rand else None
    if train:
        matrix = matrix @ _augment(aug, b, generator)
    if plan is not None:
        matrix = matrix @ randaugment.geometry(plan)
    if view is not None:
        ax, cx, ay, cy = view
        matrix = matrix @ _affine(b, a=ax, c=cx, e=ay, f=cy)
    grid = _grid(matrix.to(device, torch.float32), out_h, out_w)
    scale, shift = _lighting(aug, b, train, generator)
    scale = (scale.to(device).view(b, 1) / (255.0 * std.view(1, 3))).view(b, 3, 1, 1)
    shift = ((shift.to(device).view(b, 1) - mean.view(1, 3)) / std.view(1, 3)).view(b, 3, 1, 1)
    low, high = (-mean / std).view(1, 3, 1, 1), ((1 - mean) / std).view(1, 3, 1, 1)
    padding = "zeros" if aug.resize == "pad" else "reflection"
    out = torch.empty(b, 3, out_h, out_w, device=device)
    # on the CPU, a few images at a time keep the float copy in cache (about 2.5x faster)
    step = b if device.type == "cuda" else CPU_CHUNK
    for i in range(0, b, step):
        x = canvas[i : i + step].permute(0, 3, 1, 2).float()
        if k >= 2:
            x = F.avg_pool2d(x, k, ceil_mode=True)
        x = F.grid_sample(
            x, grid[i : i + step], mode="bilinear", padding_mode=padding, align_corners=False
        )
        if plan is not None:
            x = randaugment.colour(x, plan.rows(slice(i, i + step)))
        torch.addcmul(shift[i : i + step], x, scale[i : i + step], out=out[i : i + step])
        if train and aug.max_lighting > 0:  # brightness can push pixels out of 0..1
            out[i : i + step].clamp_(low, high)
    return out


def _grid(matrix: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """grid_sample's ``(B, h, w, 2)`` grid: each output pixel centre (-1..1) through its
    image's projective ``matrix``. Rows and columns are combined by broadcasting."""
    ys = (torch.arange(h, device=matrix.device, dtype=torch.float32) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=matrix.device, dtype=torch.float32) * 2 + 1) / w - 1

    def row(r: int) -> torch.Tensor:
        m = matrix[:, r, :, None, None]  # (B, 3, 1, 1)
        return m[:, 0] * xs.view(1, 1, w) + (m[:, 1] * ys.view(1, h, 1) + m[:, 2])

    x, y, z = row(0), row(1), row(2)
    grid = torch.empty(matrix.shape[0], h, w, 2, device=matrix.device)
    torch.div(x, z, out=grid[..., 0])
    torch.div(y, z, out=grid[..., 1])
    return grid


def _uniform(generator, b: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(b, generator=generator, dtype=torch.float64) * (high - low) + low


def _chance(generator, b: int, p: float) -> torch.Tensor:
    return (torch.rand(b, generator=generator, dtype=torch.float64) < p).double()


def _affine(b: int, a=1.0, bb=0.0, c=0.0, d=0.0, e=1.0, f=0.0) -> torch.Tensor:
    """``(B, 3, 3)`` matrices [[a, bb, c], [d, e, f], [0, 0, 1]] (each entry scalar or (B,))."""
    m = torch.zeros(b, 3, 3, dtype=torch.float64)
    for (i, j), v in {(0, 0): a, (0, 1): bb, (0, 2): c, (1, 0): d, (1, 1): e, (1, 2): f}.items():
        m[:, i, j] = v
    m[:, 2, 2] = 1
    return m


def _augment(aug: Augment, b: int, generator) -> torch.Tensor:
    """Output (-1..1) -> item box (-1..1): random resized crop, flip, rotation, zoom and
    perspective warp, as one projective matrix per image."""
    # random resized crop: area share in [min_scale, 1], aspect ratio in [3/4, 4/3]
    area = _uniform(generator, b, aug.min_scale, 1.0)
    log_ratio = _uniform(generator, b, math.log(3 / 4), math.log(4 / 3))
    crop_w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    crop_h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    centre_x = _uniform(generator, b, -1.0, 1.0) * (1 - crop_w)
    centre_y = _uniform(generator, b, -1.0, 1.0) * (1 - crop_h)
    # flip, rotation, zoom and warp, applied together with probability p_affine
    apply = _chance(generator, b, aug.p_affine)
    flip = torch.where(_chance(generator, b, 0.5 if aug.flip else 0.0) > 0, -1.0, 1.0)
    angle = torch.deg2rad(_uniform(generator, b, -aug.max_rotate, aug.max_rotate)) * apply
    zoom = 1 + (_uniform(generator, b, 1.0, aug.max_zoom) - 1) * apply
    warp_x = _uniform(generator, b, -aug.max_warp, aug.max_warp) * apply
    warp_y = _uniform(generator, b, -aug.max_warp, aug.max_warp) * apply
    crop = _affine(b, a=crop_w, c=centre_x, e=crop_h, f=centre_y)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    turn = _affine(b, a=cos * flip, bb=-sin * flip, d=sin, e=cos)
    warp = _affine(b)
    warp[:, 2, 0], warp[:, 2, 1] = 0.5 * warp_x, 0.5 * warp_y
    return crop @ turn @ warp


def _item_to_source(sizes, aug: Augment, train: bool, generator) -> torch.Tensor:
    """Item box (-1..1) -> fractions (0..1) of each source image, by the resize method."""
    b = sizes.shape[0]
    half = _affine(b, a=0.5, c=0.5, e=0.5, f=0.5)  # -1..1 -> 0..1
    if aug.resize == "squish":
        return half
    item_aspect = aug.item_size[1] / aug.item_size[0]
    source_aspect = sizes[:, 1] / sizes[:, 0]
    wider = source_aspect > item_aspect
    ones = torch.ones(b, dtype=torch.float64)
    if aug.resize == "crop":
        # keep the item's aspect: a window of the source, random in training, else central
        share_x = torch.where(wider, item_aspect / source_aspect, ones)
        share_y = torch.where(wider, ones, source_aspect / item_aspect)
        where = (
            torch.rand(b, 2, generator=generator, dtype=torch.float64)
            if train
            else torch.full((b, 2), 0.5, dtype=torch.float64)
        )
        window = _affine(
            b, a=share_x, c=where[:, 0] * (1 - share_x), e=share_y, f=where[:, 1] * (1 - share_y)
        )
        return window @ half
    # pad: the whole source fits in the item box, centred, with black bars
    scale_x = torch.where(wider, ones, item_aspect / source_aspect)
    scale_y = torch.where(wider, source_aspect / item_aspect, ones)
    bars = _affine(b, a=scale_x, c=0.5 - 0.5 * scale_x, e=scale_y, f=0.5 - 0.5 * scale_y)
    return bars @ half


def _to_canvas(sizes, height: int, width: int) -> torch.Tensor:
    """Source fractions (0..1) -> grid_sample's canvas coordinates (-1..1)."""
    b = sizes.shape[0]
    return _affine(b, a=2 * sizes[:, 1] / width, c=-1.0, e=2 * sizes[:, 0] / height, f=-1.0)


def _lighting(aug: Augment, b: int, train: bool, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image contrast (scale) and brightness (shift) of 0..1 pixels, as
    ``x * scale + shift`` around mid-grey; identity when not training."""
    if not train or aug.max_lighting <= 0:
        return torch.ones(b), torch.zeros(b)
    m = aug.max_lighting
    brightness = _uniform(generator, b, -m, m) * _chance(generator, b, aug.p_lighting)
    log_c = _uniform(generator, b, math.log(1 - m), -math.log(1 - m))
    contrast = torch.exp(log_c * _chance(generator, b, aug.p_lighting))
    return contrast.float(), (0.5 - 0.5 * contrast + brightness).float()
