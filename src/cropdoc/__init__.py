"""cropdoc: train, compare, explain and deploy crop-disease image classifiers.

The public API is imported lazily, so ``import cropdoc`` (and the CLI) start fast.
Each stage lives in a subpackage (``data``, ``audit`` (the doctor), ``engine``, ``trust``,
``tiles``, ``evaluation``, ``adaptation``, ``inference``, ``serve``); the names below are the API a
notebook needs, whichever module holds them.
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
    "show_samples": "cropdoc.data.show",
    "fetch": "cropdoc.data.fetch",
    "valley": "cropdoc.engine.lr_find",
    "slide": "cropdoc.engine.lr_find",
    "TrainConfig": "cropdoc.config",
    "train": "cropdoc.engine.trainer",
    "resume": "cropdoc.engine.trainer",
    "Trainer": "cropdoc.engine.trainer",
    "create_model": "cropdoc.model.archs",
    "BundleMeta": "cropdoc.contract.bundle",
    "save_bundle": "cropdoc.model.build",
    "load_bundle": "cropdoc.model.build",
    "evaluate": "cropdoc.evaluation.evaluate",
    "compare": "cropdoc.evaluation.compare",
    "predict": "cropdoc.inference.predict",
    "submission": "cropdoc.inference.predict",
    "explain": "cropdoc.inference.explain",
    "export_onnx": "cropdoc.inference.export",
    "doctor": "cropdoc.audit.doctor",
    "apply_decisions": "cropdoc.data.decisions",
    "adapt": "cropdoc.adaptation.site",
    "adapt_norms": "cropdoc.adaptation.norms",
    "run_demo": "cropdoc.demo",
    "show_output": "cropdoc.core.progress",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cropdoc' has no attribute {name!r}")
