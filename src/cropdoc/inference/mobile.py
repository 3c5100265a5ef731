"""Exports for phones and edge boxes beyond ONNX: ``export --format openvino`` (OpenVINO IR,
fp32, converted from the ONNX export) and ``export --format tflite`` (LiteRT flatbuffer,
fp32, converted from the torch module by ``litert-torch`` in a child process:
``inference/tflite_convert.py``). Every export checks itself
against PyTorch on held-out photos through its own runtime's preprocessing path: decoded as
``predict`` decodes, resized and normalised in numpy as that runtime does, against the
torch runtime on the same files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cropdoc.contract.bundle import BundleMeta
from cropdoc.contract.kinds import kind_of
from cropdoc.core.errors import UserError
from cropdoc.core.extras import require
from cropdoc.core.progress import say
from cropdoc.inference.litert_runtime import CONTRACT_KEY, tflite_scorer
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
    kind_of(meta.tiles).refuse("openvino")
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


def export_tflite(
    model_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    photos: list | None = None,
) -> dict:
    """Write ``model.tflite`` (in ``out``: a folder, or the ``.tflite`` to write; default
    the run folder): one photo in at the bundle's size, its outputs named as the ONNX
    export's (``logits``, ``ood_score``, one per other target), the bundle's description in
    its metadata; then check it against PyTorch on ``photos`` (default: held-out photos of
    the run's data); returns the path and the parity.

    The conversion runs in a child process: ``litert-torch`` brings JAX, which must not be
    in a process that later forks (data loader workers)."""
    require("tflite", "export to tflite")
    meta = BundleMeta.read(model_dir)
    kind_of(meta.tiles).refuse("tflite")
    target = Path(out) if out else Path(model_dir)
    if target.suffix != ".tflite":  # a folder to write model.tflite into
        target = target / "model.tflite"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # same disk: atomic rename
        staged = Path(tmp) / "model.tflite"
        say(f"converting {meta.arch} to tflite (litert-torch, in a child process)")
        command = [sys.executable, "-m", "cropdoc.inference.tflite_convert", str(model_dir)]
        done = subprocess.run([*command, str(staged)], capture_output=True, text=True)
        if done.returncode != 0 or not staged.is_file():
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise UserError(lines[-1] if lines else f"cannot convert {meta.arch} to tflite")
        _add_contract(staged, {**meta.to_dict(), "dynamic_hw": False})
        os.replace(staged, target)
    parity = photo_parity(model_dir, tflite_scorer(target), photos)
    return {"tflite": str(target), "parity": parity}


def _add_contract(path: Path, contract: dict) -> None:
    """Keep ``contract`` in the flatbuffer's metadata under ``CONTRACT_KEY``."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    flat = flatbuffer_utils.read_model(str(path))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(contract).encode(), np.uint8)
    flat.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = CONTRACT_KEY, len(flat.buffers) - 1
    flat.metadata = [*(flat.metadata or []), entry]
    flatbuffer_utils.write_model(flat, str(path))
