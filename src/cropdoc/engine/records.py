"""What a run writes as it trains: ``metrics.csv``, the metrics table's lines, the losses
plot and the best epoch's bundle."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

from cropdoc.config import TrainConfig
from cropdoc.contract.bundle import TileMeta
from cropdoc.core.files import atomic_write_text
from cropdoc.core.plots import png_figure
from cropdoc.core.progress import say
from cropdoc.model.build import save_bundle

METRICS = (
    "epoch",
    "phase",
    "train_loss",
    "valid_loss",
    "error_rate",
    "accuracy",
    "valid_images",
    "train_seconds",
    "seconds",
)


def columns(other_metrics: list[str]) -> list[str]:
    """The columns of ``metrics.csv``: ``METRICS`` with each other target's metric after
    the accuracy."""
    at = METRICS.index("accuracy") + 1
    return [*METRICS[:at], *other_metrics, *METRICS[at:]]


def write_metrics(out: Path, names: list[str], rows: list[dict]) -> None:
    """``metrics.csv`` of the epochs done (floats with six decimals), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(out / "metrics.csv", buffer.getvalue())


def say_row(row: dict, other_metrics: list[str], header: bool) -> None:
    """An epoch's line of the metrics table (after the table's header with ``header``)."""
    if header:
        say(
            f"{'epoch':>5} {'phase':>8} {'train_loss':>10} {'valid_loss':>10} "
            f"{'error_rate':>10} {'accuracy':>8} "
            + "".join(f"{name:>{max(10, len(name))}} " for name in other_metrics)
            + f"{'time':>7}"
        )
    say(
        f"{row['epoch']:>5} {row['phase']:>8} {row['train_loss']:>10.4f} "
        f"{row['valid_loss']:>10.4f} {row['error_rate']:>10.4f} "
        f"{row['accuracy']:>8.4f} "
        + "".join(f"{row[name]:>{max(10, len(name))}.4f} " for name in other_metrics)
        + f"{row['seconds']:>6.1f}s"
    )


def plot_losses(out: Path, rows: list[dict]) -> None:
    """``losses.png``: training and validation loss and the error rate by epoch."""
    epochs = [r["epoch"] for r in rows]
    with png_figure(out / "losses.png") as ax:
        for key, label in (
            ("train_loss", "train loss"),
            ("valid_loss", "valid loss"),
            ("error_rate", "error rate"),
        ):
            ax.plot(epochs, [r[key] for r in rows], "o-", label=label)
        ax.set_xlabel("epoch")
        ax.legend()


def tile_meta(config: TrainConfig) -> TileMeta:
    """How a run reads a photo with ``--tile`` (the bundle's ``tiles``)."""
    return TileMeta(config.tile, config.overlap, config.mil, config.tiles_per_image)


REGULARISERS = (
    "mixup",
    "cutmix",
    "mix_prob",
    "mix_off_epochs",
    "label_smoothing",
    "random_erasing",
    "rand_augment",
    "ema",
    "drop_path",
    "class_weights",
    "balanced_sampling",
)


def recipe(config: TrainConfig) -> dict:
    """The regularisers a run trained with, for ``model.json`` (those not at their default)."""
    default = TrainConfig()
    return {
        k: getattr(config, k) for k in REGULARISERS if getattr(config, k) != getattr(default, k)
    }


def save_best(trainer, row: dict) -> None:
    """The bundle of the epoch ``row`` (the best so far) in the run folder."""
    config = trainer.config
    kept = ("epoch", "valid_loss", "error_rate", "accuracy", *trainer.other_metrics)
    meta = {
        "arch": config.arch,
        "classes": trainer.split.classes,
        "size": list(trainer.size),
        "item_size": list(config.parsed.item_size),
        "resize": config.resize,
        "global_pool": config.global_pool,
        "mean": list(trainer.mean),
        "std": list(trainer.std),
        "cache_size": config.cache_size,
        "metrics": {k: row[k] for k in kept},
        "tiles": trainer.kind.record(),
        "targets": [dataclasses.asdict(t) for t in trainer.heads],
        "weights": trainer.provenance,
        "recipe": recipe(config),
    }
    save_bundle(trainer.out, trainer.eval_model, meta)
