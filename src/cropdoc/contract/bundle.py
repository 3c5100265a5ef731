"""Model bundles: ``model.safetensors`` + ``model.json``. Loading one never runs code.

``BundleMeta`` is the one typed reading of ``model.json`` (and of the same contract inside an
exported ONNX model): every field is checked once, when it is read, so a damaged or crafted
file is refused in one line that names the field, before any model is built.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cropdoc import __version__
from cropdoc.config import GLOBAL_POOLS, RESIZES
from cropdoc.contract.targets import Target, check_targets
from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write_json

FORMAT = "cropdoc-bundle-1"
MAX_SIDE = 8192  # the largest input side a bundle may ask for (a 40 GB tensor is no model)
MAX_CLASSES = 100_000


class BundleError(UserError):
    """A ``model.json`` (or an ONNX model's cropdoc metadata) that cannot be used."""


OOD_METHODS = ("mahalanobis-layers", "mahalanobis", "knn")  # cropdoc.contract.ood


@dataclass(frozen=True)
class TrustMeta:
    """What the trust stage fitted after training (``cropdoc.engine.trust``): the temperature of
    the logits, the lowest calibrated confidence to answer with, and the out-of-scope
    score's ``k`` and threshold (its training features are in ``trust.safetensors``).
    The defaults are an uncalibrated bundle without out-of-scope statistics."""

    temperature: float = 1.0
    min_confidence: float = 0.0
    ood_method: str = ""  # one of OOD_METHODS; "": no out-of-scope score
    ood_k: int = 0  # neighbours of the knn score
    ood_threshold: float = 1.0
    ood_keep: float = 0.95
    ood_levels: tuple[int, ...] = ()  # mahalanobis-layers: the stages read (feature_info's)

    @classmethod
    def from_dict(cls, data: Any, bad) -> TrustMeta:
        if not isinstance(data, dict):
            raise bad("trust", "must be an object")
        defaults = dataclasses.asdict(cls())
        values = {**defaults, **data}
        levels = values.pop("ood_levels")
        if not isinstance(levels, list | tuple) or not all(_is_int(n) and n >= 0 for n in levels):
            raise bad("trust", "ood_levels must be a list of stage numbers")
        numbers = [v for k, v in values.items() if k != "ood_method"]
        ok = set(data) <= set(defaults) and values["ood_method"] in ("", *OOD_METHODS)
        ok = ok and all(isinstance(v, int | float) and math.isfinite(v) for v in numbers)
        ok = ok and values["temperature"] > 0 and values["ood_threshold"] > 0
        ok = ok and 0 <= values["min_confidence"] <= 1 and 0 < values["ood_keep"] <= 1
        ok = ok and _is_int(values["ood_k"])
        ok = ok and values["ood_k"] >= (values["ood_method"] == "knn")
        ok = ok and (values["ood_method"] == "mahalanobis-layers") == bool(levels)
        if not ok:
            raise bad("trust", "must hold a positive temperature, thresholds, a method and k")
        return cls(**values, ood_levels=tuple(int(n) for n in levels))

    @property
    def fitted(self) -> bool:
        return self != TrustMeta()


@dataclass(frozen=True)
class TileMeta:
    """How a tiled bundle reads a photo (``contract.grid``, ``model.tiled``): tiles of
    ``tile`` pixels cut at full resolution, neighbours sharing ``overlap`` of a tile, the
    tiles' answers pooled by ``pooling``; ``per_image`` tiles per photo were sampled in
    training. ``tile`` 0: the bundle reads whole photos."""

    tile: int = 0
    overlap: float = 0.25
    pooling: str = "max"
    per_image: int = 8

    @classmethod
    def from_dict(cls, data: Any, bad) -> TileMeta:
        if not isinstance(data, dict) or not set(data) <= {f.name for f in dataclasses.fields(cls)}:
            raise bad("tiles", "must be an object of tile, overlap, pooling and per_image")
        values = {**dataclasses.asdict(cls()), **data}
        ok = _is_int(values["tile"]) and _is_int(values["per_image"]) and values["per_image"] >= 1
        ok = ok and (values["tile"] == 0 or 16 <= values["tile"] <= MAX_SIDE)
        ok = ok and isinstance(values["overlap"], int | float) and 0 <= values["overlap"] <= 0.9
        ok = ok and values["pooling"] in ("max", "attention")
        if not ok:
            raise bad(
                "tiles",
                "must hold a tile of 16 to 8192 px, an overlap of 0 to 0.9, max or attention",
            )
        return cls(**values)


@dataclass(frozen=True)
class BundleMeta:
    """What a model needs beside its weights: architecture, classes, input size, resize,
    normalisation, the cache size its images were decoded to, and its metrics."""

    arch: str
    classes: tuple[str, ...]
    size: tuple[int, int]
    item_size: tuple[int, int]
    resize: str = "squish"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    cache_size: int = 256
    metrics: dict[str, Any] = field(default_factory=dict)
    trust: TrustMeta = TrustMeta()
    tiles: TileMeta = TileMeta()
    targets: tuple[Target, ...] = ()  # a multi-target model's, the label first; () for one
    weights: dict[str, str] = field(default_factory=dict)  # where training started from
    global_pool: str = ""  # timm's pooling before the head ("": the architecture's own)
    extra: dict[str, Any] = field(default_factory=dict)  # other keys, kept as they are

    @classmethod
    def from_dict(cls, data: Any, source: str) -> BundleMeta:
        """Check every field of ``data`` (a parsed ``model.json``); ``source`` names the file
        in the one-line error."""
        if not isinstance(data, dict):
            raise BundleError(f"{source} holds {type(data).__name__}, not a JSON object")
        missing = [k for k in ("arch", "classes", "size", "mean", "std") if k not in data]
        if missing:
            raise BundleError(f"{source} lacks {', '.join(missing)}: not a cropdoc bundle")

        def bad(name: str, why: str) -> BundleError:
            return BundleError(f"{source}: {name} {why}: {json.dumps(data.get(name))[:60]}")

        arch = data["arch"]
        if not isinstance(arch, str) or not arch.strip():
            raise bad("arch", "must be a timm architecture name")
        classes = _classes(data["classes"], bad)
        size = _size(data["size"], "size", bad)
        item_size = _size(data.get("item_size", data["size"]), "item_size", bad)
        resize = data.get("resize", "squish")
        if resize not in RESIZES:
            raise bad("resize", f"must be one of {', '.join(RESIZES)}")
        mean = _triple(data["mean"], "mean", bad, positive=False)
        std = _triple(data["std"], "std", bad, positive=True)
        cache_size = data.get("cache_size", 256)
        if not _is_int(cache_size) or not (cache_size == 0 or 16 <= cache_size <= MAX_SIDE * 4):
            raise bad("cache_size", "must be a whole number of pixels from 16 (0: full size)")
        metrics = data.get("metrics", {})
        if not isinstance(metrics, dict):
            raise bad("metrics", "must be an object")
        trust = TrustMeta.from_dict(data.get("trust", {}), bad)
        tiles = TileMeta.from_dict(data.get("tiles", {}), bad)
        targets = data.get("targets", [])
        if not isinstance(targets, list):
            raise bad("targets", "must be a list")
        targets = tuple(Target.from_dict(t, bad) for t in targets)
        check_targets(targets, classes, bad)
        weights = _texts(data.get("weights", {}), "weights", bad)
        global_pool = data.get("global_pool", "")
        if global_pool not in ("", *GLOBAL_POOLS):
            raise bad("global_pool", f"must be one of {', '.join(GLOBAL_POOLS)}")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(
            arch,
            classes,
            size,
            item_size,
            resize,
            mean,
            std,
            cache_size,
            metrics,
            trust,
            tiles,
            targets,
            weights,
            global_pool,
            extra,
        )

    @classmethod
    def read(cls, folder: str | os.PathLike) -> BundleMeta:
        """The ``model.json`` of a bundle (or of a run folder holding one)."""
        path = Path(folder) / "model.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BundleError(
                f"{folder} holds no model.json: give a run folder or a bundle"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise BundleError(f"{path} is not valid JSON: the bundle is damaged") from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (lists for tuples, the extra keys kept)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        out["trust"] = dataclasses.asdict(self.trust)
        out["tiles"] = dataclasses.asdict(self.tiles)
        out["targets"] = [
            {**dataclasses.asdict(t), "classes": list(t.classes)} for t in self.targets
        ]
        return {**self.extra, **out}

    @property
    def outputs(self) -> int:
        """The width of the model's head: every target's outputs, or one per class."""
        return sum(t.width for t in self.targets) or len(self.classes)

    @property
    def others(self) -> tuple[Target, ...]:
        """The targets after the label (none for a single-target model)."""
        return self.targets[1:]


def _classes(value: Any, bad) -> tuple[str, ...]:
    """``classes``: 2 to ``MAX_CLASSES`` different names."""
    if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
        raise bad("classes", "must be a list of class names")
    if not 2 <= len(value) <= MAX_CLASSES:
        raise bad("classes", f"must name 2 to {MAX_CLASSES} classes")
    if len(set(value)) != len(value):
        raise bad("classes", "names a class twice")
    return tuple(value)


def _texts(value: Any, name: str, bad) -> dict[str, str]:
    """An object of text values (``weights``: source, file, sha256)."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise bad(name, "must be an object of text (source, file, sha256)")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _size(value: Any, name: str, bad) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(map(_is_int, value))):
        raise bad(name, "must be [height, width] in whole pixels")
    if not all(16 <= v <= MAX_SIDE for v in value):
        raise bad(name, f"must be 16 to {MAX_SIDE} pixels a side")
    return (value[0], value[1])


def _triple(value: Any, name: str, bad, positive: bool) -> tuple[float, float, float]:
    ok = isinstance(value, list) and len(value) == 3
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ok = ok and all(math.isfinite(v) and (v > 0 or not positive) for v in value)
    if not ok:
        why = "three finite numbers above 0" if positive else "three finite numbers"
        raise bad(name, f"must be {why} (one per colour channel)")
    return (float(value[0]), float(value[1]), float(value[2]))


def save_meta(folder: str | os.PathLike, meta: BundleMeta) -> Path:
    """Write ``model.json`` (atomically), with the versions that wrote it."""
    from importlib.metadata import version

    data = {
        **meta.to_dict(),
        "cropdoc_version": __version__,
        "timm_version": version("timm"),
        "format": FORMAT,
    }
    atomic_write_json(Path(folder) / "model.json", data)
    return Path(folder)
