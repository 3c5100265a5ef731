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
from cropdoc.core.extras import require
from cropdoc.inference.onnx_runtime import bag_file
from cropdoc.model.archs import has_fixed_size
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
    A tiled bundle is written as two graphs (``_export_tiled``); its parity is checked on
    whole photos covered by tiles."""
    require("onnx", "export to ONNX")
    import onnx

    model, meta = load_scoring_model(model_dir)
    name = "model.int8.onnx" if int8 else "model.onnx"
    out = Path(out) if out else Path(model_dir) / name
    if out.is_dir():  # a folder to write into
        out = out / name
    dynamic_hw = not has_fixed_size(meta.arch) and not meta.tiles.tile
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # same disk: the rename is atomic
        raw = Path(tmp) / "model.onnx"
        if meta.tiles.tile:
            _export_tiled(model, meta, raw)
        else:
            _export(model, (torch.randn(2, 3, *meta.size),), raw, dynamic_hw, meta)
        proto = onnx.load(str(raw))
        contract = {**meta.to_dict(), "dynamic_hw": dynamic_hw}
        entry = proto.metadata_props.add()
        entry.key, entry.value = "cropdoc", json.dumps(contract)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(raw))
        if int8:
            raw = _quantise(raw, meta, calibrate)
        if meta.tiles.tile:
            os.replace(bag_file(Path(tmp) / "model.onnx"), bag_file(out))
        os.replace(raw, out)
    if meta.tiles.tile:
        checks = [tiled_parity(model, meta, out, size) for size in _photo_sizes(meta.tiles.tile)]
    else:
        height, width = meta.size
        sizes = [(height, width)] + ([(height + 32, width + 16)] if dynamic_hw else [])
        checks = [parity(model, out, size) for size in sizes]
    checked = {"photos": 0}
    if photos and not meta.tiles.tile:  # through ONNX Runtime's own preprocessing
        from cropdoc.inference.onnx_runtime import onnx_scorer
        from cropdoc.inference.predict import photo_parity

        checked = photo_parity(model_dir, onnx_scorer(out))
    return {
        "onnx": str(out),
        "int8": int8,
        "dynamic_hw": dynamic_hw,
        "parity": checks,
        "photo_parity": checked,
    }


def _export(module: torch.nn.Module, example: tuple, path: Path, dynamic_hw: bool, meta) -> None:
    """A whole-photo ``ScoringModel``: input -> logits, ood_score (and one output per other
    target of a multi-target bundle, named by ``Target.output_name``)."""
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    outputs = ["logits", "ood_score", *(t.output_name for t in meta.others)]
    batch = {name: {0: "batch"} for name in outputs}
    _torch_export(module, example, path, ["input"], outputs, {"input": axes, **batch})


def _export_tiled(model: torch.nn.Module, meta: BundleMeta, path: Path) -> None:
    """A tiled bundle as two graphs: ``path`` runs tiles (tiles -> features, tile_logits,
    scores), ``bag_file(path)`` pools one photo's tiles (-> logits, ood_score, weights)."""
    from cropdoc.model.tiled import BagHead, TileEncoder

    tiles = torch.randn(3, 3, meta.tiles.tile, meta.tiles.tile)
    outputs = ["features", "tile_logits", "scores"]
    per_tile = {name: {0: "tiles"} for name in ["tiles", *outputs]}
    _torch_export(TileEncoder(model.model), (tiles,), path, ["tiles"], outputs, per_tile)
    with torch.no_grad():
        example = TileEncoder(model.model)(tiles)
    axes = {name: {0: "tiles"} for name in [*outputs, "weights"]}
    head = BagHead(model.model, model.ood)
    _torch_export(head, example, bag_file(path), outputs, ["logits", "ood_score", "weights"], axes)


def _torch_export(module, example: tuple, path: Path, inputs, outputs, axes) -> None:
    with warnings.catch_warnings():  # the TorchScript exporter: deprecated, still exact
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module.eval(),
            example,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _photo_sizes(tile: int) -> list[tuple[int, int]]:
    """Photo sizes for the tiled parity check: one smaller than a tile, one of many tiles."""
    return [(tile // 2 + 3, tile - 5), (2 * tile + 37, 3 * tile + 11)]


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
    from cropdoc.contract.grid import grid
    from cropdoc.data.images import ImageError, load_image
    from cropdoc.data.inputs import collect_inputs
    from cropdoc.inference.onnx_runtime import preprocess, tile_inputs

    name = "tiles" if meta.tiles.tile else "input"
    batches = []
    paths = collect_inputs(calibrate) if calibrate else []
    for path in paths[:: max(1, len(paths) // CALIBRATION_IMAGES)][:CALIBRATION_IMAGES]:
        try:
            pixels = load_image(path, max_size=meta.cache_size)
        except ImageError:
            continue
        if meta.tiles.tile:  # a few tiles of the photo
            corners = grid(*pixels.shape[:2], meta.tiles.tile, meta.tiles.overlap)
            batches.append({name: tile_inputs(pixels, corners[::4][:4], meta)})
        else:
            batches.append({name: preprocess(pixels, meta)[None]})
    if not batches:
        rng = np.random.default_rng(0)
        shape = (1, 3, *meta.size)
        batches = [{name: rng.standard_normal(shape, np.float32)} for _ in range(8)]

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


def tiled_parity(model, meta: BundleMeta, onnx_path: Path, size) -> dict:
    """A tiled bundle's logits and out-of-scope score from PyTorch and ONNX Runtime on the
    same random photo of ``size`` (covered by tiles as in predict)."""
    from cropdoc.inference.onnx_runtime import load_bag, load_session, tiled_outputs
    from cropdoc.model.tiled import BagHead, TileEncoder, run_tiles

    pixels = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    mean, std = torch.tensor(meta.mean), torch.tensor(meta.std)
    with torch.no_grad():
        _, *outputs = run_tiles(TileEncoder(model.model).eval(), pixels, meta.tiles, mean, std)
        expected, expected_ood, _ = BagHead(model.model, model.ood).eval()(*outputs)
    session, _ = load_session(onnx_path)
    _, got, got_ood, _ = tiled_outputs(session, load_bag(onnx_path), pixels, meta)
    return {
        "size": list(size),
        "max_abs_diff": float(np.abs(expected.numpy() - got).max()),
        "max_abs_diff_ood": float(np.abs(expected_ood.numpy() - got_ood).max()),
        "top1_agreement": float((expected.numpy().argmax(1) == got.argmax(1)).mean()),
    }


def parity(model: torch.nn.Module, onnx_path: str | os.PathLike, size, batch: int = 3) -> dict:
    """Logits and out-of-scope scores of PyTorch and ONNX Runtime on the same random
    inputs of ``size`` (and the largest difference of each other target's output)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, expected_ood, *expected_others = (t.numpy() for t in model(x))
    got, got_ood, *got_others = session.run(None, {"input": x.numpy()})
    checks = {
        "size": list(size),
        "max_abs_diff": float(np.abs(expected - got).max()),
        "max_abs_diff_ood": float(np.abs(expected_ood - got_ood).max()),
        "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean()),
    }
    pairs = zip(model.targets[1:], expected_others, got_others, strict=True)
    if model.targets:
        checks["targets"] = {t.name: float(np.abs(a - b).max()) for t, a, b in pairs}
    return checks
