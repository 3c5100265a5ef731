"""The learning-rate range test (fastai's ``lr_find``), leaving model and optimizer as found."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cropdoc.core.errors import UserError


@dataclass
class LRFindResult:
    """Recorded learning rates and smoothed losses, and the two suggestions."""

    lrs: list[float]
    losses: list[float]
    valley: float
    slide: float

    def summary(self) -> dict:
        return {"valley": self.valley, "slide": self.slide, "steps": len(self.lrs)}


def range_test(
    step: Callable[[torch.Tensor, torch.Tensor], float],
    optimizer: torch.optim.Optimizer,
    model: torch.nn.Module,
    batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]],
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
) -> LRFindResult:
    """Train with an exponentially growing learning rate, then put everything back.

    Args:
        step: one optimisation step on a batch; returns the loss.
        batches: ``batches(epoch)`` iterates one epoch of training batches.
        start_lr, end_lr, num_it: the range and the number of steps; stops early when the
            smoothed loss exceeds four times its best (or is not finite).
    """
    saved_model = copy.deepcopy(model.state_dict())
    saved_optim = copy.deepcopy(optimizer.state_dict())
    saved_rng = torch.get_rng_state()
    saved_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    lrs, losses = [], []
    smooth, best, beta = 0.0, math.inf, 0.98
    try:
        epoch = 0
        while len(lrs) < num_it:
            for inputs, targets in batches(epoch):
                lr = start_lr * (end_lr / start_lr) ** (len(lrs) / num_it)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = step(inputs, targets)
                smooth = smooth * beta + (1 - beta) * loss
                value = smooth / (1 - beta ** (len(lrs) + 1))
                lrs.append(lr)
                losses.append(value)
                best = min(best, value)
                if not math.isfinite(value) or value > 4 * best or len(lrs) >= num_it:
                    break
            else:
                epoch += 1
                continue
            break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optim)
        torch.set_rng_state(saved_rng)
        if saved_cuda is not None:
            torch.cuda.set_rng_state_all(saved_cuda)
    return suggestions(lrs, losses, num_it)


def suggestions(lrs: list[float], losses: list[float], num_it: int = 100) -> LRFindResult:
    """Trim the curve as fastai does (drop the first tenth, the last five points and
    anything from the first NaN) and compute ``valley`` and ``slide``."""
    trimmed_lrs, trimmed = lrs[num_it // 10 : -5], losses[num_it // 10 : -5]
    for i, value in enumerate(trimmed):
        if math.isnan(value):
            trimmed_lrs, trimmed = trimmed_lrs[:i], trimmed[:i]
            break
    if len(trimmed) < 17:
        raise UserError(
            f"the loss diverged after {len(lrs)} steps, too early for a suggestion: "
            "check the data, or give --lr yourself"
        )
    return LRFindResult(lrs, losses, valley(trimmed_lrs, trimmed), slide(trimmed_lrs, trimmed))


def plot(result: LRFindResult, path) -> None:
    """Loss against learning rate (log scale) with both suggestions marked."""
    from cropdoc.core.plots import png_figure

    with png_figure(path) as ax:
        ax.plot(result.lrs, result.losses)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        for name, lr, colour in (("valley", result.valley, "C1"), ("slide", result.slide, "C2")):
            index = min(
                range(len(result.lrs)), key=lambda i, lr=lr: abs(math.log(result.lrs[i] / lr))
            )
            ax.plot([lr], [result.losses[index]], "o", color=colour, label=f"{name}: {lr:.2e}")
        ax.legend()


# -- suggestions, defined as fastai's of the same names ---------------------------------


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
