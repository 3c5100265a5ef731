"""Validation of a training run: loss, error rate and each other target's metric over every
validation image, once, across processes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cropdoc.engine import distributed
from cropdoc.model import multihead


@torch.no_grad()
def validate(trainer) -> dict:
    """Valid loss, error rate and accuracy over every validation image of ``trainer``; a
    multi-target run adds each other target's error rate or mean absolute error."""
    trainer.eval_model.eval()
    # across processes each validates its own batches, without DDP's collective steps; the
    # moving average of the weights (--ema) is validated in place of the model
    direct = distributed.active() or trainer.ema is not None
    forward = trainer.eval_model if direct else trainer.forward
    heads = trainer.heads
    sums = [0.0] * 2 * max(1, len(heads))  # [missed, counted] per target
    total, loss_sum = 0, 0.0
    shard = (distributed.rank(), distributed.world_size())
    for logits, targets in trainer.kind.valid_logits(trainer, forward, shard):
        if heads:
            loss_sum += multihead.loss(logits, targets, heads).item() * len(targets)
            found = multihead.metric_sums(logits, targets, heads)
        else:
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
            found = [(logits.argmax(1) != targets).sum().item(), len(targets)]
        sums = [a + b for a, b in zip(sums, found, strict=True)]
        total += len(targets)
    # every process saw other images: add them up, each image counted once
    loss_sum, total, *sums = distributed.all_sum([loss_sum, total, *sums], trainer.device)
    row = {
        "valid_loss": loss_sum / total,
        "error_rate": sums[0] / total,
        "accuracy": 1 - sums[0] / total,
        "valid_images": int(total),
    }
    for n, metric in enumerate(trainer.other_metrics, start=1):
        row[metric] = sums[2 * n] / max(sums[2 * n + 1], 1)
    return row
