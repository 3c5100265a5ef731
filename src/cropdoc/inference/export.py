"""``export``: a bundle as an ONNX model for CPU and edge inference, checked against PyTorch.

The ONNX file has a dynamic batch dimension (and dynamic height and width for models that
accept any input size) and carries the preprocessing contract (size, resize method,
mean/std, class names, cache size) in its metadata under the key ``cropdoc``, so
``cropdoc.inference.onnx_runtime`` needs nothing else. ``int8`` adds ONNX Runtime's dynamic
quantisation of the weights.
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

from cropdoc.bundle import BundleMeta
from cropdoc.extras import require
from cropdoc.models import has_fixed_size
from cropdoc.trust.module import load_scoring_model


def export_onnx(
    model_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    int8: bool = False,
    calibrate: list | None = None,
) -> dict:
    """Write ``model.onnx`` (or ``out``: a file, or a folder to write it into) from a run
    folder or bundle; returns the parity check: max |logit difference| against PyTorch and
    top-1 agreement, per input size.

    ``int8`` quantises weights and activations statically (QDQ, per channel), calibrated on
    the images of ``calibrate`` (files or folders; random inputs when none are given)."""
    require("onnx", "export to ONNX")
    import onnx

    model, meta = load_scoring_model(model_dir)
    name = "model.int8.onnx" if int8 else "model.onnx"
    out = Path(out) if out else Path(model_dir) / name
    if out.is_dir():  # a folder to write into
        out = out / name
    height, width = meta.size
    dynamic_hw = not has_fixed_size(meta.arch)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    example = torch.randn(2, 3, height, width)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # same disk: the rename is atomic
        raw = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():  # the TorchScript exporter: deprecated, still exact
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (example,),
                str(raw),
                input_names=["input"],
                output_names=["logits", "ood_score"],
                dynamic_axes={"input": axes, "logits": {0: "batch"}, "ood_score": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        proto = onnx.load(str(raw))
        contract = {**meta.to_dict(), "dynamic_hw": dynamic_hw}
        entry = proto.metadata_props.add()
        entry.key, entry.value = "cropdoc", json.dumps(contract)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(raw))
        if int8:
            raw = _quantise(raw, meta, calibrate)
        os.replace(raw, out)
    sizes = [(height, width)] + ([(height + 32, width + 16)] if dynamic_hw else [])
    return {
        "onnx": str(out),
        "int8": int8,
        "dynamic_hw": dynamic_hw,
        "parity": [parity(model, out, size) for size in sizes],
    }


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

    from cropdoc.data.images import ImageError, load_image
    from cropdoc.inference.onnx_runtime import preprocess
    from cropdoc.inference.predictions import collect_inputs

    batches = []
    paths = collect_inputs(calibrate) if calibrate else []
    for path in paths[:: max(1, len(paths) // CALIBRATION_IMAGES)][:CALIBRATION_IMAGES]:
        try:
            pixels = load_image(path, max_size=meta.cache_size)
        except ImageError:
            continue
        batches.append({"input": preprocess(pixels, meta)[None]})
    if not batches:
        rng = np.random.default_rng(0)
        batches = [{"input": rng.standard_normal((1, 3, *meta.size), np.float32)} for _ in range(8)]

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
    return sorted(direct | (ancestors("ood_score") - ancestors("logits")))


def parity(model: torch.nn.Module, onnx_path: str | os.PathLike, size, batch: int = 3) -> dict:
    """Logits and out-of-scope scores of PyTorch and ONNX Runtime on the same random
    inputs of ``size``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, expected_ood = (t.numpy() for t in model(x))
    got, got_ood = session.run(None, {"input": x.numpy()})
    return {
        "size": list(size),
        "max_abs_diff": float(np.abs(expected - got).max()),
        "max_abs_diff_ood": float(np.abs(expected_ood - got_ood).max()),
        "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean()),
    }
