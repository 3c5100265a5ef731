"""An exported model's outputs as answers, torch-free: what ONNX Runtime, OpenVINO and
LiteRT share once a photo is preprocessed (``cropdoc.contract.preprocess``).

A runtime hands each of the export's graphs over as a ``Run``: ``run(feeds) -> {output
name: array}``, ``feeds`` holding the graph's inputs by name (a graph takes those it
has). A whole-photo export is one graph (``input`` -> ``logits``, ``ood_score``, one
output per other target); a tiled one is two (``tiles`` -> ``features``, ``tile_logits``,
``scores``; those -> ``logits``, ``ood_score``, ``weights``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from cropdoc.contract.bundle import BundleError, BundleMeta
from cropdoc.contract.calibration import softmax
from cropdoc.contract.grid import TILE_BATCH, grid, top_tiles
from cropdoc.contract.preprocess import preprocess, tile_inputs
from cropdoc.contract.views import tta_views

Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
Score = Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray, dict]]


def photo_score(run: Run, names: list[str], meta: BundleMeta, path: Path, tta: bool) -> Score:
    """``score(photos) -> (probabilities, ood scores, extra)`` of a whole-photo export:
    its outputs (``names``) turned into calibrated probabilities, averaged over the
    test-time views with ``tta``; ``extra`` holds each other target's answers."""
    missing = [t.output_name for t in meta.others if t.output_name not in names]
    if missing:
        raise BundleError(f"{path} lacks the output(s) {', '.join(missing)}")
    check_widths(path, meta, run({"input": np.zeros((1, 3, *meta.size), np.float32)}))
    views = tta_views(tta)

    def view_scores(pixels: list[np.ndarray], view) -> tuple[np.ndarray, np.ndarray, list]:
        outputs = run({"input": np.stack([preprocess(p, meta, view) for p in pixels])})
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

    return score


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


def tiled_outputs(encode: Run, pool: Run, pixels: np.ndarray, meta: BundleMeta, bs=TILE_BATCH):
    """A tiled export on one photo: the corners of its tiles, its ``(1, classes)`` logits,
    ``(1,)`` out-of-scope score and the tiles' weights (``bs`` tiles per ``encode``)."""
    corners = grid(*pixels.shape[:2], meta.tiles.tile, meta.tiles.overlap)
    parts = [
        encode({"tiles": tile_inputs(pixels, corners[i : i + bs], meta)})
        for i in range(0, len(corners), bs)
    ]
    tiles = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    pooled = pool(tiles)
    return corners, pooled["logits"], pooled["ood_score"], pooled["weights"]


def tiled_score(encode: Run, pool: Run, meta: BundleMeta) -> Score:
    """``score(photos) -> (probabilities, ood scores, {"tiles": top tiles})`` of a tiled
    export, one photo at a time."""

    def score(photos: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict]:
        probs, ood, tops = [], [], []
        for pixels in photos:
            corners, logits, o, weights = tiled_outputs(encode, pool, pixels, meta)
            check_widths(Path("the tiled model"), meta, {"logits": logits})
            probs.append(softmax(logits, meta.trust.temperature)[0])
            ood.append(float(o[0]))
            tops.append(top_tiles(corners, weights, meta.tiles.tile))
        return np.stack(probs), np.array(ood), {"tiles": tops}

    return score
