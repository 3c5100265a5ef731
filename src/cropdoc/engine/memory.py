"""``--bs auto``: the largest batch that fits the device's memory, found by a short probe
that halves the batch on out-of-memory.

On a GPU the probe runs real training steps and out-of-memory is the GPU's own. On the CPU
(where running out of memory means swapping, not an error) the probe counts what a forward
pass keeps for the backward pass on the meta device, without allocating anything, and
compares it with a limit: half the available memory, or ``$CROPDOC_MEMORY_LIMIT_MB``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from cropdoc.core.errors import UserError

MAX_AUTO_BS = 512


def memory_limit() -> int | None:
    """Bytes a CPU training step may use: ``$CROPDOC_MEMORY_LIMIT_MB``, else half of the
    memory available now (None when unknown)."""
    if os.environ.get("CROPDOC_MEMORY_LIMIT_MB"):
        return int(float(os.environ["CROPDOC_MEMORY_LIMIT_MB"]) * 2**20)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024 // 2
    except (OSError, KeyError, ValueError):
        return None


def activation_bytes(
    make_model: Callable[[], torch.nn.Module], bs: int, size: tuple[int, int]
) -> tuple[int, int]:
    """What a training step of ``bs`` images keeps, counted on the meta device: the bytes of
    the tensors the forward pass saves for the backward (not the weights themselves), and
    the bytes of the weights."""
    with torch.device("meta"):
        model = make_model().train()
        weights = {id(p) for p in model.parameters()}
        saved = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            if id(tensor) not in weights:
                saved += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(torch.empty(bs, 3, *size))
    return saved, sum(p.numel() * p.element_size() for p in model.parameters())


def step_bytes(make_model: Callable[[], torch.nn.Module], bs: int, size: tuple[int, int]) -> int:
    """Bytes one training step of ``bs`` images needs: the saved activations plus weights,
    gradients and AdamW's two moments."""
    saved, weights = activation_bytes(make_model, bs, size)
    return saved + 4 * weights


def find_batch_size(fits: Callable[[int], None], start: int) -> tuple[int, list[int]]:
    """The first of ``start``, ``start / 2``, ... for which ``fits(bs)`` does not raise
    out-of-memory; returns it and the sizes that did not fit."""
    too_big = []
    bs = start
    while bs >= 1:
        try:
            fits(bs)
            return bs, too_big
        except torch.OutOfMemoryError:
            too_big.append(bs)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            bs //= 2
    raise UserError(
        "not even a batch of 1 fits in memory: use --grad-checkpointing or a smaller --size"
    )


def first_batch_size(images: int) -> int:
    """Where the probe starts: the largest power of two up to ``MAX_AUTO_BS`` and the
    number of training images."""
    bs = 1
    while bs * 2 <= min(MAX_AUTO_BS, images):
        bs *= 2
    return bs
