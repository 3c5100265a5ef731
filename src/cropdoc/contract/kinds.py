"""What kind of model a bundle is, torch-free: a whole-photo model reads each photo
resized to its input; a tiled one reads tiles of the photo at full resolution and pools
their answers (``cropdoc.contract.grid``). ``kind_of`` is the one place that tells them
apart. What a kind changes for the runtimes and exports without torch is here; its torch
side (training batches, scores, export graphs, explanations) is ``cropdoc.model.kinds``.

A multi-target bundle is not a kind of its own: its other targets are outputs every kind
answers beside the label (``BundleMeta.others``)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from cropdoc.contract.bundle import BundleMeta, TileMeta
from cropdoc.contract.grid import grid
from cropdoc.contract.outputs import Run, Score, photo_score, tiled_score
from cropdoc.contract.preprocess import preprocess, tile_inputs
from cropdoc.core.errors import UserError


class WholePhoto:
    """A model that reads each photo resized to its input size."""

    name = "whole-photo"
    input_name = "input"  # the exported graph's input
    graphs = ("",)  # the export's graphs, by suffix (``graph_file``)
    refused: dict[str, str] = {}  # what this kind cannot do: the one line that says so

    def __init__(self, tiles: TileMeta):
        self.tiles = tiles

    @property
    def pooling(self) -> str:
        """The pooling of tile answers the network is built with ("": none)."""
        return ""

    def refuse(self, action: str, model: str = "the model") -> None:
        """Raise the one-line ``UserError`` for an ``action`` (``tta``, ``ensemble``,
        ``openvino``, ``tflite``, ``webapp``, ``adapt``) this kind cannot do; ``model``
        names the model where the line does."""
        if action in self.refused:
            raise UserError(self.refused[action].format(model=model))

    def record(self) -> dict:
        """The bundle's ``tiles`` in ``model.json`` (empty: whole photos)."""
        return {}

    def batch(self, bs: int) -> int:
        """How many decoded photos one call of a scorer takes, ``bs`` asked."""
        return bs

    def columns(self) -> list[tuple[str, str]]:
        """The columns (name, ``string`` or ``float``) this kind adds to a table of
        answers (predict's CSV, score's shards), after the top classes."""
        return []

    def cells(self, row: dict) -> list:
        """Those columns' values in the answer ``row``."""
        return []

    def dynamic_hw(self, fixed_size: bool) -> bool:
        """Whether the export takes any input height and width."""
        return not fixed_size

    def sample_inputs(self, pixels: np.ndarray, meta: BundleMeta) -> np.ndarray:
        """Model inputs from one decoded photo, as a runtime prepares them (int8
        calibration reads these)."""
        return preprocess(pixels, meta)[None]

    def exported_score(
        self, runs: list[Run], names: list[str], meta: BundleMeta, path: Path, tta: bool
    ) -> Score:
        """``score(photos)`` of an export at ``path`` whose graphs (``graphs``) a runtime
        runs as ``runs``; ``names``: the first graph's outputs."""
        return photo_score(runs[0], names, meta, path, tta)


class Tiled(WholePhoto):
    """A model that reads overlapping tiles of ``tiles.tile`` px at full resolution and
    pools their answers per photo (``tiles.pooling``)."""

    name = "tiled"
    input_name = "tiles"
    graphs = ("", ".bag")  # the tiles' graph, and the bag's that pools them
    refused = {
        "tta": "--tta does not apply to a tiled model: its tiles cover the photo",
        "ensemble": "a tiled bundle predicts alone: give one model, not an ensemble",
        "openvino": "a tiled model's OpenVINO export is not built yet: export it to ONNX",
        "tflite": "a tiled model's tflite export is not built yet: export it to ONNX",
        "webapp": (
            "a tiled model's web app is not built yet: export a whole-photo model, or serve "
            "the tiled one with cropdoc serve"
        ),
        "adapt": "{model} reads photos tile by tile: adapt works on whole-photo models",
    }

    @property
    def pooling(self) -> str:
        return self.tiles.pooling

    def record(self) -> dict:
        return dataclasses.asdict(self.tiles)

    def batch(self, bs: int) -> int:
        return 1  # photos are decoded at full size: one at a time

    def columns(self) -> list[tuple[str, str]]:
        return [("top_tile", "string"), ("top_tile_weight", "float")]  # box: x y width height

    def cells(self, row: dict) -> list:
        top = row["tiles"][0]  # the tile that weighs most
        return [" ".join(map(str, top["box"])), float(top["weight"])]

    def dynamic_hw(self, fixed_size: bool) -> bool:
        return False  # the tile graph takes tiles of one size; the photo's size is free

    def sample_inputs(self, pixels: np.ndarray, meta: BundleMeta) -> np.ndarray:
        corners = grid(*pixels.shape[:2], self.tiles.tile, self.tiles.overlap)
        return tile_inputs(pixels, corners[::4][:4], meta)  # a few tiles of the photo

    def exported_score(self, runs, names, meta, path, tta):
        if tta:
            self.refuse("tta")
        return tiled_score(runs[0], runs[1], meta)


def graph_file(path: str | os.PathLike, suffix: str) -> Path:
    """The file of an export's graph beside ``path`` (``model.onnx``): ``suffix``
    ``".bag"`` -> ``model.bag.onnx``; ``""``: ``path`` itself."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".onnx") + suffix + ".onnx")


def kind_of(tiles: TileMeta) -> WholePhoto:
    """The kind of a model whose tiles are ``tiles`` (a bundle's ``meta.tiles``, or a
    training run's): tiled when it has a tile size."""
    return Tiled(tiles) if tiles.tile else WholePhoto(tiles)
