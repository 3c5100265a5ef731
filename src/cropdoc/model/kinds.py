"""The torch side of a model's kind (``cropdoc.contract.kinds``): how training reads a
batch, how cached photos become outputs and scores, what an explanation looks at and
what an ONNX export writes. The trainer, the scorers, the exporters and explain call these
methods; none of them asks whether a model is tiled.

A whole-photo model reads canvas batches of photos through the validation transform; a
tiled one reads each photo as the grid of tiles that covers it (``cropdoc.model.tiled``)
and trains on bags of random tiles (``cropdoc.model.bags``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from cropdoc.contract.bundle import BundleMeta, TileMeta
from cropdoc.contract.grid import cut
from cropdoc.contract.kinds import Tiled, WholePhoto, kind_of
from cropdoc.contract.outputs import Run, tiled_outputs
from cropdoc.core.progress import Progress
from cropdoc.data.cache import Cache
from cropdoc.data.loader import Batches, make_canvas
from cropdoc.model.archs import features_logits_levels, ood_levels
from cropdoc.model.inputs import model_input, validation_input, view_scores

HOT_TILES = 8  # a tiled bundle's tiles explained per photo (those that weigh most)


@dataclass
class Graph:
    """One ONNX graph of an export: the module, an example input, the graph's input and
    output names, its dynamic axes and the file suffix beside ``model`` (``""``:
    ``model.onnx``, ``".bag"``: ``model.bag.onnx``)."""

    module: torch.nn.Module
    example: tuple
    inputs: list[str]
    outputs: list[str]
    axes: dict
    suffix: str = ""


@dataclass
class Regions:
    """What an explanation of one photo stitches: the model's calibrated probabilities of
    the explained head, the pixels the heatmap lies on, and the regions to explain (their
    top-left corners in those pixels, their normalised inputs, their weights in 0..1)
    through ``module``, whose outputs ``offset`` starts the head's classes at."""

    probs: np.ndarray
    seen: np.ndarray
    corners: list[tuple[int, int]]
    inputs: list[torch.Tensor]
    weights: list[float]
    module: torch.nn.Module
    offset: int = 0


class WholePhotoModel(WholePhoto):
    """A model that reads each photo resized to its input size."""

    photo_parity = True  # an export is also checked on held-out photos, preprocessed by each

    @property
    def bag(self) -> int:
        """The model inputs of one training example."""
        return 1

    def step_input(self, x: torch.Tensor, bs: int) -> torch.Tensor:
        """A training step's ``(bs * bag, 3, h, w)`` inputs as the model takes them."""
        return x

    def training_batches(
        self, cache: Cache, split, labels, bs: int, aug, **common
    ) -> tuple[Batches, Batches | None]:
        """Training batches (``aug``) and validation batches (twice as large, resized
        only) of this process's share; ``labels``: the targets of every cache entry."""
        train = Batches(cache, split.train, labels, bs, aug, True, **common)
        valid = Batches(cache, split.valid, labels, bs * 2, aug, False, **common)
        return train, valid

    def valid_logits(
        self, trainer, forward, shard: tuple[int, int]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(logits, targets)`` of this process's validation images (its ``shard``:
        rank, processes), a batch at a time."""
        for inputs, targets in trainer.valid_batches.epoch(0):
            with trainer.autocast():
                yield forward(inputs).float(), targets

    def ood_levels(self, model: torch.nn.Module) -> tuple[int, ...]:
        """The stages whose pooled features the layered out-of-scope score reads."""
        return ood_levels(model)

    @torch.no_grad()
    def cache_outputs(
        self, model, meta: BundleMeta, cache: Cache, indices, device, bs: int, levels=()
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Label logits of cached images through the validation transform, and their
        penultimate features, then the pooled features of the stages ``levels``."""
        logits, layers = [], []
        with Progress(len(indices), "trust", lines=False) as progress:
            for start in range(0, len(indices), bs):
                batch = indices[start : start + bs]
                canvas, sizes = make_canvas([cache.pixels(int(i)) for i in batch])
                x = validation_input(meta, canvas.to(device), sizes)
                f, out, pooled = features_logits_levels(model, x, tuple(levels))
                layers.append([t.float().cpu().numpy() for t in (f, *pooled)])
                logits.append(out[:, : len(meta.classes)].float().cpu().numpy())
                progress.update(len(batch))
        return np.concatenate(logits), [np.concatenate(p) for p in zip(*layers, strict=True)]

    def cache_scores(self, model, meta: BundleMeta, cache: Cache, indices, tta, bs, device):
        """``(views, images, classes)`` calibrated probabilities of cached images by a
        ``ScoringModel``, their plain view's out-of-scope scores, and each other target's
        answers (probabilities or values averaged over the views)."""
        probs, ood, answers = [], [], [[] for _ in meta.others]
        with Progress(len(indices), "evaluate", lines=False) as progress:
            for start in range(0, len(indices), bs):
                batch = indices[start : start + bs]
                canvas, sizes = make_canvas([cache.pixels(int(i)) for i in batch])
                p, o, a = view_scores(model, meta, canvas.to(device), sizes, tta)
                probs.append(p)
                ood.append(o[0])
                for kept, part in zip(answers, a, strict=True):
                    kept.append(part.mean(0))
                progress.update(len(batch))
        return (
            np.concatenate(probs, axis=1),
            np.concatenate(ood),
            [np.concatenate(parts) for parts in answers],
        )

    def scorer(self, loaded: list, weights: list[float], device, tta: bool):
        """``score(photos) -> (probabilities, ood scores, extra)`` of loaded
        ``(ScoringModel, BundleMeta)`` pairs, weighted (an ensemble averages them)."""
        others = loaded[0][1].others

        def score(pixels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict]:
            canvas, sizes = make_canvas(pixels)
            probs, ood, answers = 0, 0, [0] * len(others)
            for w, (model, meta) in zip(weights, loaded, strict=True):
                p, o, a = view_scores(model, meta, canvas.to(device), sizes, tta)
                probs, ood = probs + w * p.mean(0), ood + o.mean(0) / len(loaded)
                answers = [s + w * part.mean(0) for s, part in zip(answers, a, strict=True)]
            total = sum(weights)
            extra = {"targets": {t.name: a / total for t, a in zip(others, answers, strict=True)}}
            return probs / total, ood, extra if others else {}

        return score

    def regions(self, net, meta: BundleMeta, pixels: np.ndarray, device, part: slice, scale):
        """The ``Regions`` of an explanation of the head ``part`` (its logits divided by
        ``scale``): the whole model input, weight 1."""
        x, seen = model_input(pixels, meta, device)
        with torch.no_grad():
            probs = (net(x).float()[:, part] / scale).softmax(1)[0].cpu().numpy()
        return Regions(probs, seen, [(0, 0)], [x], [1.0], net, part.start)

    def seen(self, pixels: np.ndarray, meta: BundleMeta, device) -> np.ndarray:
        """The pixels a heatmap of ``pixels`` lies on."""
        return model_input(pixels, meta, device)[1]

    def graphs(self, model, meta: BundleMeta, dynamic_hw: bool) -> list[Graph]:
        """The ONNX graphs of an export of the ``ScoringModel`` ``model``: input ->
        logits, ood_score (and one output per other target, ``Target.output_name``)."""
        axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
        outputs = ["logits", "ood_score", *(t.output_name for t in meta.others)]
        batch = {name: {0: "batch"} for name in outputs}
        example = (torch.randn(2, 3, *meta.size),)
        return [Graph(model, example, ["input"], outputs, {"input": axes, **batch})]

    def parity_sizes(self, meta: BundleMeta, dynamic_hw: bool) -> list[tuple[int, int]]:
        """Input sizes an export is checked at against PyTorch."""
        height, width = meta.size
        return [(height, width)] + ([(height + 32, width + 16)] if dynamic_hw else [])

    def parity(self, model, meta: BundleMeta, runs: list[Run], size, batch: int = 3) -> dict:
        """Logits and out-of-scope scores of the ``ScoringModel`` and of its export (its
        graphs run as ``runs``) on the same random inputs of ``size``, and the largest
        difference of each other target's output."""
        x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected, expected_ood, *expected_others = (t.numpy() for t in model(x))
        got = runs[0]({"input": x.numpy()})
        checks = _differences(size, expected, expected_ood, got["logits"], got["ood_score"])
        pairs = zip(meta.others, expected_others, strict=True)
        if meta.targets:
            checks["targets"] = {
                t.name: float(np.abs(a - got[t.output_name]).max()) for t, a in pairs
            }
        return checks


class TiledModel(Tiled, WholePhotoModel):
    """A model that reads overlapping tiles of each photo at full resolution."""

    photo_parity = False  # its parity is on whole photos already (``parity_sizes``)

    @property
    def bag(self) -> int:
        return self.tiles.per_image

    def step_input(self, x: torch.Tensor, bs: int) -> torch.Tensor:
        return x.unflatten(0, (bs, self.bag))

    def training_batches(self, cache, split, labels, bs, aug, **common):
        """Bags of random tiles and no validation batches (validation reads whole photos,
        ``valid_logits``)."""
        from cropdoc.model.bags import TileBatches

        tiles = dict(tile=self.tiles.tile, count=self.bag)
        args = (cache, split.train, split.targets, bs, aug, True)
        return TileBatches(*args, **tiles, **common), None

    def valid_logits(self, trainer, forward, shard):
        """One whole photo at a time through the tiled path of prediction, a training
        step's tiles per call."""
        from cropdoc.model.tiled import pool_photo

        device, split = trainer.device, trainer.split
        mean = torch.tensor(trainer.mean, device=device)
        std = torch.tensor(trainer.std, device=device)
        valid = split.valid[shard[0] :: shard[1]]
        bs = trainer.config.bs * self.bag
        with Progress(len(valid), "validate", lines=False) as bar:
            for index in valid:
                pixels = trainer.cache.pixels(int(index))
                with trainer.autocast():
                    pooled = pool_photo(trainer.eval_model, pixels, self.tiles, mean, std, bs)
                target = torch.tensor([split.targets[index]], device=device)
                bar.update()
                yield pooled[1].float(), target

    def ood_levels(self, model) -> tuple[int, ...]:
        return ()  # the pooled features over the tiles only

    @torch.no_grad()
    def cache_outputs(self, model, meta, cache, indices, device, bs, levels=()):
        """Logits and pooled features of each cached photo, covered by tiles."""
        from cropdoc.model.tiled import pool_photo

        mean = torch.tensor(meta.mean, device=device)
        std = torch.tensor(meta.std, device=device)
        logits, features = [], []
        with Progress(len(indices), "trust", lines=False) as progress:
            for index in indices:
                pixels = cache.pixels(int(index))
                _, out, pooled, _ = pool_photo(model, pixels, meta.tiles, mean, std)
                logits.append(out.float().cpu().numpy())
                features.append(pooled.float().cpu().numpy())
                progress.update()
        return np.concatenate(logits), [np.concatenate(features)]

    def cache_scores(self, model, meta, cache, indices, tta, bs, device):
        """Each cached photo covered by tiles, as predicted (one view; ``scorer`` refuses
        ``tta``)."""
        score = self.scorer([(model, meta)], [1.0], device, tta)
        probs, ood = [], []
        with Progress(len(indices), "evaluate", lines=False) as progress:
            for index in indices:
                p, o, _ = score([cache.pixels(int(index))])
                probs.append(p)
                ood.append(o)
                progress.update()
        return np.concatenate(probs)[None], np.concatenate(ood), []

    def scorer(self, loaded, weights, device, tta):
        """One photo at a time, its top tiles in the extra (``{"tiles": ...}``)."""
        from cropdoc.model.tiled import tile_scorer

        if tta:
            self.refuse("tta")
        return tile_scorer(loaded[0], device)

    def regions(self, net, meta, pixels, device, part, scale):
        """The tiles that weigh most in the answer (``HOT_TILES``), each weighted by its
        weight over the largest, on the photo at full resolution."""
        from cropdoc.model.tiled import normalise, pool_photo

        tiles = self.tiles
        mean = torch.tensor(meta.mean, device=device)
        std = torch.tensor(meta.std, device=device)
        with torch.no_grad():
            corners, logits, _, weights = pool_photo(net, pixels, tiles, mean, std)
        probs = (logits[0] / scale).softmax(0).cpu().numpy()
        weights = weights.cpu().numpy()
        hot = np.argsort(-weights)[:HOT_TILES]
        pieces = [torch.from_numpy(cut(pixels, corners[i], tiles.tile)[None]) for i in hot]
        inputs = [normalise(piece.to(device), mean, std) for piece in pieces]
        share = [float(weights[i] / weights.max()) for i in hot]
        return Regions(probs, pixels, [tuple(corners[i]) for i in hot], inputs, share, net.body)

    def seen(self, pixels, meta, device):
        return pixels

    def graphs(self, model, meta, dynamic_hw):
        """Two graphs: the tiles' (tiles -> features, tile_logits, scores) and the bag's
        beside it (one photo's tile outputs -> logits, ood_score, weights)."""
        from cropdoc.model.tiled import BagHead, TileEncoder

        tile = self.tiles.tile
        tiles = torch.randn(3, 3, tile, tile)
        outputs = ["features", "tile_logits", "scores"]
        encoder = TileEncoder(model.model).eval()
        with torch.no_grad():
            example = encoder(tiles)
        tile_axes = {name: {0: "tiles"} for name in ["tiles", *outputs]}
        bag = BagHead(model.model, model.ood)
        pooled = ["logits", "ood_score", "weights"]
        bag_axes = {name: {0: "tiles"} for name in [*outputs, "weights"]}
        return [
            Graph(encoder, (tiles,), ["tiles"], outputs, tile_axes),
            Graph(bag, example, outputs, pooled, bag_axes, ".bag"),
        ]

    def parity_sizes(self, meta, dynamic_hw):
        """Photo sizes: one smaller than a tile, one of many tiles."""
        tile = self.tiles.tile
        return [(tile // 2 + 3, tile - 5), (2 * tile + 37, 3 * tile + 11)]

    def parity(self, model, meta, runs, size, batch=3):
        """On one random photo of ``size``, covered by tiles as in predict."""
        from cropdoc.model.tiled import BagHead, TileEncoder, run_tiles

        pixels = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
        mean, std = torch.tensor(meta.mean), torch.tensor(meta.std)
        with torch.no_grad():
            encoder = TileEncoder(model.model).eval()
            _, *outputs = run_tiles(encoder, pixels, meta.tiles, mean, std)
            expected, expected_ood, _ = BagHead(model.model, model.ood).eval()(*outputs)
        _, got, got_ood, _ = tiled_outputs(runs[0], runs[1], pixels, meta)
        return _differences(size, expected.numpy(), expected_ood.numpy(), got, got_ood)


def _differences(size, expected, expected_ood, got, got_ood) -> dict:
    """An export's parity at ``size``: the largest logit and out-of-scope score
    differences, and the share of inputs whose top class agrees."""
    return {
        "size": list(size),
        "max_abs_diff": float(np.abs(expected - got).max()),
        "max_abs_diff_ood": float(np.abs(expected_ood - got_ood).max()),
        "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean()),
    }


def model_kind(tiles: TileMeta) -> WholePhotoModel:
    """The kind of a model whose tiles are ``tiles``, torch side included."""
    return KINDS[kind_of(tiles).name](tiles)


KINDS = {WholePhoto.name: WholePhotoModel, Tiled.name: TiledModel}
