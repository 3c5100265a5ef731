"""Regularisers of a training step, on the training device as the augmentation is: mixup and
cutmix (a batch mixed with a shuffled copy of itself), random erasing, label smoothing and
class weights; ``ema.py`` keeps the moving average of the weights.

Mixing draws from a generator seeded by the run's seed, the epoch and the step, so a resumed
epoch mixes as the interrupted one did. It works on any input shape (``(B, 3, H, W)``
photos or ``(B, tiles, 3, H, W)`` bags: a bag is mixed whole, cutmix cuts the same box
from each of its tiles). The loss of a mixed batch is ``lam * loss(y) + (1 - lam) *
loss(y[perm])``: for cross-entropy exactly the loss of the soft label ``lam * y + (1 -
lam) * y[perm]``; a multi-target run's regression values are mixed linearly instead.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cropdoc.core.errors import UserError

WEIGHTINGS = ("auto", "inverse")


@dataclass(frozen=True)
class Mixed:
    """How a batch was mixed: each row took ``1 - lam`` of row ``perm[i]``."""

    perm: torch.Tensor
    lam: float


def mix(
    inputs: torch.Tensor,
    generator: torch.Generator,
    mixup: float,
    cutmix: float,
    prob: float = 1.0,
) -> tuple[torch.Tensor, Mixed | None]:
    """Mixup (``lam ~ Beta(mixup, mixup)``) or cutmix (a box of ``1 - lam`` of the area,
    ``lam ~ Beta(cutmix, cutmix)``), half the time each when both are on, with probability
    ``prob`` a batch; ``(inputs, None)`` when the batch stays as it is."""
    if not (mixup or cutmix) or len(inputs) < 2:
        return inputs, None
    if torch.rand((), generator=generator).item() >= prob:
        return inputs, None
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand((), generator=generator).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(
        np.random.default_rng(int(torch.randint(2**31, (), generator=generator))).beta(alpha, alpha)
    )
    perm = torch.randperm(len(inputs), generator=generator).to(inputs.device)
    if not use_cutmix:
        return inputs * lam + inputs[perm] * (1 - lam), Mixed(perm, lam)
    height, width = inputs.shape[-2:]
    (y0, y1, x0, x1) = _box(height, width, lam, generator)
    mixed = inputs.clone()
    mixed[..., y0:y1, x0:x1] = inputs[perm][..., y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (height * width)  # the area the box really took
    return mixed, Mixed(perm, lam)


def _box(height: int, width: int, lam: float, generator) -> tuple[int, int, int, int]:
    """A box of about ``1 - lam`` of the image, centred at random, clipped to it."""
    side = math.sqrt(1 - lam)
    h, w = int(height * side), int(width * side)
    cy = int(torch.randint(height, (), generator=generator))
    cx = int(torch.randint(width, (), generator=generator))
    y0, y1 = max(cy - h // 2, 0), min(cy + h - h // 2, height)
    x0, x1 = max(cx - w // 2, 0), min(cx + w - w // 2, width)
    return y0, y1, x0, x1


def erase(inputs: torch.Tensor, generator: torch.Generator, prob: float) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020): with probability ``prob`` an image (a tile of a
    bag) gets a box of 2-33% of its area, aspect 0.3-3.3, filled with normal noise."""
    if prob <= 0:
        return inputs
    flat = inputs.reshape(-1, *inputs.shape[-3:]).clone()
    height, width = flat.shape[-2:]
    for image in flat:
        if torch.rand((), generator=generator).item() >= prob:
            continue
        area = height * width * (0.02 + 0.31 * torch.rand((), generator=generator).item())
        aspect = math.exp(math.log(0.3) + math.log(11.0) * torch.rand((), generator=generator))
        h = min(height, max(1, int(round(math.sqrt(area * aspect)))))
        w = min(width, max(1, int(round(math.sqrt(area / aspect)))))
        y = int(torch.randint(height - h + 1, (), generator=generator))
        x = int(torch.randint(width - w + 1, (), generator=generator))
        noise = torch.randn((flat.shape[1], h, w), generator=generator)
        image[:, y : y + h, x : x + w] = noise.to(image.device, image.dtype)
    return flat.reshape(inputs.shape)


def class_weights(text: str, labels: np.ndarray, classes: list[str]) -> torch.Tensor | None:
    """``--class-weights``: ``inverse`` (each class weighs the inverse of its share of the
    training photos), ``auto`` (the square root of that: the minority helped, the majority
    not drowned) or a CSV of ``class,weight``; normalised so the photos' mean weight is 1.
    None when ``text`` is empty."""
    if not text:
        return None
    counts = np.bincount(labels, minlength=len(classes)).astype(float)
    if text in WEIGHTINGS:
        raw = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
        raw = np.sqrt(raw) if text == "auto" else raw
    else:
        raw = _weights_file(Path(text), classes)
    mean = (raw * counts).sum() / max(counts.sum(), 1)
    return torch.tensor(raw / mean if mean > 0 else raw, dtype=torch.float32)


def _weights_file(path: Path, classes: list[str]) -> np.ndarray:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = {r["class"].strip(): r["weight"] for r in csv.DictReader(f)}
    except FileNotFoundError:
        raise UserError(
            f"--class-weights {path}: give auto, inverse or a CSV of class,weight"
        ) from None
    except (KeyError, AttributeError, csv.Error, UnicodeDecodeError):
        raise UserError(f"--class-weights {path} must be a CSV with columns class,weight") from None
    unknown = sorted(set(rows) - set(classes))
    missing = [c for c in classes if c not in rows]
    if unknown or missing:
        raise UserError(
            f"--class-weights {path}: unknown {', '.join(unknown) or 'none'}; "
            f"missing {', '.join(missing) or 'none'}"
        )
    try:
        weights = np.array([float(rows[c]) for c in classes])
    except ValueError:
        raise UserError(f"--class-weights {path}: every weight must be a number") from None
    if not np.all(np.isfinite(weights)) or (weights < 0).any():
        raise UserError(f"--class-weights {path}: weights must be finite and 0 or more")
    return weights
