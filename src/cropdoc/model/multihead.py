"""A multi-target model's head in torch: its outputs split per target, the loss over the
rows that have each target's value, and the metric sums validation adds up
(``cropdoc.contract.targets`` says which targets there are)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cropdoc.contract.targets import Target, slices


def outputs(logits: torch.Tensor, targets) -> list[torch.Tensor]:
    """The head's ``(images, outputs)`` as one tensor per target: logits of a
    classification target, ``(images,)`` values (in the column's units) of a regression."""
    parts = []
    for target, part in zip(targets, slices(targets), strict=True):
        piece = logits[:, part]
        parts.append(piece if target.kind == "class" else piece[:, 0] * target.std + target.mean)
    return parts


def loss(
    logits: torch.Tensor,
    values: torch.Tensor,
    targets: list[Target],
    smoothing: float = 0.0,
    weights: torch.Tensor | None = None,
    mixed=None,
) -> torch.Tensor:
    """The weighted sum of the targets' losses, each the mean over the rows that have its
    value (0 when none has): cross-entropy (with ``smoothing``; the label's with the class
    ``weights``), or L1 / MSE of the scaled value. A batch ``mixed`` by
    ``engine.regularise.mix`` mixes each classification loss and each regression value
    (a row counts where both its values are there). Rows are masked, not selected, so a
    training step makes no host round trip."""
    total = 0
    for column, (target, part) in enumerate(zip(targets, slices(targets), strict=True)):
        y, present = _present(values[:, column])
        out = logits[:, part]
        if target.kind == "class":
            w = weights if column == 0 else None

            def ce(labels, out=out, w=w):
                return F.cross_entropy(
                    out, labels.long(), weight=w, label_smoothing=smoothing, reduction="none"
                )

            per_row = ce(y)
            if mixed is not None:
                per_row = mixed.lam * per_row + (1 - mixed.lam) * ce(y[mixed.perm])
        else:
            if mixed is not None:
                y = mixed.lam * y + (1 - mixed.lam) * y[mixed.perm]
            fn = F.l1_loss if target.loss == "l1" else F.mse_loss
            per_row = fn(out[:, 0], (y - target.mean) / target.std, reduction="none")
        if mixed is not None:
            present = present * present[mixed.perm]
        total = total + target.weight * (per_row * present).sum() / present.sum().clamp_min(1)
    return total


def metric_sums(logits: torch.Tensor, values: torch.Tensor, targets: list[Target]) -> list[float]:
    """Per target ``[missed, counted]``, flattened: wrong answers (classification) or the
    sum of absolute errors in the column's units (regression), and the rows with a value."""
    sums = []
    for column, (target, out) in enumerate(zip(targets, outputs(logits, targets), strict=True)):
        y, present = _present(values[:, column])
        classify = target.kind == "class"
        missed = (out.argmax(1) != y.long()).float() if classify else (out - y).abs()
        sums += [float((missed * present).sum()), float(present.sum())]
    return sums


def _present(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A target's values with the missing ones (NaN) set to 0, and the 0/1 mask of those
    that are there."""
    present = ~torch.isnan(y)
    return torch.where(present, y, 0.0), present.float()
