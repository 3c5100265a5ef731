"""Typed training settings with the defaults of the QEUR23_VATT5 blog post (see README);
YAML in, YAML out.

Sizes are ``"H"`` for a square or ``"HxW"`` (height first, as in PyTorch and fastai).
Unknown settings are rejected with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from cropdoc.core.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
POOLINGS = ("max", "attention")
RESIZES = ("squish", "crop", "pad")
GLOBAL_POOLS = ("avg", "max", "avgmax", "catavgmax")  # timm's pooling before the head
TRACKERS = ("tensorboard", "mlflow", "wandb")  # the --track backends (engine/tracking.py)
LABEL = "label"  # the first target of every model: the photo's label (targets.py)
LOSSES = ("l1", "mse")  # the losses of a regression target
AUTO = "auto"  # a setting train chooses from the architecture and the data (engine/defaults.py)


def parse_size(text: str | int | tuple | list) -> tuple[int, int]:
    """``"192"`` -> (192, 192); ``"480x360"`` -> (480, 360) as (height, width)."""
    if isinstance(text, int):
        return (text, text)
    if isinstance(text, tuple | list):
        return (int(text[0]), int(text[1]))
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"size {text!r} is not N or HxW (for example 224 or 480x360)") from None
    if len(values) not in (1, 2) or min(values) < 16:
        raise UserError(f"size {text!r} must be N or HxW with at least 16 pixels a side")
    return (values[0], values[-1])


@dataclass(frozen=True)
class RandAugment:
    """``n`` ops a photo at magnitude ``m`` (0..10); ``trivial``: one op
    at a magnitude drawn uniformly from 0..m (TrivialAugment)."""

    n: int
    m: float
    trivial: bool = False


def parse_rand_augment(text: str) -> RandAugment | None:
    """``--rand-augment``: ``N,M`` (RandAugment), ``trivial`` (TrivialAugment up to M = 10),
    ``trivial,M``, or empty (off)."""
    text = (text or "").strip().lower()
    if not text:
        return None
    head, _, tail = text.partition(",")
    problem = (
        f"--rand-augment takes N,M (1-6 ops per photo, magnitude 0-10, e.g. 2,9) or"
        f" trivial[,M], not {text!r}"
    )
    try:
        if head == "trivial":
            found = RandAugment(1, float(tail) if tail else 10.0, trivial=True)
        else:
            found = RandAugment(int(head), float(tail))
    except ValueError:
        raise UserError(problem) from None
    if not (1 <= found.n <= 6 and 0 <= found.m <= 10):
        raise UserError(problem)
    return found


def parse_fold(text: str) -> tuple[int, int] | None:
    """``"K/N"`` as ``(K, N)`` (fold K of N, from 1), or None for ``""``."""
    if not text:
        return None
    k, _, n = str(text).partition("/")
    if not (k.strip().isdigit() and n.strip().isdigit() and 1 <= int(k) <= int(n) and int(n) >= 2):
        raise UserError(f"--fold {text}: give K/N with 1 <= K <= N and N >= 2, e.g. 2/5")
    return int(k), int(n)


def parse_track(text: str) -> list[str]:
    """``"tensorboard,mlflow"`` -> the backends, checked (an unknown one is an error)."""
    kinds = [k.strip().lower() for k in (text or "").split(",") if k.strip()]
    unknown = [k for k in kinds if k not in TRACKERS]
    if unknown:
        raise UserError(f"--track {', '.join(unknown)}: choose from {', '.join(TRACKERS)}")
    return kinds


def parse_names(text: str) -> list[str]:
    """``"label, variety"`` -> ``["label", "variety"]``."""
    return [name.strip() for name in str(text or "").split(",") if name.strip()]


def check_target_settings(config: TrainConfig) -> str:
    """The ``--targets`` of a config, checked against ``--regress``, ``--regress-loss``,
    ``--target-weights`` and ``--best-target``; returns them normalised (the regression
    targets added where ``--targets`` lacks them)."""
    parsed = config.parsed
    names = list(parsed.targets)
    if names[0] != LABEL:
        raise UserError(
            f"--targets {config.targets}: the first target is the photo's label "
            f"(write --targets label,{','.join(n for n in names if n != LABEL)})"
        )
    if len(set(names)) != len(names):
        raise UserError(f"--targets {config.targets} names a target twice")
    if LABEL in parsed.regress:
        raise UserError("--regress: the label is a classification target; name a number column")
    if config.regress_loss not in LOSSES:
        raise UserError(f"--regress-loss must be one of {', '.join(LOSSES)}")
    if config.best_target and config.best_target not in names:
        raise UserError(f"--best-target {config.best_target} is not one of {', '.join(names)}")
    if len(names) > 1 and config.tile:
        raise UserError("--targets with more than the label does not work with --tile yet")
    return ",".join(names)


def parse_weights(text: str, count: int) -> list[float]:
    """``--target-weights``: one weight of 0 or more per target (1 each when empty)."""
    if not str(text or "").strip():
        return [1.0] * count
    try:
        weights = [float(w) for w in str(text).split(",")]
    except ValueError:
        raise UserError(f"--target-weights {text}: give numbers, e.g. 1,0.5") from None
    if len(weights) != count or any(not math.isfinite(w) or w < 0 for w in weights):
        raise UserError(
            f"--target-weights {text}: give {count} numbers of 0 or more, one per target"
        )
    return weights


@dataclass(frozen=True)
class Parsed:
    """The structured settings of a ``TrainConfig`` as values, parsed in one place
    (``TrainConfig.parsed``): what the trainer, its builders and the data split read."""

    size: tuple[int, int] | None  # (height, width); None: auto, chosen later
    item_size: tuple[int, int] | None  # None: auto (the size)
    stages: tuple[tuple[int, int], ...]  # --progressive's sizes, in order
    fold: tuple[int, int] | None  # (K, N)
    rand_augment: RandAugment | None
    track: tuple[str, ...]
    targets: tuple[str, ...]  # the label first, then the others (regression ones included)
    regress: frozenset[str]
    target_weights: tuple[float, ...]  # one per target

    @classmethod
    def of(cls, config: TrainConfig) -> Parsed:
        """Parse ``config``'s structured strings; a bad one is refused in one line."""
        names = parse_names(config.targets) or [LABEL]
        regress = parse_names(config.regress)
        names += [n for n in regress if n not in names]
        stages = [s for s in str(config.progressive or "").split(",") if s.strip()]
        return cls(
            size=None if config.size == AUTO else parse_size(config.size),
            item_size=None if config.item_size == AUTO else parse_size(config.item_size),
            stages=tuple(parse_size(s.strip()) for s in stages),
            fold=parse_fold(config.fold),
            rand_augment=parse_rand_augment(config.rand_augment),
            track=tuple(parse_track(config.track)),
            targets=tuple(names),
            regress=frozenset(regress),
            target_weights=tuple(parse_weights(config.target_weights, len(names))),
        )


def _number_or_auto(value, option: str, kind: type):
    """``value`` as a number of ``kind``, or ``"auto"``; a clear error otherwise."""
    if value == "auto":
        return value
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{option} must be a number or auto, not {value!r}") from None


def setting(default, help: str, kind: object = None):
    """A ``TrainConfig`` field with its command-line help; ``kind`` is its command-line type
    where that is not the default's (``int | None``, or ``str`` for "a number or auto")."""
    return field(default=default, metadata={"help": help, "kind": kind})


@dataclass
class TrainConfig:
    """Every setting of a training run; ``config.yaml`` in a run folder holds one. The
    fields with help are the training options of ``train``, ``lr-find`` and ``compare``."""

    data: str = ""
    arch: str = setting("resnet26d", "Any timm architecture name (tags allowed).")
    epochs: int | str = setting(
        AUTO, "Epochs after unfreezing, or auto (about 80 steps: from the training photos).", str
    )
    freeze_epochs: int = setting(1, "Epochs with the body frozen.")
    train_bn: bool = setting(
        False, "Train the norm layers in the frozen epochs too (fastai's train_bn)."
    )
    freeze_early: bool = setting(
        True, "Keep a pretrained CNN's stem and 1/4-resolution stages frozen throughout."
    )
    lr: float | str = setting(0.01, "Learning rate, or auto (lr-find's valley).", str)
    body_lr: float = setting(
        0.3, "Fine-tuning: the body's learning rate as a share of the head's, once unfrozen."
    )
    bs: int | str = setting(64, "Batch size, or auto (the largest that fits).", str)
    valid_pct: float = setting(0.2, "Share of images for validation.")
    fold: str = setting("", "Cross-validation: validate on fold K of N (K/N), train on the rest.")
    split_by: str = setting("", "Validate on whole groups: a manifest column (site, date, phone).")
    seed: int = setting(42, "Seed of the split, order and augmentation.")
    item_size: str = setting(AUTO, "Item size N or HxW (the resize's box); auto: the size.")
    size: str = setting(
        AUTO, "Training input size N or HxW; auto: the architecture's own, the photos' shape."
    )
    progressive: str = setting("", "Progressive resizing: sizes by stage, e.g. 128,224,480x360.")
    resize: str = setting("squish", "squish, crop or pad.")
    min_scale: float = setting(0.75, "Smallest crop area share.")
    augment: bool = setting(True, "Augment training batches.")
    pretrained: bool = setting(True, "Start from the hub's pretrained weights.")
    weights: str | None = setting(None, "Start from local .safetensors weights.", str | None)
    from_scratch: bool = setting(False, "Random init, one-cycle on everything.")
    precision: str = setting("auto", "auto, fp32, bf16 or fp16.")
    channels_last: bool = setting(True, "channels_last memory format.")
    compile: bool = setting(False, "torch.compile the model.")
    accum: int = setting(1, "Gradient accumulation steps.")
    grad_checkpointing: bool = setting(False, "timm's checkpointing.")
    sync_bn: bool = setting(False, "SyncBatchNorm across processes (torchrun).")
    wd: float = setting(0.01, "Weight decay (AdamW).")
    workers: int | None = setting(None, "Loader threads / prepare processes.", int | None)
    cache: str | None = setting(None, "Cache folder (default: keyed).", str | None)
    cache_size: int = setting(
        256, "Longer side of the cached images (keep enough for --size); 0: full resolution."
    )
    tile: int = setting(0, "Train on tiles of N px at full resolution, pooled per photo (0: off).")
    tiles_per_image: int = setting(8, "Tiles sampled from each photo per step (--tile).")
    mil: str = setting("attention", "Pooling of the tiles' answers per photo: attention or max.")
    overlap: float = setting(0.25, "Overlap of the tiles covering a whole photo (--tile).")
    targets: str = setting("label", "What the model answers: label, then metadata columns.")
    regress: str = setting("", "Targets that are numbers (regression), e.g. age.")
    regress_loss: str = setting("l1", "Loss of the regression targets: l1 or mse.")
    target_weights: str = setting("", "Loss weight of each target, e.g. 1,0.5 (default 1 each).")
    best_target: str = setting("", "Target whose metric picks the best epoch (default: label).")
    mixup: float = setting(0.0, "Mixup's Beta(A, A) (0: off), e.g. 0.2.")
    cutmix: float = setting(0.0, "CutMix's Beta(A, A) (0: off), e.g. 1.0.")
    mix_prob: float = setting(1.0, "Share of batches mixed (--mixup, --cutmix).")
    mix_off_epochs: int = setting(0, "The last N epochs train unmixed.")
    label_smoothing: float = setting(0.0, "Label smoothing of the classification losses.")
    random_erasing: float = setting(0.0, "Probability of erasing a random box of a photo.")
    rand_augment: str = setting(
        "", "RandAugment N,M (ops per photo, magnitude 0-10, e.g. 2,9) or trivial[,M]."
    )
    ema: float = setting(0.0, "Decay of a moving average of the weights, e.g. 0.999 (0: off).")
    drop_path: float = setting(0.0, "Stochastic depth rate of the body (timm's drop_path).")
    global_pool: str = setting(
        "", "Pooling before the head: avg, max, avgmax or catavgmax (default: the model's)."
    )
    class_weights: str = setting("", "Weigh the label's loss by class: auto, inverse or a CSV.")
    balanced_sampling: bool = setting(False, "Draw every class as often (with replacement).")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    track: str = setting("", "Experiment tracking: tensorboard, mlflow, wandb (comma-separated).")
    out: str = ""
    # the classes to answer, in order, when they are not the data's own: ``adapt`` keeps its
    # parent bundle's (a class the new photos lack keeps what it knew)
    classes: list[str] = field(default_factory=list)

    @functools.cached_property
    def parsed(self) -> Parsed:
        """The structured settings (sizes, fold, targets, ...) as values, parsed once for
        this config; ``checked`` reads them, so a bad one is refused there."""
        return Parsed.of(self)

    def checked(self) -> TrainConfig:
        """Check the values a user can get wrong; return a normalised copy (numbers as
        numbers, ``size`` the last progressive stage's, its ``parsed`` values read). The
        config itself is not changed."""
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.global_pool and self.global_pool not in GLOBAL_POOLS:
            raise UserError(f"--global-pool must be one of {', '.join(GLOBAL_POOLS)}")
        if self.resize not in RESIZES:
            raise UserError(f"--resize must be one of {', '.join(RESIZES)}")
        if not (0.0 < self.valid_pct < 1.0):
            raise UserError("--valid-pct must be between 0 and 1")
        if not (0.05 <= self.min_scale <= 1.0):
            raise UserError("--min-scale must be between 0.05 and 1")
        bs, lr = _number_or_auto(self.bs, "--bs", int), _number_or_auto(self.lr, "--lr", float)
        epochs = _number_or_auto(self.epochs, "--epochs", int)
        if (bs != "auto" and bs < 1) or self.accum < 1 or (epochs != "auto" and epochs < 1):
            raise UserError("--bs, --accum and --epochs must be at least 1")
        if self.freeze_epochs < 0:
            raise UserError("--freeze-epochs must be at least 0")
        if lr != "auto" and lr <= 0:
            raise UserError("--lr must be positive")
        if not 0 < self.body_lr <= 1:
            raise UserError(
                f"--body-lr is a share of the head's rate, above 0 and at most 1, "
                f"not {self.body_lr:g}"
            )
        names = self.classes
        if not isinstance(names, list) or not all(isinstance(c, str) and c for c in names):
            raise UserError("classes must be a list of class names")
        if len(set(names)) != len(names):
            raise UserError("classes names a class twice")
        self._check_regularisers()
        if self.split_by and self.fold:
            raise UserError("--split-by and --fold are two ways to split: give one")
        targets = check_target_settings(self)
        if self.tile:
            return self._checked_tiles(bs, lr, targets)
        parsed = self.parsed
        stages = [s.strip() for s in str(self.progressive or "").split(",") if s.strip()]
        size = stages[-1] if stages else self.size  # the last stage's size is the model's
        given = [x for x in [parsed.size, *parsed.stages] if x]  # auto: chosen later
        largest = max((max(x) for x in given), default=0)
        if self.cache_size and largest > self.cache_size:
            raise UserError(
                f"training at {largest} px needs cached images that large: raise "
                f"--cache-size to at least {largest} (now {self.cache_size}; 0 keeps full size)"
            )
        if self.cache_size < 0 or 0 < self.cache_size < 16:
            raise UserError("--cache-size must be 0 (full resolution) or at least 16 pixels")
        found = dataclasses.replace(self, bs=bs, lr=lr, epochs=epochs, size=size, targets=targets)
        found.parsed  # noqa: B018 (parsed once, here)
        return found

    def _check_regularisers(self) -> None:
        """The regularisers' settings (``engine/regularise.py``, ``engine/ema.py``)."""
        ranges = {
            "--mixup": (self.mixup, 0, 10),
            "--cutmix": (self.cutmix, 0, 10),
            "--mix-prob": (self.mix_prob, 0, 1),
            "--label-smoothing": (self.label_smoothing, 0, 0.5),
            "--random-erasing": (self.random_erasing, 0, 1),
            "--drop-path": (self.drop_path, 0, 0.9),
            "--mix-off-epochs": (self.mix_off_epochs, 0, 10_000),
        }
        for flag, (value, low, high) in ranges.items():
            if not low <= value <= high:
                raise UserError(f"{flag} must be from {low:g} to {high:g}, not {value:g}")
        if self.ema and not 0.5 <= self.ema < 1:
            raise UserError(f"--ema is a decay from 0.5 to below 1 (e.g. 0.999), not {self.ema:g}")

    def _checked_tiles(self, bs, lr, targets: str) -> TrainConfig:
        """``--tile``: the model's input is the tile, its images the full-resolution cache."""
        if not 32 <= self.tile <= 4096:
            raise UserError("--tile must be 32 to 4096 pixels (0 trains on whole photos)")
        if self.mil not in POOLINGS:
            raise UserError(f"--mil must be one of {', '.join(POOLINGS)}")
        if self.tiles_per_image < 1:
            raise UserError("--tiles-per-image must be at least 1")
        if not 0 <= self.overlap <= 0.9:
            raise UserError("--overlap must be between 0 and 0.9")
        if self.progressive:
            raise UserError("--progressive does not apply to --tile: tiles keep one size")
        tile = str(self.tile)
        epochs = _number_or_auto(self.epochs, "--epochs", int)
        found = dataclasses.replace(
            self,
            bs=bs,
            lr=lr,
            epochs=epochs,
            size=tile,
            item_size=tile,
            resize="squish",
            cache_size=0,
            targets=targets,
        )
        found.parsed  # noqa: B018 (parsed once, here)
        return found

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise UserError(f"unknown setting {key!r}{hint}")
        return cls(**values).checked()

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        import yaml

        try:
            values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise UserError(f"{path} not found: is this a cropdoc run folder?") from None
        except yaml.YAMLError as exc:
            raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise UserError(f"{path} does not hold settings")
        return cls.from_dict(values)
