"""cropdoc: train, compare, explain and deploy crop-disease image classifiers.

The public API is imported lazily, so ``import cropdoc`` (and the CLI) start fast.
Functions named like their module (``cropdoc.predict.predict``, ``cropdoc.fetch.fetch``)
are imported from it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "discover": "cropdoc.data.layouts",
    "Dataset": "cropdoc.data.layouts",
    "load_image": "cropdoc.data.images",
    "read_image": "cropdoc.data.images",
    "prepare": "cropdoc.data.cache",
    "Cache": "cropdoc.data.cache",
    "make_demo_data": "cropdoc.data.demo",
    "show_samples": "cropdoc.show",
    "run_demo": "cropdoc.pipeline",
    "valley": "cropdoc.engine.suggest",
    "slide": "cropdoc.engine.suggest",
    "TrainConfig": "cropdoc.config",
    "train": "cropdoc.engine.trainer",
    "resume": "cropdoc.engine.trainer",
    "Trainer": "cropdoc.engine.trainer",
    "create_model": "cropdoc.models",
    "save_bundle": "cropdoc.bundle",
    "load_bundle": "cropdoc.bundle",
    "explain": "cropdoc.heatmaps",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cropdoc' has no attribute {name!r}")
