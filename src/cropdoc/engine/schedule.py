"""fastai's one-cycle schedule (cosine warm-up to ``lr_max``, then cosine annealing) and
the phases of ``fine_tune``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cropdoc.config import TrainConfig


def cos_anneal(start: float, end: float, pos: float) -> float:
    """Cosine from ``start`` (pos 0) to ``end`` (pos 1)."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def combined_cos(pos: float, pct: float, start: float, middle: float, end: float) -> float:
    """``start`` -> ``middle`` over the first ``pct`` of training, then -> ``end``."""
    if pos < pct:
        return cos_anneal(start, middle, pos / pct)
    return cos_anneal(middle, end, (pos - pct) / (1 - pct))


def one_cycle_lr(
    pos: float, lr_max: float, pct_start: float = 0.25, div: float = 25.0, div_final: float = 1e5
) -> float:
    """The learning rate at ``pos`` (0..1) of a one-cycle run."""
    return combined_cos(pos, pct_start, lr_max / div, lr_max, lr_max / div_final)


def one_cycle_momentum(pos: float, pct_start: float = 0.25) -> float:
    """Adam's beta1 at ``pos``: 0.95 -> 0.85 -> 0.95."""
    return combined_cos(pos, pct_start, 0.95, 0.85, 0.95)


@dataclass
class Phase:
    """A stretch of one-cycle training: its epochs, learning rates per group, and freezing."""

    name: str
    epochs: int
    lrs: tuple[float, float]  # (body, head): builders.BODY, builders.HEAD
    pct_start: float
    div: float
    frozen: bool


def phases(config: TrainConfig, lr: float) -> list[Phase]:
    """fastai's fine_tune (or a single one-cycle run from scratch) as phases: the head at
    ``lr`` with the body frozen, then everything with the head at ``lr / 2`` and the body
    at ``config.body_lr`` times that (fastai's ``slice(lr / 200, lr / 2)`` is 0.01)."""
    if config.from_scratch:
        return [Phase("train", config.epochs, (lr, lr), 0.25, 25.0, False)]
    frozen = [Phase("frozen", config.freeze_epochs, (lr / 10, lr), 0.99, 25.0, True)]
    half = lr / 2
    unfrozen = Phase("unfrozen", config.epochs, (half * config.body_lr, half), 0.3, 5.0, False)
    return ([*frozen] if config.freeze_epochs else []) + [unfrozen]
