"""Learning-rate suggestions from an LR range test, defined as fastai's of the same names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The learning rate in the longest valley of the loss curve.

    The longest strictly decreasing run of losses (as a longest-decreasing-subsequence
    search) is found, and the point two thirds of the way down it is suggested.
    """
    losses = [float(v) for v in losses]
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx])


def slide(
    lrs: Sequence[float],
    losses: Sequence[float],
    lr_diff: int = 15,
    thresh: float = 0.005,
    adjust_value: float = 1.0,
) -> float:
    """The learning rate found by sliding a window of ``lr_diff`` points down from the end
    of the curve until the loss gradients at its two ends differ by at most ``thresh``."""
    loss_grad = np.gradient(np.asarray(losses, dtype=np.float64))
    r_idx = -1
    l_idx = r_idx - lr_diff
    local_min_lr = lrs[l_idx]
    while l_idx >= -len(losses) and abs(loss_grad[r_idx] - loss_grad[l_idx]) > thresh:
        local_min_lr = lrs[l_idx]
        r_idx -= 1
        l_idx -= 1
    return float(local_min_lr) * adjust_value
