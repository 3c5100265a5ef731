"""fastai's one-cycle schedule: cosine warm-up to ``lr_max``, then cosine annealing."""

from __future__ import annotations

import math


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
