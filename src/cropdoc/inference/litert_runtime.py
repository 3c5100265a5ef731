"""``predict --runtime tflite``: a ``.tflite`` model (written by ``export --format tflite``:
``inference/mobile.py``) run by LiteRT (``ai-edge-litert``, the TensorFlow Lite runtime of
Android) with numpy and Pillow only, no torch. The file carries the same cropdoc metadata as
the ONNX export (a flatbuffer metadata entry named ``cropdoc``), so it is preprocessed
exactly as the ONNX runtime preprocesses (``contract.preprocess``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cropdoc.contract.bundle import BundleError, BundleMeta
from cropdoc.core.errors import UserError, one_line
from cropdoc.core.extras import require
from cropdoc.inference.onnx_runtime import exported_scorer, scorer_info
from cropdoc.inference.predictions import Scorer, file_version

CONTRACT_KEY = "cropdoc"  # the metadata entry holding the bundle's description


def tflite_file(model: str | os.PathLike) -> Path:
    """The ``.tflite`` file itself, or ``model.tflite`` inside a run folder or bundle."""
    path = Path(model)
    if path.is_dir():
        path = path / "model.tflite"
        if not path.is_file():
            raise UserError(
                f"{model} has no model.tflite: run cropdoc export {model} --format tflite"
            )
    return path


def read_contract(path: Path) -> BundleMeta:
    """The bundle description kept in a ``.tflite`` file's metadata."""
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    try:
        root = schema.Model.GetRootAs(data, 0)
        entries = [root.Metadata(i) for i in range(root.MetadataLength())]
        found = [e for e in entries if e.Name() == CONTRACT_KEY.encode()]
        contract = bytes(root.Buffers(found[0].Buffer()).DataAsNumpy()) if found else None
    except Exception:  # flatbuffers raises struct and index errors on a file of another kind
        raise BundleError(f"{path} is not a tflite model") from None
    if contract is None:
        raise UserError(f"{path} carries no cropdoc metadata: export it with cropdoc export")
    try:
        return BundleMeta.from_dict(json.loads(contract), f"{path} (cropdoc metadata)")
    except ValueError:
        raise BundleError(f"{path}: its cropdoc metadata is not valid JSON") from None


def tflite_scorer(
    model: str | os.PathLike, tta: bool = False, threads: int | None = None
) -> Scorer:
    """A ``.tflite`` model as a ``Scorer``, preprocessed as the ONNX runtime preprocesses.
    The model takes one photo at a time (as a phone scores them), so a batch is a loop."""
    require("litert", "the LiteRT (tflite) runtime")
    from ai_edge_litert.interpreter import Interpreter

    path = tflite_file(model)
    meta = read_contract(path)
    try:
        with quiet_native_logs():  # the CPU delegate says it is there on the first call
            runner = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner()
            (input_name,) = runner.get_input_details()
            runner(**{input_name: np.zeros((1, 3, *meta.size), np.float32)})
    except (RuntimeError, ValueError) as exc:
        raise BundleError(f"cannot load {path} with LiteRT: {one_line(exc, 160)}") from None
    names = list(runner.get_output_details())

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [runner(**{input_name: image[None]}) for image in feeds["input"]]
        return {name: np.concatenate([row[name] for row in rows]) for name in names}

    info = scorer_info(meta, file_version(path))
    return exported_scorer([run], names, meta, info, path, tta)


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Silence what LiteRT's C++ side writes to stderr (absl and delegate log lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
