"""A ``Scorer`` by runtime: one model or an ensemble in torch, or one exported model (ONNX,
OpenVINO, tflite) run without torch. ``predict``, ``score`` and its workers build theirs here.
"""

from __future__ import annotations

import os

from cropdoc.core.errors import UserError
from cropdoc.inference.predictions import Scorer

RUNTIMES = ("torch", "onnx", "openvino", "tflite")


def load_scorer(
    models: list[str | os.PathLike],
    runtime: str = "torch",
    ensemble_weights: str | None = None,
    device: str = "auto",
    tta: bool = False,
    threads: int | None = None,
) -> Scorer:
    """The scorer of ``runtime``; ``threads`` caps the threads of one model call (torch: its
    intra-op threads, for the whole process; ONNX Runtime and LiteRT: the session's)."""
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime must be {', '.join(RUNTIMES[:-1])} or {RUNTIMES[-1]}")
    if runtime != "torch" and (len(models) != 1 or ensemble_weights):
        raise UserError(f"--runtime {runtime} takes one model (ensembles run with --runtime torch)")
    if runtime == "onnx":
        from cropdoc.inference.onnx_runtime import onnx_scorer

        return onnx_scorer(models[0], threads=threads, tta=tta)
    if runtime == "openvino":
        from cropdoc.inference.openvino_runtime import openvino_scorer

        return openvino_scorer(models[0], tta=tta)
    if runtime == "tflite":
        from cropdoc.inference.litert_runtime import tflite_scorer

        return tflite_scorer(models[0], tta=tta, threads=threads)
    import torch

    from cropdoc.inference.predict import torch_scorer

    if threads:
        torch.set_num_threads(threads)
    try:
        weights = [float(w) for w in ensemble_weights.split(",")] if ensemble_weights else None
    except ValueError:
        raise UserError("--ensemble-weights takes numbers separated by commas") from None
    return torch_scorer(models, weights, device, tta)
