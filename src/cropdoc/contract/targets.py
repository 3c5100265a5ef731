"""Several answers from one model: the photo's label plus metadata columns as targets.

One timm body and one linear head whose outputs are split by target, in order: a
classification target takes one output per class, a regression target one output (the
value scaled by the training rows' mean and spread). The first target is always the photo's
``label``; its outputs come first, so everything that reads a single-target model reads the
first slice of a multi-target one the same way. Values missing from a row are NaN and do not
count in that target's loss or metrics.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cropdoc.config import LABEL, LOSSES
from cropdoc.core.errors import UserError

if TYPE_CHECKING:  # numpy is imported where it is used: --help stays quick
    import numpy as np

    from cropdoc.config import TrainConfig
    from cropdoc.data.cache import Cache

KINDS = ("class", "regress")


@dataclass(frozen=True)
class Target:
    """One answer of a model: its name (``label`` or a metadata column), kind, classes
    (``class``) or the training values' mean and spread (``regress``), loss and weight."""

    name: str
    kind: str = "class"
    classes: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0
    loss: str = "l1"
    weight: float = 1.0

    @property
    def width(self) -> int:
        """How many outputs of the head it takes."""
        return len(self.classes) if self.kind == "class" else 1

    @property
    def metric(self) -> str:
        """Its metric's column in ``metrics.csv``: ``error_rate`` for the label, else
        ``NAME_error_rate`` or ``NAME_mae``."""
        if self.name == LABEL:
            return "error_rate"
        return f"{self.name}_{'error_rate' if self.kind == 'class' else 'mae'}"

    @property
    def output_name(self) -> str:
        """Its output's name in an ONNX export (``logits`` for the label)."""
        if self.name == LABEL:
            return "logits"
        safe = re.sub(r"\W", "_", self.name)
        return f"{'logits' if self.kind == 'class' else 'value'}_{safe}"

    @classmethod
    def from_dict(cls, data: Any, bad) -> Target:
        """A checked ``Target`` from a bundle's JSON (``bad(field, why)`` makes the error)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or not set(data) <= fields or "name" not in data:
            raise bad("targets", "must be a list of objects with a name, kind and classes")
        values = {**dataclasses.asdict(cls(data["name"])), **data}
        classes = values["classes"]
        values["classes"] = tuple(classes) if isinstance(classes, list | tuple) else ()
        numbers = (values["mean"], values["std"], values["weight"])
        ok = isinstance(values["name"], str) and bool(values["name"])
        ok = ok and values["kind"] in KINDS and values["loss"] in LOSSES
        ok = ok and all(isinstance(v, int | float) and math.isfinite(v) for v in numbers)
        ok = ok and values["std"] > 0 and values["weight"] >= 0
        if values["kind"] == "class":
            classes = values["classes"]
            ok = ok and 2 <= len(classes) <= 100_000 and len(set(classes)) == len(classes)
            ok = ok and all(isinstance(c, str) and c for c in classes)
        if not ok:
            raise bad("targets", "must name each target with its kind, classes or scale")
        return cls(**values)


def check_targets(targets: tuple[Target, ...], classes: tuple[str, ...], bad) -> None:
    """A bundle's targets: none (one target), or ``label`` first with the bundle's classes
    and no name twice."""
    if not targets:
        return
    names = [t.name for t in targets]
    first = targets[0]
    if first.name != LABEL or first.kind != "class" or first.classes != classes:
        raise bad("targets", "must start with the label and the bundle's classes")
    if len(set(names)) != len(names) or len(targets) < 2:
        raise bad("targets", "must name two or more different targets")


def plan(config: TrainConfig, cache: Cache, classes: list[str], train: np.ndarray) -> list[Target]:
    """The targets of a run: the label, then each other ``--targets`` column of the cache's
    metadata, a classification target unless ``--regress`` names it (its scale from the
    ``train`` rows). One target: ``[]`` (a plain classifier)."""
    import numpy as np

    parsed = config.parsed
    names, weights, regress = parsed.targets, parsed.target_weights, parsed.regress
    if names == (LABEL,):
        return []
    targets = [Target(LABEL, classes=tuple(classes), weight=weights[0])]
    columns = sorted({k for e in cache.images for k in e.meta})
    for name, weight in zip(names[1:], weights[1:], strict=True):
        raw = [e.meta.get(name, "") if e.label else "" for e in cache.images]
        if not any(raw):
            raise UserError(
                f"no labelled photo has a value for target {name!r}: "
                f"the metadata columns are {', '.join(columns) or 'none'}"
            )
        if name in regress:
            numbers = _numbers(name, raw, cache)
            seen = numbers[train][~np.isnan(numbers[train])]
            if len(seen) == 0:
                raise UserError(f"no training photo has a value for target {name!r}")
            std = float(seen.std()) or 1.0
            loss = config.regress_loss
            targets.append(Target(name, "regress", (), float(seen.mean()), std, loss, weight))
        else:
            values = sorted({v for v in raw if v}, key=_natural)
            if len(values) < 2:
                raise UserError(f"target {name!r} has one value ({values[0]}): nothing to learn")
            targets.append(Target(name, classes=tuple(values), weight=weight))
    return targets


def _natural(value: str) -> tuple:
    """Numbers in numeric order, then words in text order."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _numbers(name: str, raw: list[str], cache: Cache) -> np.ndarray:
    """A regression target's values (NaN where a row has none). A value that is not a
    finite number is refused in one line naming its photo; negative values are kept and
    reported (an age or a count below 0 is usually a typo)."""
    import numpy as np

    from cropdoc.core.progress import say

    out = np.full(len(raw), np.nan, np.float32)
    for i, value in enumerate(raw):
        if not value.strip():
            continue  # missing: the row does not count in this target's loss
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and abs(number) <= float(np.finfo(np.float32).max)):
            raise UserError(
                f"target {name!r} is a regression but {cache.images[i].path} has {value!r}: "
                "give a finite number (or leave it empty: missing), or drop it from --regress"
            )
        out[i] = number
    negative = np.flatnonzero(out < 0)
    if len(negative):
        first = negative[0]
        say(
            f"warning: target {name!r} has {len(negative)} negative value(s) (first: "
            f"{cache.images[first].path} {raw[first]!r}): check them if they cannot be below 0"
        )
    return out


def values(targets: list[Target], cache: Cache, label_index: np.ndarray) -> np.ndarray:
    """``(images, targets)`` float32: each target's class index or value (NaN: missing);
    the first column is the label's index."""
    import numpy as np

    out = np.full((len(cache.images), len(targets)), np.nan, np.float32)
    out[:, 0] = np.where(label_index >= 0, label_index, np.nan)
    for column, target in enumerate(targets[1:], start=1):
        for i, entry in enumerate(cache.images):
            value = entry.meta.get(target.name, "") if entry.label else ""
            if not value.strip():
                continue
            if target.kind == "class":
                out[i, column] = target.classes.index(value) if value in target.classes else np.nan
            else:
                out[i, column] = float(value)
    return out


def slices(targets: list[Target] | tuple[Target, ...]) -> list[slice]:
    """Each target's outputs within the head's, in order."""
    out, start = [], 0
    for target in targets:
        out.append(slice(start, start + target.width))
        start += target.width
    return out
