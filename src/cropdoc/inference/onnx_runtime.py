"""Predict with an exported ONNX model through ONNX Runtime: numpy and Pillow only, no torch.

The preprocessing mirrors the PyTorch path's validation transform exactly (whole-factor
average pooling, then bilinear sampling at the output pixel centres, by the same squish,
crop or pad mapping), so both runtimes see the same inputs. A tiled export covers each
photo with the same grid of tiles (``cropdoc.contract.grid``) and pools them with its bag graph.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cropdoc.contract.bundle import BundleError, BundleMeta
from cropdoc.contract.calibration import softmax
from cropdoc.contract.grid import TILE_BATCH, cut, grid, top_tiles
from cropdoc.core.errors import UserError, one_line
from cropdoc.core.extras import require
from cropdoc.inference.predictions import (
    Predictions,
    Scorer,
    file_version,
    predict_paths,
    tta_views,
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


def bag_file(path: str | os.PathLike) -> Path:
    """A tiled bundle's pooling graph, beside its tile graph: ``model.onnx`` ->
    ``model.bag.onnx``."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".onnx") + ".bag.onnx")


def load_bag(model: str | os.PathLike, threads: int | None = None):
    """The pooling graph's session of a tiled ONNX export."""
    path = bag_file(onnx_file(model))
    if not path.is_file():
        raise UserError(f"{path} is missing: a tiled model needs it beside {path.name[:-9]}.onnx")
    return _open(path, threads)


def tile_inputs(pixels: np.ndarray, corners: np.ndarray, meta: BundleMeta) -> np.ndarray:
    """The ``(n, 3, t, t)`` float32 inputs of the tiles at ``corners`` of ``pixels``."""
    tile = meta.tiles.tile
    batch = np.zeros((len(corners), tile, tile, 3), np.uint8)
    for i, corner in enumerate(corners):
        cut(pixels, corner, tile, batch[i])
    mean, std = np.asarray(meta.mean, np.float32), np.asarray(meta.std, np.float32)
    x = (batch.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def tiled_outputs(session, bag, pixels: np.ndarray, meta: BundleMeta, bs: int = TILE_BATCH):
    """A tiled export on one photo: corners of its tiles, its ``(1, classes)`` logits,
    ``(1,)`` out-of-scope score and the tiles' weights (``bs`` tiles per call)."""
    corners = grid(*pixels.shape[:2], meta.tiles.tile, meta.tiles.overlap)
    parts = [
        session.run(None, {"tiles": tile_inputs(pixels, corners[i : i + bs], meta)})
        for i in range(0, len(corners), bs)
    ]
    names = ("features", "tile_logits", "scores")
    outputs = dict(zip(names, map(np.concatenate, zip(*parts, strict=True)), strict=True))
    wanted = {i.name: outputs[i.name] for i in bag.get_inputs()}  # unused inputs are dropped
    logits, ood, weights = bag.run(None, wanted)
    return corners, logits, ood, weights


def preprocess(pixels: np.ndarray, meta: BundleMeta, view=None) -> np.ndarray:
    """One ``(H, W, 3)`` uint8 image -> the ``(3, h, w)`` float32 input the model expects;
    ``view`` is a test-time view's map (``predictions.view_map``), None for the plain one."""
    out_h, out_w = meta.size
    h, w = pixels.shape[:2]
    x = pixels.astype(np.float32)
    k = int(min(h / out_h, w / out_w))
    if k >= 2:
        x = _average_pool(x, k)
        h, w = h / k, w / k
    fx, fy = _fractions(meta, h, w, *_output_coordinates(out_h, out_w, view))
    zeros = meta.resize == "pad"
    rows = _interpolate(x, fy * h - 0.5, axis=0, zeros=zeros)
    x = _interpolate(rows, fx * w - 0.5, axis=1, zeros=zeros)
    mean, std = np.asarray(meta.mean, np.float32), np.asarray(meta.std, np.float32)
    x = (x / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _average_pool(x: np.ndarray, k: int) -> np.ndarray:
    """k x k means; the last, partial windows average only the pixels they hold."""
    h, w = x.shape[:2]
    ph, pw = -(-h // k) * k, -(-w // k) * k
    padded = np.zeros((ph, pw, 3), np.float32)
    padded[:h, :w] = x
    counts = np.zeros((ph, pw), np.float32)
    counts[:h, :w] = 1
    sums = padded.reshape(ph // k, k, pw // k, k, 3).sum(axis=(1, 3))
    n = counts.reshape(ph // k, k, pw // k, k).sum(axis=(1, 3))
    return sums / n[..., None]


def _output_coordinates(out_h: int, out_w: int, view) -> tuple[np.ndarray, np.ndarray]:
    """Where each output column and row falls in the item box, as fractions (0..1)."""
    ux = (np.arange(out_w, dtype=np.float64) + 0.5) / out_w
    uy = (np.arange(out_h, dtype=np.float64) + 0.5) / out_h
    if view is not None:
        ax, cx, ay, cy = view
        ux = (ax * (2 * ux - 1) + cx + 1) / 2
        uy = (ay * (2 * uy - 1) + cy + 1) / 2
    return ux, uy


def _fractions(meta: BundleMeta, h: float, w: float, ux: np.ndarray, uy: np.ndarray):
    """Where item-box fractions ``ux``, ``uy`` fall in the source, as fractions (0..1)."""
    method = meta.resize
    if method == "squish":
        return ux, uy
    item_h, item_w = meta.item_size
    item_aspect, source_aspect = item_w / item_h, w / h
    wider = source_aspect > item_aspect
    if method == "crop":
        share_x = item_aspect / source_aspect if wider else 1.0
        share_y = 1.0 if wider else source_aspect / item_aspect
        return 0.5 * (1 - share_x) + ux * share_x, 0.5 * (1 - share_y) + uy * share_y
    scale_x = 1.0 if wider else item_aspect / source_aspect
    scale_y = source_aspect / item_aspect if wider else 1.0
    return (ux - 0.5) * scale_x + 0.5, (uy - 0.5) * scale_y + 0.5


def _interpolate(x: np.ndarray, coords: np.ndarray, axis: int, zeros: bool) -> np.ndarray:
    """Linear interpolation along ``axis`` at pixel ``coords``, with grid_sample's borders:
    reflection then clamping, or zeros outside."""
    n = x.shape[axis]
    if not zeros:
        coords = _reflect(coords, n)
        coords = np.clip(coords, 0, n - 1)
    low = np.floor(coords).astype(np.int64)
    frac = (coords - low).astype(np.float32)
    result = 0
    for index, weight in ((low, 1 - frac), (low + 1, frac)):
        inside = (index >= 0) & (index < n)
        taken = np.take(x, np.clip(index, 0, n - 1), axis=axis)
        shape = [1, 1, 1]
        shape[axis] = -1
        result = result + taken * (weight * inside).reshape(shape)
    return result


def _reflect(coords: np.ndarray, n: int) -> np.ndarray:
    """Reflect coordinates at the pixel edges -0.5 and n - 0.5 (align_corners=False)."""
    shifted = np.abs(coords + 0.5)
    flips = np.floor(shifted / n)
    extra = np.fmod(shifted, n)
    return np.where(flips % 2 == 0, extra - 0.5, n - extra - 0.5)


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
    session, meta = load_session(model, threads)
    info = scorer_info(meta, file_version(onnx_file(model)))
    if meta.tiles.tile:
        if tta:
            raise UserError("--tta does not apply to a tiled model: its tiles cover the photo")
        return Scorer(_tiled_score(session, load_bag(model, threads), meta), info)
    names = [o.name for o in session.get_outputs()]

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, {"input": batch}), strict=True))

    return exported_scorer(run, names, meta, info, onnx_file(model), tta)


def exported_scorer(
    run: Callable[[np.ndarray], dict[str, np.ndarray]],
    names: list[str],
    meta: BundleMeta,
    info: dict,
    path: Path,
    tta: bool = False,
) -> Scorer:
    """The ``Scorer`` of an exported whole-photo model (ONNX, OpenVINO, LiteRT):
    ``run(batch) -> {output name: array}`` on inputs preprocessed as ``preprocess`` does,
    its outputs (``names``: ``logits``, ``ood_score``, one per other target) turned into
    calibrated probabilities, averaged over the test-time views with ``tta``."""
    missing = [t.output_name for t in meta.others if t.output_name not in names]
    if missing:
        raise BundleError(f"{path} lacks the output(s) {', '.join(missing)}")
    check_widths(path, meta, run(np.zeros((1, 3, *meta.size), np.float32)))
    views = tta_views(tta)

    def view_scores(pixels: list[np.ndarray], view) -> tuple[np.ndarray, np.ndarray, list]:
        outputs = run(np.stack([preprocess(p, meta, view) for p in pixels]))
        ood = outputs.get("ood_score", np.zeros(len(pixels)))  # older exports lack it
        probs = softmax(outputs["logits"], meta.trust.temperature)
        answers = [
            softmax(outputs[t.output_name]) if t.kind == "class" else outputs[t.output_name]
            for t in meta.others
        ]
        return probs, np.asarray(ood, np.float64), answers

    def score(pixels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict]:
        scored = [view_scores(pixels, view) for view in views]
        probs = sum(p for p, _, _ in scored) / len(views)
        ood = sum(o for _, o, _ in scored) / len(views)
        answers = {
            t.name: sum(np.asarray(a[n], np.float64) for _, _, a in scored) / len(views)
            for n, t in enumerate(meta.others)
        }
        return probs, ood, {"targets": answers} if answers else {}

    return Scorer(score, info, None, meta.others)


def check_widths(path: Path, meta: BundleMeta, outputs: dict[str, np.ndarray]) -> None:
    """Refuse a model whose outputs are not as wide as its metadata's class lists (a
    mislabelled answer, or an index past the list)."""
    widths = {"logits": len(meta.classes)}
    widths.update({t.output_name: t.width for t in meta.others if t.kind == "class"})
    for name, width in widths.items():
        found = np.shape(outputs[name])[-1]
        if found != width:
            raise BundleError(
                f"{path} outputs {found} values for {name!r} where its metadata names "
                f"{width} classes: the file is damaged or its metadata is another model's; "
                "export it again"
            )


def _tiled_score(session, bag, meta: BundleMeta):
    """``score(photos) -> (probabilities, ood scores, {"tiles": top tiles})``, one photo at
    a time."""

    def score(photos: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict]:
        probs, ood, tops = [], [], []
        for pixels in photos:
            corners, logits, o, weights = tiled_outputs(session, bag, pixels, meta)
            check_widths(Path("the tiled model"), meta, {"logits": logits})
            probs.append(softmax(logits, meta.trust.temperature)[0])
            ood.append(float(o[0]))
            tops.append(top_tiles(corners, weights, meta.tiles.tile))
        return np.stack(probs), np.array(ood), {"tiles": tops}

    return score


def predict_onnx(
    model: str | os.PathLike, inputs: list, bs: int = 64, tta: bool = False, quality: bool = True
) -> Predictions:
    """Class probabilities of every image in ``inputs`` with an exported ONNX model (and the
    photo-quality checks, as ``cropdoc.inference.predict.predict``)."""
    return predict_paths(inputs, onnx_scorer(model, tta=tta), bs, quality)
