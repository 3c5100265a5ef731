"""``--ema DECAY``: a moving average of the weights (timm's ``ModelEmaV3``), updated after
every optimizer step: ``ema = decay * ema + (1 - decay) * weights``. When it is on, the
average is what is validated, kept as the best epoch's bundle (so evaluated, calibrated,
exported and served), and checkpointed beside the model, so a resumed run goes on with it."""

from __future__ import annotations

import torch

from cropdoc.model.timm_import import timm


def make_ema(model: torch.nn.Module, decay: float) -> timm.utils.ModelEmaV3 | None:
    """The moving average of ``model`` (None with ``decay`` 0: off)."""
    if not decay:
        return None
    return timm.utils.ModelEmaV3(model, decay=decay, stochastic_rounding=False)
