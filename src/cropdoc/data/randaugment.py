"""RandAugment and TrivialAugment on whole batches on the training device.

Each photo gets ``n`` operations drawn from the ops below (TrivialAugment: one, with a
magnitude drawn from 0..M). The geometric ones (rotate, shear, translate) become one more
projective matrix in ``augment.transform_batch``, so the photo is still resampled only once;
the colour ones act on the resampled 0..255 pixels, in the drawn order, before the lighting
and the normalisation. The op set is timm's RandAugment's; every magnitude grows with M up to
its maximum at M = 10 (timm's scale): rotate 30 degrees, shear 0.3, translate 45% of the
side, colour, contrast, brightness and sharpness factors 1 +- 0.9, posterize down to 4 bits,
solarize above 128, solarize-add 110.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cropdoc.config import RandAugment

GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
COLOUR = (
    "auto_contrast",
    "equalize",
    "invert",
    "posterize",
    "solarize",
    "solarize_add",
    "colour",
    "contrast",
    "brightness",
    "sharpness",
)
OPS = GEOMETRIC + COLOUR


@dataclass(frozen=True)
class Plan:
    """The ops drawn for a batch: op index, magnitude (0..1 of the maximum) and sign,
    each ``(B, n)``."""

    ops: torch.Tensor
    level: torch.Tensor
    sign: torch.Tensor

    def rows(self, rows: slice) -> Plan:
        """The plan of some of the batch's photos."""
        return Plan(self.ops[rows], self.level[rows], self.sign[rows])


def draw(rand: RandAugment, b: int, generator: torch.Generator | None) -> Plan:
    """The ops, magnitudes and signs of ``b`` photos."""
    ops = torch.randint(len(OPS), (b, rand.n), generator=generator)
    level = torch.full((b, rand.n), rand.m / 10, dtype=torch.float64)
    if rand.trivial:
        level = level * torch.rand(b, rand.n, generator=generator, dtype=torch.float64)
    sign = torch.where(torch.rand(b, rand.n, generator=generator) < 0.5, -1.0, 1.0).double()
    return Plan(ops, level, sign)


def geometry(plan: Plan) -> torch.Tensor:
    """``(B, 3, 3)`` output (-1..1) -> output maps of the plan's geometric ops (identity
    for the others), composed in the drawn order."""
    b, n = plan.ops.shape
    total = torch.eye(3, dtype=torch.float64).repeat(b, 1, 1)
    for j in range(n):
        amount = plan.level[:, j] * plan.sign[:, j]
        op = plan.ops[:, j]
        m = torch.eye(3, dtype=torch.float64).repeat(b, 1, 1)
        angle = torch.deg2rad(30 * amount) * (op == OPS.index("rotate"))
        m[:, 0, 0], m[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
        m[:, 1, 0], m[:, 1, 1] = torch.sin(angle), torch.cos(angle)
        m[:, 0, 1] += 0.3 * amount * (op == OPS.index("shear_x"))
        m[:, 1, 0] += 0.3 * amount * (op == OPS.index("shear_y"))
        # 45% of the side is 0.9 in -1..1 coordinates
        m[:, 0, 2] = 0.9 * amount * (op == OPS.index("translate_x"))
        m[:, 1, 2] = 0.9 * amount * (op == OPS.index("translate_y"))
        total = total @ m
    return total


def colour(x: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Apply the plan's colour ops to ``x`` (``(B, 3, h, w)`` floats in 0..255, the rows of
    the plan), in the drawn order."""
    for j in range(plan.ops.shape[1]):
        for k, name in enumerate(COLOUR, start=len(GEOMETRIC)):
            rows = (plan.ops[:, j] == k).nonzero().flatten()
            if len(rows) == 0:
                continue
            level = plan.level[rows, j].to(x.device, torch.float32).view(-1, 1, 1, 1)
            sign = plan.sign[rows, j].to(x.device, torch.float32).view(-1, 1, 1, 1)
            index = rows.to(x.device)
            x[index] = _COLOUR_OPS[name](x[index], level, sign).clamp_(0, 255)
    return x


def _auto_contrast(x, level, sign):
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    spread = high - low
    stretched = (x - low) * (255 / spread.clamp(min=1e-3))
    return torch.where(spread > 1e-3, stretched, x)


def _equalize(x, level, sign):
    """Histogram equalisation of each channel (256 bins)."""
    b, c, h, w = x.shape
    values = x.round().clamp(0, 255).long().view(b * c, h * w)
    counts = torch.zeros(b * c, 256, device=x.device).scatter_add_(
        1, values, torch.ones_like(values, dtype=torch.float32)
    )
    cdf = counts.cumsum(1)
    first = cdf.gather(1, (counts > 0).float().argmax(1, keepdim=True))  # cdf at the lowest value
    lut = ((cdf - first) * 255 / (h * w - first).clamp(min=1)).clamp(0, 255)
    flat = (h * w - first) <= 0  # one value only: left as it is
    equalised = torch.where(flat, values.float(), lut.gather(1, values))
    return equalised.view(b, c, h, w)


def _posterize(x, level, sign):
    step = 2.0 ** torch.floor(4 * level)  # keep 8 .. 4 bits
    return torch.floor(x / step) * step


def _grey(x):
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def _blend(base, x, factor):
    return base + factor * (x - base)


def _sharpness(x, level, sign):
    kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], device=x.device) / 13
    smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
    return _blend(smooth, x, 1 + 0.9 * level * sign)


_COLOUR_OPS = {
    "auto_contrast": _auto_contrast,
    "equalize": _equalize,
    "invert": lambda x, level, sign: 255 - x,
    "posterize": _posterize,
    "solarize": lambda x, level, sign: torch.where(x >= 256 - 128 * level, 255 - x, x),
    "solarize_add": lambda x, level, sign: torch.where(x < 128, x + 110 * level, x),
    "colour": lambda x, level, sign: _blend(_grey(x), x, 1 + 0.9 * level * sign),
    "contrast": lambda x, level, sign: _blend(
        _grey(x).mean(dim=(1, 2, 3), keepdim=True), x, 1 + 0.9 * level * sign
    ),
    "brightness": lambda x, level, sign: x * (1 + 0.9 * level * sign),
    "sharpness": _sharpness,
}
