"""``export``: a bundle as an ONNX model for CPU and edge inference, checked against PyTorch.

The ONNX file has a dynamic batch dimension (and dynamic height and width for models that
accept any input size) and carries the preprocessing contract (size, resize method,
mean/std, class names, cache size) in its metadata under the key ``cropdoc``, so
``cropdoc.onnx_runtime`` needs nothing else. ``int8`` adds ONNX Runtime's dynamic
quantisation of the weights.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from cropdoc.bundle import load_bundle


def _fixed_size(arch: str) -> bool:
    import timm

    cfg = timm.get_pretrained_cfg(arch.split(".")[0])
    return bool(cfg and cfg.fixed_input_size)


def export_onnx(
    model_dir: str | os.PathLike, out: str | os.PathLike | None = None, int8: bool = False
) -> dict:
    """Write ``model.onnx`` (or ``out``) from a run folder or bundle; returns the parity
    check: max |logit difference| against PyTorch and top-1 agreement, per input size."""
    import onnx

    model, meta = load_bundle(model_dir)
    out = Path(out) if out else Path(model_dir) / ("model.int8.onnx" if int8 else "model.onnx")
    height, width = meta["size"]
    dynamic_hw = not _fixed_size(meta["arch"])
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
                output_names=["logits"],
                dynamic_axes={"input": axes, "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        proto = onnx.load(str(raw))
        contract = {k: meta[k] for k in ("arch", "classes", "size", "mean", "std")}
        contract.update(
            item_size=meta.get("item_size", meta["size"]),
            resize=meta.get("resize", "squish"),
            cache_size=meta.get("cache_size", 256),
            dynamic_hw=dynamic_hw,
        )
        entry = proto.metadata_props.add()
        entry.key, entry.value = "cropdoc", json.dumps(contract)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(raw))
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantised = Path(tmp) / "model.int8.onnx"
            quantize_dynamic(str(raw), str(quantised), weight_type=QuantType.QInt8)
            raw = quantised
        os.replace(raw, out)
    sizes = [(height, width)] + ([(height + 32, width + 16)] if dynamic_hw else [])
    return {
        "onnx": str(out),
        "int8": int8,
        "dynamic_hw": dynamic_hw,
        "parity": [parity(model, out, size) for size in sizes],
    }


def parity(model: torch.nn.Module, onnx_path: str | os.PathLike, size, batch: int = 3) -> dict:
    """Logits of PyTorch and ONNX Runtime on the same random inputs of ``size``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    return {
        "size": list(size),
        "max_abs_diff": float(np.abs(expected - got).max()),
        "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean()),
    }
