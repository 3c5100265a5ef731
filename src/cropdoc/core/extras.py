"""Optional parts of cropdoc and the packages each needs, installed as pip extras
(``pip install 'cropdoc[serve]'``); a missing one is a one-line error naming the extra."""

from __future__ import annotations

import importlib.util

from cropdoc.core.errors import UserError

EXTRAS = {
    "serve": ("fastapi", "uvicorn", "python_multipart"),
    "onnx": ("onnx", "onnxruntime"),
    "openvino": ("onnx", "openvino"),
    "litert": ("ai_edge_litert",),
    "tflite": ("ai_edge_litert", "litert_torch"),
    "explain": ("pytorch_grad_cam",),
    "kaggle": ("kaggle",),
    "doctor": ("cleanlab", "imagehash"),
    "scale": ("pyarrow",),
    "ray": ("ray", "pyarrow"),
}  # --track checks only the backends asked for (engine/tracking.py)


def require(extra: str, what: str) -> None:
    """Raise one clear line when a package of ``extra`` is missing; ``what`` names the
    feature that needs it."""
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(
            f"{what} needs {', '.join(missing)}: pip install 'cropdoc[{extra}]' (or 'cropdoc[all]')"
        )
