"""Training: fastai's ``fine_tune`` and ``fit_one_cycle`` as one plain loop over epochs.

``fine_tune``: the body is frozen (norm layers stay trainable) for ``freeze_epochs`` of
one-cycle on the head; then everything trains for ``epochs`` of one-cycle with the body's
learning rate 100 times lower than the head's. ``from_scratch``: one-cycle on everything.
A checkpoint is written after every epoch (and on Ctrl-C); ``resume`` continues from it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cropdoc import targets as multi
from cropdoc.config import TrainConfig, parse_fold, parse_size
from cropdoc.data.augment import Augment
from cropdoc.data.cache import open_cache
from cropdoc.data.loader import Batches, split_cache
from cropdoc.device import autocast, pick_device, resolve_precision
from cropdoc.engine import checkpoint, distributed, lr_find, memory, schedule
from cropdoc.engine.tracking import Tracker
from cropdoc.errors import UserError
from cropdoc.files import atomic_write_text
from cropdoc.models import create_model, has_fixed_size, head_parameters, is_norm, normalisation
from cropdoc.progress import Progress, say
from cropdoc.report import write_run_report

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


class TrainingStopped(UserError):
    """Training stopped early (NaN loss, out of memory, Ctrl-C); the message says why."""


@dataclass
class Phase:
    """A stretch of one-cycle training: its epochs, learning rates per group, and freezing."""

    name: str
    epochs: int
    lrs: tuple[float, float]  # (body, head)
    pct_start: float
    div: float
    frozen: bool


def phases(config: TrainConfig, lr: float) -> list[Phase]:
    """fastai's fine_tune (or a single one-cycle run from scratch) as phases."""
    if config.from_scratch:
        return [Phase("train", config.epochs, (lr, lr), 0.25, 25.0, False)]
    frozen = [Phase("frozen", config.freeze_epochs, (lr / 10, lr), 0.99, 25.0, True)]
    half = lr / 2
    unfrozen = Phase("unfrozen", config.epochs, (half / 100, half), 0.3, 5.0, False)
    return ([*frozen] if config.freeze_epochs else []) + [unfrozen]


class Trainer:
    """Everything a run needs: data, model, optimizer, precision, run folder.

    ``config`` is checked and copied: the caller's object is never changed (``--bs auto``
    is resolved in ``trainer.config``)."""

    def __init__(self, config: TrainConfig):
        config = config.checked()
        distributed.setup()
        self.main = distributed.is_main()
        self.out = Path(config.out)
        self.device = pick_device(config.device)
        if distributed.active() and self.device.type == "cuda":
            self.device = torch.device("cuda", distributed.local_rank())
        self.precision = resolve_precision(config.precision, self.device)
        torch.manual_seed(config.seed)
        self.config = config
        self.cache, self.split = self._build_data()
        # a multi-target run's targets (the label first) and their values; [] for one target
        self.heads = multi.plan(config, self.cache, self.split.classes, self.split.train)
        self.labels = (
            multi.values(self.heads, self.cache, self.split.targets) if self.heads else None
        )
        self.outputs = sum(t.width for t in self.heads) or len(self.split.classes)
        self.model = self._build_model()
        self.mean, self.std = normalisation(self.model)
        self.size = parse_size(config.size)
        self.stages = [parse_size(x) for x in config.progressive.split(",") if x.strip()]
        if self.stages and has_fixed_size(config.arch):
            raise UserError(
                f"{config.arch} takes one input size: progressive resizing needs a model that "
                "takes any size (a CNN such as resnet or convnext)"
            )
        if config.bs == "auto":
            bs = self._auto_batch_size(max([self.size, *self.stages], key=_pixels))
            self.config = config = dataclasses.replace(config, bs=bs)
        self.train_batches, self.valid_batches = self._build_batches()
        self.body, self.head, self.optimizer = self._build_optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.frozen: bool | None = None  # what the forward wrapper was made for
        self.forward = self._wrap()
        self.epoch = 0  # the epoch being trained (for hooks and logs)
        self.rows: list[dict] = []  # metrics of the epochs done
        self.best: dict | None = None  # the best epoch's row (its bundle is saved)
        self.interrupted = lambda: False  # set by fit(): has Ctrl-C come?
        self._header_due = True  # the metrics table's header, before the first row shown

    # -- builders -------------------------------------------------------------------------

    def _build_data(self):
        """The cache (the first process on each machine prepares it; the others then find
        it done) and the train / valid split."""
        config = self.config
        if distributed.local_rank() == 0:
            cache = open_cache(config.data, config.cache, config.cache_size, config.workers)
        distributed.barrier()
        if distributed.local_rank() != 0:
            cache = open_cache(config.data, config.cache, config.cache_size, config.workers)
        return cache, split_cache(cache, config.valid_pct, config.seed, parse_fold(config.fold))

    def _build_model(self) -> torch.nn.Module:
        """The timm model with a head for the classes, on the device, as the config says."""
        config = self.config
        pretrained = config.pretrained and not config.from_scratch and config.weights is None
        model = create_model(
            config.arch,
            len(self.split.classes),
            pretrained=pretrained,
            weights=config.weights,
            img_size=parse_size(config.size),
        )
        if self.heads:  # the body starts as a single-target run of the same seed would
            model.reset_classifier(self.outputs)
        if config.tile:
            from cropdoc.tiles.mil import MILModel

            model = MILModel(model, config.mil)
        if config.grad_checkpointing:
            model.set_grad_checkpointing(True)
        model.to(self.device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        if config.sync_bn and distributed.active():
            if self.device.type != "cuda":
                raise UserError("--sync-bn needs GPUs: PyTorch's SyncBatchNorm runs on CUDA only")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def _build_batches(self) -> tuple[Batches, Batches | None]:
        """Training batches (augmented, unless ``--no-augment``) and validation batches (twice
        as large, resized only), each process taking its share; with ``--tile``, bags of
        tiles and no validation batches."""
        config = self.config
        aug = Augment(
            size=self.size,
            item_size=parse_size(config.item_size),
            resize=config.resize,
            min_scale=config.min_scale,
        )
        if not config.augment:
            aug = dataclasses.replace(
                aug, min_scale=1.0, flip=False, max_rotate=0, max_zoom=1, max_warp=0, max_lighting=0
            )
        self.train_aug = aug
        common = dict(
            device=self.device,
            mean=self.mean,
            std=self.std,
            seed=config.seed,
            workers=config.workers,
            shard=(distributed.rank(), distributed.world_size()),
        )
        split = self.split
        if config.tile:  # bags of tiles; validation reads whole photos (_valid_logits)
            from cropdoc.tiles.batches import TileBatches

            tiles = dict(tile=config.tile, count=config.tiles_per_image)
            args = (self.cache, split.train, split.targets, config.bs, aug, True)
            return TileBatches(*args, **tiles, **common), None
        labels = split.targets if self.labels is None else self.labels
        train = Batches(self.cache, split.train, labels, config.bs, aug, True, **common)
        valid = Batches(self.cache, split.valid, labels, config.bs * 2, aug, False, **common)
        if len(train) == 0:
            raise UserError(
                f"{len(split.train)} training images make no batch of {config.bs} for each "
                f"of {distributed.world_size()} processes: lower --bs or use fewer processes"
            )
        return train, valid

    def _build_optimizer(self):
        """AdamW over two groups, body and head (the body's learning rate is set lower)."""
        head_ids = head_parameters(self.model)
        head = [p for p in self.model.parameters() if id(p) in head_ids]
        body = [p for p in self.model.parameters() if id(p) not in head_ids]
        optimizer = torch.optim.AdamW(
            [{"params": body}, {"params": head}],
            lr=1e-3,
            betas=(0.9, 0.99),
            eps=1e-5,
            weight_decay=self.config.wd,
            fused=self.device.type == "cuda",
        )
        return body, head, optimizer

    # -- pieces ---------------------------------------------------------------------------

    def _auto_batch_size(self, size: tuple[int, int]) -> int:
        """``--bs auto``: the largest power-of-two batch whose training step fits."""
        config = self.config

        bag = config.tiles_per_image if config.tile else 1  # a step's inputs: bs * bag

        def make_model() -> torch.nn.Module:
            model = create_model(config.arch, self.outputs, False, img_size=size)
            model.set_grad_checkpointing(config.grad_checkpointing)
            return model

        def fits(bs: int) -> None:
            if self.device.type == "cuda":  # a real step; BatchNorm statistics kept as they were
                buffers = [b.clone() for b in self.model.buffers()]
                x = torch.randn(bs * bag, 3, *size, device=self.device)
                x = x.contiguous(memory_format=torch.channels_last)
                try:
                    with self.autocast():
                        logits = self.model(x.unflatten(0, (bs, bag)) if config.tile else x)
                    logits.float().sum().backward()
                finally:
                    self.model.zero_grad(set_to_none=True)
                    for buffer, saved in zip(self.model.buffers(), buffers, strict=True):
                        buffer.copy_(saved)
                return
            limit = memory.memory_limit()
            if limit is not None and memory.step_bytes(make_model, bs * bag, size) > limit:
                raise torch.OutOfMemoryError(f"a batch of {bs} needs more than {limit} bytes")

        start = memory.first_batch_size(len(self.split.train))
        bs, too_big = memory.find_batch_size(fits, start)
        bs = distributed.broadcast(bs)  # every process takes the first one's choice
        tried = f" ({', '.join(map(str, too_big))} did not fit)" if too_big else ""
        say(f"bs auto: {bs} at {size[0]}x{size[1]}{tried}")
        return bs

    def stage_size(self, epoch: int, epochs: int) -> tuple[int, int]:
        """The training size of ``epoch`` of ``epochs``: with progressive resizing the
        epochs are split evenly among the sizes, in order; else the size."""
        if not self.stages:
            return self.size
        return self.stages[min(len(self.stages) - 1, epoch * len(self.stages) // epochs)]

    def autocast(self):
        return autocast(self.device, self.precision)

    def freeze(self, frozen: bool) -> None:
        """Freeze the body except its norm layers (fastai's train_bn), or unfreeze all."""
        for p in self.body:
            p.requires_grad_(not frozen)
        if frozen:
            for module in self.model.modules():
                if is_norm(module):
                    for p in module.parameters(recurse=False):
                        p.requires_grad_(True)
        if distributed.active() and frozen != self.frozen:
            self.forward = self._wrap()  # DDP reduces the gradients of what trains now
        self.frozen = frozen

    def _wrap(self):
        """The module the steps call: the model, wrapped in DDP across processes and
        compiled when asked."""
        forward = self.model
        if distributed.active():
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            forward = DistributedDataParallel(self.model, device_ids=ids)
        return torch.compile(forward) if self.config.compile else forward

    def forward_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (the model in training mode)."""
        self.model.train()
        with self.autocast():
            logits = self.forward(inputs)
        if self.heads:
            return multi.loss(logits.float(), targets, self.heads)
        return F.cross_entropy(logits.float(), targets)

    def backward(self, loss: torch.Tensor, accum: int = 1, update: bool = True) -> None:
        """Backward of ``loss / accum`` and, with ``update``, the optimizer step."""
        self.scaler.scale(loss / accum).backward()
        if update:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        """One forward, backward and optimizer step; returns the loss."""
        loss = self.forward_loss(inputs, targets)
        self.backward(loss)
        return loss.item()

    @torch.no_grad()
    def validate(self) -> dict:
        """Valid loss, error rate and accuracy over every validation image, once; a
        multi-target run adds each other target's error rate or mean absolute error."""
        self.model.eval()
        # across processes each validates its own batches, without DDP's collective steps
        forward = self.model if distributed.active() else self.forward
        sums = [0.0] * 2 * max(1, len(self.heads))  # [missed, counted] per target
        total, loss_sum = 0, 0.0
        for logits, targets in self._valid_logits(forward):
            if self.heads:
                loss_sum += multi.loss(logits, targets, self.heads).item() * len(targets)
                found = multi.metric_sums(logits, targets, self.heads)
            else:
                loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
                found = [(logits.argmax(1) != targets).sum().item(), len(targets)]
            sums = [a + b for a, b in zip(sums, found, strict=True)]
            total += len(targets)
        # every process saw other images: add them up, each image counted once
        loss_sum, total, *sums = distributed.all_sum([loss_sum, total, *sums], self.device)
        row = {
            "valid_loss": loss_sum / total,
            "error_rate": sums[0] / total,
            "accuracy": 1 - sums[0] / total,
            "valid_images": int(total),
        }
        for n, metric in enumerate(self.other_metrics, start=1):
            row[metric] = sums[2 * n] / max(sums[2 * n + 1], 1)
        return row

    def _valid_logits(self, forward):
        """``(logits, targets)`` of this process's validation images, a batch at a time; with
        ``--tile``, one whole photo at a time through the tiled path of prediction."""
        if not self.config.tile:
            for inputs, targets in self.valid_batches.epoch(0):
                with self.autocast():
                    yield forward(inputs).float(), targets
            return
        from cropdoc.tiles.scoring import pool_photo

        tiles = self._tile_meta()
        mean = torch.tensor(self.mean, device=self.device)
        std = torch.tensor(self.std, device=self.device)
        valid = self.split.valid[distributed.rank() :: distributed.world_size()]
        bs = self.config.bs * self.config.tiles_per_image  # a training step's tiles
        with Progress(len(valid), "validate", lines=False) as bar:
            for index in valid:
                pixels = self.cache.pixels(int(index))
                with self.autocast():
                    logits = pool_photo(self.model, pixels, tiles, mean, std, bs)[1]
                target = torch.tensor([self.split.targets[index]], device=self.device)
                bar.update()
                yield logits.float(), target

    def find_lr(self, num_it: int = 100) -> lr_find.LRFindResult:
        """The LR range test, with the body frozen as it will be in the first phase."""
        self.freeze(not self.config.from_scratch and self.config.freeze_epochs > 0)
        return lr_find.range_test(
            self.step, self.optimizer, self.model, self.train_batches.epoch, num_it=num_it
        )

    # -- the run --------------------------------------------------------------------------

    def fit(self, lr: float, resume: bool = False) -> dict:
        """Train through all phases, checkpointing every epoch; returns the summary."""
        plan = [(phase, n) for phase in phases(self.config, lr) for n in range(phase.epochs)]
        start_epoch, start_step, sums = 0, 0, (0.0, 0)
        self.rows, self.best = [], None
        if resume:
            state = checkpoint.load_checkpoint(
                self.out / "checkpoint", self.model, self.optimizer, self.scaler
            )
            start_epoch, start_step = state["epoch"], state["step"]
            # a run may resume on another number of processes: keep the images done
            start_step = start_step * state.get("processes", 1) // distributed.world_size()
            self.rows, self.best, sums = state["rows"], state["best"], tuple(state["sums"])
            say(f"resuming after epoch {start_epoch} (batch {start_step})")
        settings = dataclasses.asdict(self.config)
        self.tracker = Tracker(self.config.track if self.main else "", self.out, settings)
        try:
            with _deferred_interrupt() as self.interrupted:
                for epoch in range(start_epoch, len(plan)):
                    skip = start_step if epoch == start_epoch else 0
                    self._run_epoch(plan, epoch, skip, sums if skip else (0.0, 0))
        except BaseException:
            self.tracker.close()
            raise
        if self.main:
            from cropdoc.trust.fit import fit_split

            fit_split(self.out, self.cache, self.split, device=str(self.device))
            self._plot()
            write_run_report(self.out)
            self.tracker.finish([self.out / "losses.png", self.out / "lr_find.png"])
        return {
            "run": str(self.out),
            "best": self.best,
            "epochs": len(self.rows),
            "lr": lr,
            "device": str(self.device),
            "precision": self.precision,
            "train_images": min(
                len(self.split.train),
                len(self.train_batches) * self.config.bs * distributed.world_size(),
            ),
        }

    def _run_epoch(self, plan: list[tuple[Phase, int]], epoch: int, skip: int, sums) -> None:
        """Epoch ``epoch`` of ``plan`` from batch ``skip``: train, validate, keep the best
        epoch's bundle, write the metrics and the checkpoint."""
        phase, phase_epoch = plan[epoch]
        started = time.perf_counter()
        self.freeze(phase.frozen)
        size = self.stage_size(epoch, len(plan))
        if size != self.train_batches.aug.size:
            say(f"epoch {epoch}: training at {size[0]}x{size[1]}")
            self.train_batches.aug = dataclasses.replace(self.train_aug, size=size)
        sums = self.train_epoch(phase, phase_epoch, epoch, skip, sums)
        loss_sum, count = distributed.all_sum(list(sums), self.device)
        trained = time.perf_counter()
        row = {
            "epoch": epoch,
            "phase": phase.name,
            "train_loss": loss_sum / max(count, 1),
            **self.validate(),
            "train_seconds": trained - started,
            "seconds": time.perf_counter() - started,
        }
        self.rows.append(row)
        self._report(row)
        self.tracker.log_epoch(row, [group["lr"] for group in self.optimizer.param_groups])
        if self.best is None or self._rank(row) < self._rank(self.best):
            self.best = row
            self._save_bundle(row)
        self._write_metrics()
        self._checkpoint(epoch + 1, 0, (0.0, 0))

    def _rank(self, row: dict) -> tuple[float, float]:
        """What picks the best epoch (lowest first): the error rate of the label (or the
        metric of ``--best-target``), then the validation loss."""
        metric = "error_rate"
        if self.config.best_target and self.heads:
            metric = next(t.metric for t in self.heads if t.name == self.config.best_target)
        return row[metric], row["valid_loss"]

    @property
    def other_metrics(self) -> list[str]:
        """A multi-target run's metrics of its other targets (``variety_error_rate``, ...)."""
        return [t.metric for t in self.heads[1:]]

    @property
    def columns(self) -> list[str]:
        """The columns of ``metrics.csv``: ``METRICS`` with each other target's metric after
        the accuracy."""
        at = METRICS.index("accuracy") + 1
        return [*METRICS[:at], *self.other_metrics, *METRICS[at:]]

    def train_epoch(
        self, phase: Phase, phase_epoch: int, epoch: int, skip: int = 0, sums=(0.0, 0)
    ) -> tuple[float, int]:
        """Train epoch ``epoch`` (the ``phase_epoch``-th of ``phase``) from batch ``skip``,
        adding to ``sums``; returns (loss sum, images)."""
        per_epoch = len(self.train_batches)
        total_steps = phase.epochs * per_epoch
        loss_sum, count = sums
        accum = self.config.accum
        self.epoch = epoch
        with Progress(per_epoch - skip, f"epoch {epoch}", lines=False) as bar:
            for i, (inputs, targets) in enumerate(self.train_batches.epoch(epoch, skip), skip):
                self._schedule((phase_epoch * per_epoch + i) / total_steps, phase)
                try:
                    loss = self.forward_loss(inputs, targets)
                    self._stop_if_not_finite(loss, phase, epoch, i)
                    self.backward(loss, accum, update=(i + 1) % accum == 0 or i + 1 == per_epoch)
                except torch.cuda.OutOfMemoryError:
                    raise TrainingStopped(
                        f"out of GPU memory at batch size {self.config.bs}: try a smaller "
                        "--bs, --accum 2 (or more) or --grad-checkpointing"
                    ) from None
                loss_sum += loss.item() * len(targets)
                count += len(targets)
                bar.update()
                if distributed.any_true([self.interrupted()], self.device)[0]:
                    self.optimizer.zero_grad(set_to_none=True)
                    self._checkpoint(epoch, i + 1, (loss_sum, count))
                    raise TrainingStopped(
                        f"interrupted at epoch {epoch}, batch {i + 1}: checkpoint saved; "
                        f"continue with cropdoc train --resume {self.out}"
                    )
        return loss_sum, count

    def _schedule(self, pos: float, phase: Phase) -> None:
        """Set the one-cycle learning rates and momentum at ``pos`` (0..1) of ``phase``."""
        beta1 = schedule.one_cycle_momentum(pos, phase.pct_start)
        for group, lr in zip(self.optimizer.param_groups, phase.lrs, strict=True):
            group["lr"] = schedule.one_cycle_lr(pos, lr, phase.pct_start, phase.div)
            group["betas"] = (beta1, group["betas"][1])

    def _stop_if_not_finite(self, loss: torch.Tensor, phase: Phase, epoch: int, i: int) -> None:
        """Stop the run (every process) when the loss is NaN or infinite."""
        (bad,) = distributed.any_true([not torch.isfinite(loss)], self.device)
        if bad:
            raise TrainingStopped(
                f"the loss became {loss.item()} at epoch {epoch}, batch {i}: lower --lr "
                f"(now {max(phase.lrs):.2g}); the last good checkpoint is kept in "
                f"{self.out / 'checkpoint'}"
            )

    def _checkpoint(self, epoch: int, step: int, sums) -> None:
        """The first process writes the checkpoint: after ``step`` batches of ``epoch``."""
        if not self.main:
            return
        state = {
            "epoch": epoch,
            "step": step,
            "processes": distributed.world_size(),
            "rows": self.rows,
            "best": self.best,
            "sums": list(sums),
        }
        checkpoint.save_checkpoint(
            self.out / "checkpoint", self.model, self.optimizer, self.scaler, state
        )

    def _save_bundle(self, row: dict) -> None:
        from cropdoc.bundle import save_bundle

        if not self.main:
            return
        kept = ("epoch", "valid_loss", "error_rate", "accuracy", *self.other_metrics)
        metrics = {k: row[k] for k in kept}
        save_bundle(
            self.out,
            self.model,
            {
                "arch": self.config.arch,
                "classes": self.split.classes,
                "size": list(self.size),
                "item_size": list(parse_size(self.config.item_size)),
                "resize": self.config.resize,
                "mean": list(self.mean),
                "std": list(self.std),
                "cache_size": self.config.cache_size,
                "metrics": metrics,
                "tiles": dataclasses.asdict(self._tile_meta()) if self.config.tile else {},
                "targets": [dataclasses.asdict(t) for t in self.heads],
            },
        )

    def _tile_meta(self):
        """How this run reads a photo with ``--tile`` (the bundle's ``tiles``)."""
        from cropdoc.bundle import TileMeta

        config = self.config
        return TileMeta(config.tile, config.overlap, config.mil, config.tiles_per_image)

    def _write_metrics(self) -> None:
        if not self.main:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow(
                {k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()}
            )
        atomic_write_text(self.out / "metrics.csv", buffer.getvalue())

    def _report(self, row: dict) -> None:
        """The epoch's line of the metrics table (its header first)."""
        extra = self.other_metrics
        if self._header_due:
            self._header_due = False
            say(
                f"{'epoch':>5} {'phase':>8} {'train_loss':>10} {'valid_loss':>10} "
                f"{'error_rate':>10} {'accuracy':>8} "
                + "".join(f"{name:>{max(10, len(name))}} " for name in extra)
                + f"{'time':>7}"
            )
        say(
            f"{row['epoch']:>5} {row['phase']:>8} {row['train_loss']:>10.4f} "
            f"{row['valid_loss']:>10.4f} {row['error_rate']:>10.4f} "
            f"{row['accuracy']:>8.4f} "
            + "".join(f"{row[name]:>{max(10, len(name))}.4f} " for name in extra)
            + f"{row['seconds']:>6.1f}s"
        )

    def _plot(self) -> None:
        from cropdoc.plots import png_figure

        epochs = [r["epoch"] for r in self.rows]
        with png_figure(self.out / "losses.png") as ax:
            for key, label in (
                ("train_loss", "train loss"),
                ("valid_loss", "valid loss"),
                ("error_rate", "error rate"),
            ):
                ax.plot(epochs, [r[key] for r in self.rows], "o-", label=label)
            ax.set_xlabel("epoch")
            ax.legend()


@contextlib.contextmanager
def _deferred_interrupt():
    """Defer Ctrl-C to the end of the current step; yields a function telling if it came."""
    received: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGINT, previous)


def _pixels(size: tuple[int, int]) -> int:
    return size[0] * size[1]


def new_run_folder(config: TrainConfig) -> Path:
    """``config.out``, or ``runs/<arch>-<n>``; refuses a folder that already holds a run."""
    if config.out:
        out = Path(config.out)
        if (out / "config.yaml").exists():
            raise UserError(
                f"{out} already holds a run: resume it with --resume {out}, or choose another --out"
            )
    else:
        base = Path("runs") / config.arch.replace("/", "_").split(".")[0]
        n = 1
        while (out := base.with_name(f"{base.name}-{n}")).exists():
            n += 1
    out.mkdir(parents=True, exist_ok=True)
    return out


def train(config: TrainConfig) -> dict:
    """Train a model as ``config`` says, in a new run folder; returns the summary.

    Launched by torchrun (``torchrun --nproc_per_node N -m cropdoc train ...``), every process
    trains on its share of each batch list with DDP; only the first writes the run folder.
    """
    config = config.checked()
    distributed.setup()
    if distributed.active() and config.lr == "auto":
        raise UserError("--lr auto does not run across processes: run cropdoc lr-find first")
    out = new_run_folder(config) if distributed.is_main() else None
    config = dataclasses.replace(config, out=str(distributed.broadcast(out)))
    out = Path(config.out)
    try:
        trainer = Trainer(config)  # fails early (bad data, no weights): no run is left
    except BaseException:
        if distributed.is_main() and not any(out.iterdir()):
            out.rmdir()
        raise
    lr = config.lr
    if trainer.main:
        atomic_write_text(out / "config.yaml", trainer.config.to_yaml())  # bs auto resolved
    if lr == "auto":
        found = trainer.find_lr()
        lr_find.plot(found, out / "lr_find.png")
        lr = found.valley
        say(f"lr auto: valley {found.valley:.2e} (slide {found.slide:.2e})")
    if trainer.main:
        atomic_write_text(out / "lr.txt", f"{lr}\n")
    try:
        return trainer.fit(float(lr))
    finally:
        distributed.cleanup()


def resume(run: str | os.PathLike) -> dict:
    """Continue an interrupted run from its last checkpoint."""
    run = Path(run)
    config = dataclasses.replace(TrainConfig.from_yaml(run / "config.yaml"), out=str(run))
    lr_file = run / "lr.txt"
    if not lr_file.exists() or not (run / "checkpoint" / "state.json").exists():
        raise UserError(f"{run} has no checkpoint yet: start it again with cropdoc train")
    trainer = Trainer(config)
    try:
        return trainer.fit(float(lr_file.read_text()), resume=True)
    finally:
        distributed.cleanup()
