"""Exports for phones and edge boxes beyond ONNX: ``export --format openvino`` (OpenVINO IR,
fp32, converted from the ONNX export). Every export checks itself against PyTorch on held-out
photos through its own runtime's preprocessing path: decoded as ``predict`` decodes, resized
and normalised in numpy as that runtime does, against the torch runtime on the same files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cropdoc.bundle import BundleMeta
from cropdoc.errors import UserError
from cropdoc.extras import require
from cropdoc.inference.openvino_runtime import openvino_scorer
from cropdoc.inference.predict import photo_parity


def export_openvino(
    model_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    photos: list | None = None,
) -> dict:
    """Write ``model.xml`` + ``model.bin`` (in ``out``: a folder, or the ``.xml`` to write;
    default the run folder)
    and check them against PyTorch on ``photos`` (default: held-out photos of the run's
    data); returns the paths and the parity (top-1 agreement, largest probability
    difference)."""
    require("openvino", "export to OpenVINO")
    import onnx as onnx_format
    import openvino as ov

    from cropdoc.inference.export import export_onnx

    meta = BundleMeta.read(model_dir)
    if meta.tiles.tile:
        raise UserError("a tiled model's OpenVINO export is not built yet: export it to ONNX")
    target = Path(out) if out else Path(model_dir)
    if target.suffix != ".xml":  # a folder to write model.xml into
        target = target / "model.xml"
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        onnx = Path(tmp) / "model.onnx"
        export_onnx(model_dir, onnx, photos=False)  # checked below, as OpenVINO runs it
        contract = {p.key: p.value for p in onnx_format.load(str(onnx)).metadata_props}["cropdoc"]
        converted = ov.convert_model(str(onnx))
        converted.set_rt_info(contract, "cropdoc")
        staged = Path(tmp) / "model.xml"
        ov.save_model(converted, str(staged), compress_to_fp16=False)
        # the weights first, so that the .xml never points at nothing
        os.replace(staged.with_suffix(".bin"), target.with_suffix(".bin"))
        os.replace(staged, target)
    parity = photo_parity(model_dir, openvino_scorer(target), photos)
    return {"openvino": str(target), "parity": parity}
