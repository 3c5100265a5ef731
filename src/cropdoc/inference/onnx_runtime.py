"""Predict with an exported ONNX model through ONNX Runtime: numpy and Pillow only, no torch.

Photos are preprocessed by ``cropdoc.contract.preprocess``, which mirrors the PyTorch
path's validation transform exactly, so both runtimes see the same inputs. A tiled export
covers each photo with the same grid of tiles (``cropdoc.contract.grid``) and pools them
with its bag graph.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cropdoc.contract.bundle import BundleError, BundleMeta
from cropdoc.contract.kinds import graph_file, kind_of
from cropdoc.contract.outputs import Run
from cropdoc.core.errors import UserError, one_line
from cropdoc.core.extras import require
from cropdoc.inference.predictions import (
    Predictions,
    Scorer,
    file_version,
    predict_paths,
)


def onnx_file(model: str | os.PathLike) -> Path:
    """The ``.onnx`` file itself, or ``model.onnx`` inside a run folder or bundle."""
    path = Path(model)
    if path.is_dir():
        path = path / "model.onnx"
        if not path.is_file():
            raise UserError(f"{model} has no model.onnx: run cropdoc export {model} first")
    return path


def load_session(model: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime session and the bundle description (``BundleMeta``) from the model's
    metadata; ``threads`` caps the threads one model call uses (default: ONNX Runtime's)."""
    path = onnx_file(model)
    session = _open(path, threads)
    contract = session.get_modelmeta().custom_metadata_map.get("cropdoc")
    if contract is None:
        raise UserError(f"{path} carries no cropdoc metadata: export it with cropdoc export")
    try:
        data = json.loads(contract)
    except ValueError:
        raise BundleError(f"{path}: its cropdoc metadata is not valid JSON") from None
    return session, BundleMeta.from_dict(data, f"{path} (cropdoc metadata)")


def _open(path: Path, threads: int | None = None):
    require("onnx", "the ONNX runtime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own error kinds
        raise UserError(f"cannot load {path} with ONNX Runtime: {one_line(exc, 160)}") from None


def load_graphs(model: str | os.PathLike, threads: int | None = None):
    """The sessions of every graph of an ONNX export (its kind's ``graphs``: a tiled
    export's bag graph beside its tile graph) and the bundle description."""
    session, meta = load_session(model, threads)
    path = onnx_file(model)
    sessions = [session]
    for suffix in kind_of(meta.tiles).graphs[1:]:
        part = graph_file(path, suffix)
        if not part.is_file():
            raise UserError(f"{part} is missing: the {path.name} export needs it beside it")
        sessions.append(_open(part, threads))
    return sessions, meta


def session_run(session) -> Run:
    """An ONNX Runtime session as a ``Run``: the feeds it takes in, every output out."""
    inputs = [i.name for i in session.get_inputs()]
    names = [o.name for o in session.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        taken = {name: feeds[name] for name in inputs}  # a graph may not use every output
        return dict(zip(names, session.run(names, taken), strict=True))

    return run


def scorer_info(meta: BundleMeta, version: str) -> dict:
    """A ``Scorer``'s ``info`` of an exported model, from its metadata."""
    return {
        "classes": list(meta.classes),
        "cache_size": meta.cache_size,
        "arch": meta.arch,
        "size": list(meta.size),
        "version": version,
        "metrics": meta.metrics,
        "min_confidence": meta.trust.min_confidence,
        "tile": meta.tiles.tile,
    }


def onnx_scorer(model: str | os.PathLike, threads: int | None = None, tta: bool = False) -> Scorer:
    """An exported ONNX model as a ``Scorer`` (probabilities of decoded images), averaged
    over the test-time views with ``tta``."""
    sessions, meta = load_graphs(model, threads)
    path = onnx_file(model)
    names = [o.name for o in sessions[0].get_outputs()]
    runs = [session_run(session) for session in sessions]
    return exported_scorer(runs, names, meta, scorer_info(meta, file_version(path)), path, tta)


def exported_scorer(
    runs: list[Run], names: list[str], meta: BundleMeta, info: dict, path: Path, tta: bool
) -> Scorer:
    """The ``Scorer`` of an export (ONNX, OpenVINO, LiteRT) whose graphs a runtime runs as
    ``runs``, scored as its kind scores (``contract.kinds``); ``names``: the first
    graph's outputs."""
    kind = kind_of(meta.tiles)
    score = kind.exported_score(runs, names, meta, path, tta)
    return Scorer(score, info, None, meta.others, kind)


def predict_onnx(
    model: str | os.PathLike, inputs: list, bs: int = 64, tta: bool = False, quality: bool = True
) -> Predictions:
    """Class probabilities of every image in ``inputs`` with an exported ONNX model (and the
    photo-quality checks, as ``cropdoc.inference.predict.predict``)."""
    return predict_paths(inputs, onnx_scorer(model, tta=tta), bs, quality)
