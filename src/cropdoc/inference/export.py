"""``export``: a bundle as an ONNX model for CPU and edge inference, checked against PyTorch.

The ONNX file has a dynamic batch dimension (and dynamic height and width for models that
accept any input size) and carries the preprocessing contract (size, resize method,
mean/std, class names, cache size) in its metadata under the key ``cropdoc``, so
``cropdoc.inference.onnx_runtime`` needs nothing else. ``int8`` adds ONNX Runtime's static
int8 quantisation. A tiled bundle becomes ``model.onnx`` (tiles in, their features, logits
and attention scores out) and ``model.bag.onnx`` beside it (one photo's tile outputs in,
its logits, out-of-scope score and tile weights out).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from cropdoc.contract.bundle import BundleMeta
from cropdoc.contract.kinds import graph_file, kind_of
from cropdoc.core.extras import require
from cropdoc.inference.onnx_runtime import load_graphs, onnx_scorer, session_run
from cropdoc.model.archs import has_fixed_size
from cropdoc.model.kinds import Graph, model_kind
from cropdoc.model.scoring import load_scoring_model


def export_onnx(
    model_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    int8: bool = False,
    calibrate: list | None = None,
    photos: bool = True,
) -> dict:
    """Write ``model.onnx`` (or ``out``: a file, or a folder to write it into) from a run
    folder or bundle; returns the parity check: max |logit difference| against PyTorch and
    top-1 agreement, per input size.

    ``int8`` quantises weights and activations statically (QDQ, per channel), calibrated on
    the images of ``calibrate`` (files or folders; random inputs when none are given).
    A tiled bundle is written as two graphs (its kind's ``graphs``, ``model.kinds``); its
    parity is checked on whole photos covered by tiles."""
    require("onnx", "export to ONNX")
    import onnx

    model, meta = load_scoring_model(model_dir)
    kind = model_kind(meta.tiles)
    name = "model.int8.onnx" if int8 else "model.onnx"
    out = Path(out) if out else Path(model_dir) / name
    if out.is_dir():  # a folder to write into
        out = out / name
    dynamic_hw = kind.dynamic_hw(has_fixed_size(meta.arch))
    graphs = kind.graphs(model, meta, dynamic_hw)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # same disk: the rename is atomic
        first = raw = Path(tmp) / "model.onnx"
        for graph in graphs:
            _torch_export(graph, graph_file(raw, graph.suffix))
        proto = onnx.load(str(raw))
        contract = {**meta.to_dict(), "dynamic_hw": dynamic_hw}
        entry = proto.metadata_props.add()
        entry.key, entry.value = "cropdoc", json.dumps(contract)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(raw))
        if int8:
            raw = _quantise(raw, meta, calibrate)
        for graph in graphs[1:]:  # beside the first, which names them
            os.replace(graph_file(first, graph.suffix), graph_file(out, graph.suffix))
        os.replace(raw, out)
    runs = [session_run(session) for session in load_graphs(out)[0]]
    sizes = kind.parity_sizes(meta, dynamic_hw)
    checks = [kind.parity(model, meta, runs, size) for size in sizes]
    checked = {"photos": 0}
    if photos and kind.photo_parity:  # through ONNX Runtime's own preprocessing
        from cropdoc.inference.predict import photo_parity

        checked = photo_parity(model_dir, onnx_scorer(out))
    return {
        "onnx": str(out),
        "int8": int8,
        "dynamic_hw": dynamic_hw,
        "parity": checks,
        "photo_parity": checked,
    }


def _torch_export(graph: Graph, path: Path) -> None:
    """One graph of the export, in the TorchScript exporter (deprecated, still exact)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph.module.eval(),
            graph.example,
            str(path),
            input_names=graph.inputs,
            output_names=graph.outputs,
            dynamic_axes=graph.axes,
            opset_version=17,
            dynamo=False,
        )


CALIBRATION_IMAGES = 64


def _quantise(raw: Path, meta: BundleMeta, calibrate: list | None) -> Path:
    """Static int8 quantisation with ONNX Runtime's tools; returns the new file."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = _calibration_batches(meta, calibrate)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(batches)

        def get_next(self):
            return next(self.items, None)

    prepared, quantised = raw.with_name("prepared.onnx"), raw.with_name("model.int8.onnx")
    quant_pre_process(str(raw), str(prepared), skip_symbolic_shape=True)
    # the classifier and the out-of-scope score stay in float: quantising the classifier
    # costs top-1 agreement for little speed, and the score's threshold was set in float
    head = _float_nodes(onnx.load(str(prepared)).graph)
    # ONNX Runtime's quantiser logs a root-logger warning for every 1-D weight it cannot
    # quantise per channel (LayerNorm scales: they fall back to per tensor, as intended)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        quantize_static(
            str(prepared),
            str(quantised),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=head,
        )
    finally:
        logging.disable(previous)
    return quantised


def _calibration_batches(meta: BundleMeta, calibrate: list | None) -> list[dict]:
    """Up to ``CALIBRATION_IMAGES`` model inputs from the ``calibrate`` images (a few tiles
    of each photo for a tiled bundle), as the ONNX runtime prepares them; random inputs
    when none are given or readable."""
    from cropdoc.data.images import ImageError, load_image
    from cropdoc.data.inputs import collect_inputs

    kind = kind_of(meta.tiles)
    batches = []
    paths = collect_inputs(calibrate) if calibrate else []
    for path in paths[:: max(1, len(paths) // CALIBRATION_IMAGES)][:CALIBRATION_IMAGES]:
        try:
            pixels = load_image(path, max_size=meta.cache_size)
        except ImageError:
            continue
        batches.append({kind.input_name: kind.sample_inputs(pixels, meta)})
    if not batches:
        rng = np.random.default_rng(0)
        shape = (1, 3, *meta.size)
        batches = [{kind.input_name: rng.standard_normal(shape, np.float32)} for _ in range(8)]
    return batches


def _float_nodes(graph) -> list[str]:
    """The nodes that make the outputs, and those only the out-of-scope score needs."""
    producer = {out: node for node in graph.node for out in node.output}

    def ancestors(name: str) -> set[str]:
        seen, todo = set(), [name]
        while todo:
            node = producer.get(todo.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                todo += list(node.input)
        return seen

    outputs = {o.name for o in graph.output}
    direct = {n.name for n in graph.node if outputs & set(n.output)}
    if "ood_score" not in outputs:  # a tiled bundle's tile graph: pooling is in float anyway
        return sorted(direct)
    return sorted(direct | (ancestors("ood_score") - ancestors("logits")))
