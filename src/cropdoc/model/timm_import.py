"""timm, imported for cropdoc without the ``import wandb`` it makes for its own scripts.

``timm.utils.summary`` tries ``import wandb`` as timm is imported (for the ``--log-wandb`` of
timm's ``train.py``). With wandb installed (``cropdoc[track]``, wandb 0.30) that made a fresh
``import timm`` take 13.4 s instead of 8.8 s on the 2-core development machine
(``benchmarks/imports.py``), in every cropdoc process that builds a model. cropdoc never
calls that part of timm; its own ``--track wandb`` imports wandb when a run asks for it. So
timm is imported while wandb's entry in ``sys.modules`` is None (the import system's
documented "not importable"), and the entry is removed again at once: a later ``import
wandb`` works as usual.

Every cropdoc module takes timm from here (``from cropdoc.model.timm_import import timm``);
``tools/check_layers.py`` fails on any other module that imports it.
"""

from __future__ import annotations

import sys
from types import ModuleType


def _import_timm() -> ModuleType:
    hidden = "wandb" not in sys.modules
    if hidden:
        sys.modules["wandb"] = None  # type: ignore[assignment]
    try:
        import timm
    finally:
        if hidden and "wandb" in sys.modules and sys.modules["wandb"] is None:
            del sys.modules["wandb"]
    return timm


timm = _import_timm()
