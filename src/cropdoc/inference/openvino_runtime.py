"""``predict --runtime openvino``: an OpenVINO IR (``model.xml`` + ``model.bin``, written by
``export --format openvino``: ``inference/mobile.py``) run with numpy and Pillow only, no
torch. The IR carries the same cropdoc metadata as the ONNX export (in its ``rt_info``), so
it is preprocessed exactly as the ONNX runtime preprocesses (``contract.preprocess``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cropdoc.contract.bundle import BundleError, BundleMeta
from cropdoc.core.errors import UserError, one_line
from cropdoc.core.extras import require
from cropdoc.inference.onnx_runtime import exported_scorer, scorer_info
from cropdoc.inference.predictions import Scorer, file_version


def ir_file(model: str | os.PathLike) -> Path:
    """The ``.xml`` file itself, or ``model.xml`` inside a run folder or bundle."""
    path = Path(model)
    if path.is_dir():
        path = path / "model.xml"
        if not path.is_file():
            raise UserError(
                f"{model} has no model.xml: run cropdoc export {model} --format openvino"
            )
    return path


def openvino_scorer(model: str | os.PathLike, tta: bool = False) -> Scorer:
    """An OpenVINO IR as a ``Scorer``, preprocessed as the ONNX runtime preprocesses."""
    require("openvino", "the OpenVINO runtime")
    import openvino as ov

    path = ir_file(model)
    core = ov.Core()
    try:
        network = core.read_model(str(path))
        contract = network.get_rt_info("cropdoc").astype(str)
        meta = BundleMeta.from_dict(json.loads(contract), f"{path} (cropdoc metadata)")
    except (RuntimeError, ValueError) as exc:
        raise BundleError(f"{path} is not a cropdoc OpenVINO model: {one_line(exc, 120)}") from None
    # fp32 throughout: on CPUs with AVX512-BF16 or AMX OpenVINO computes in bf16 by default,
    # which moves probabilities by a few thousandths and breaks the parity the export checks.
    try:
        compiled = core.compile_model(network, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    except RuntimeError as exc:
        raise BundleError(f"cannot compile {path} with OpenVINO: {one_line(exc, 120)}") from None
    outputs = {o.get_any_name(): o for o in compiled.outputs}
    info = scorer_info(meta, file_version(path.with_suffix(".bin")))

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = compiled(feeds["input"])
        return {name: result[output] for name, output in outputs.items()}

    return exported_scorer([run], list(outputs), meta, info, path, tta)
