"""Training: fastai's ``fine_tune`` and ``fit_one_cycle`` as one plain loop over epochs.

``fine_tune``: the body is frozen for ``freeze_epochs`` of one-cycle on the head; then
everything (but the early stages ``--freeze-early`` keeps) trains for ``epochs`` of
one-cycle with the body's learning rate ``body_lr`` times the head's. ``from_scratch``:
one-cycle on everything. A checkpoint is written after every epoch (and on Ctrl-C);
``resume`` continues from it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cropdoc.config import TrainConfig
from cropdoc.contract import targets as multi
from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write_text
from cropdoc.core.progress import Progress, say
from cropdoc.engine import (
    builders,
    checkpoint,
    defaults,
    distributed,
    lr_find,
    records,
    regularise,
    schedule,
)
from cropdoc.engine.ema import make_ema
from cropdoc.engine.runs import absolute_paths, deferred_interrupt, new_run_folder
from cropdoc.engine.schedule import Phase, phases
from cropdoc.engine.tracking import Tracker
from cropdoc.engine.validate import validate
from cropdoc.model import multihead
from cropdoc.model.archs import early_parameters, has_fixed_size, is_norm, normalisation
from cropdoc.model.device import autocast, pick_device, resolve_precision
from cropdoc.model.kinds import model_kind

__all__ = ["Phase", "Trainer", "TrainingStopped", "phases", "resume", "train"]


class TrainingStopped(UserError):
    """Training stopped early (NaN loss, out of memory, Ctrl-C); the message says why."""


class Trainer:
    """Everything a run needs: data, model, optimizer, precision, run folder.

    ``config`` is checked and copied: the caller's object is never changed (``--bs auto``
    is resolved in ``trainer.config``)."""

    def __init__(self, config: TrainConfig):
        config = defaults.choose_sizes(config.checked())
        distributed.setup()
        self.main = distributed.is_main()
        self.out = Path(config.out)
        self.device = pick_device(config.device)
        if distributed.active() and self.device.type == "cuda":
            self.device = torch.device("cuda", distributed.local_rank())
        self.precision = resolve_precision(config.precision, self.device)
        torch.manual_seed(config.seed)
        self.config = config
        self.cache, self.split = builders.build_data(config)
        # a multi-target run's targets (the label first) and their values; [] for one target
        self.heads = multi.plan(config, self.cache, self.split.classes, self.split.train)
        self.labels = (
            multi.values(self.heads, self.cache, self.split.targets) if self.heads else None
        )
        self.outputs = sum(t.width for t in self.heads) or len(self.split.classes)
        self.kind = model_kind(records.tile_meta(config))  # whole-photo or tiled
        self.model = builders.build_model(
            config, self.kind, len(self.split.classes), self.outputs, self.device
        )
        self.mean, self.std = normalisation(self.model)
        self.provenance = builders.provenance(config, self.model)
        self.size = config.parsed.size
        self.stages = list(config.parsed.stages)
        if self.stages and has_fixed_size(config.arch):
            raise UserError(
                f"{config.arch} takes one input size: progressive resizing needs a model that "
                "takes any size (a CNN such as resnet or convnext)"
            )
        if config.bs == "auto":
            bs = builders.auto_batch_size(self, max([self.size, *self.stages], key=_pixels))
            self.config = config = dataclasses.replace(config, bs=bs)
        self.config = config = defaults.choose_epochs(config, len(self.split.train))
        self.train_aug = builders.train_augment(config, self.size)
        labels = self.split.targets if self.labels is None else self.labels
        self.train_batches, self.valid_batches = builders.build_batches(
            config,
            self.kind,
            self.cache,
            self.split,
            labels,
            self.train_aug,
            self.device,
            self.mean,
            self.std,
        )
        self.body, self.head, self.optimizer = builders.build_optimizer(
            self.model, config.wd, self.device
        )
        # --freeze-early: what stays frozen in every phase, of a pretrained body only
        pretrained = config.weights is not None or (config.pretrained and not config.from_scratch)
        self.early = early_parameters(self.model) if config.freeze_early and pretrained else set()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ema = make_ema(self.model, config.ema)  # --ema: the weights' moving average
        train_labels = self.split.targets[self.split.train]
        weights = regularise.class_weights(config.class_weights, train_labels, self.split.classes)
        self.class_weights = None if weights is None else weights.to(self.device)
        self.epochs = sum(p.epochs for p in phases(config, 1.0))  # of the whole run
        self.frozen: bool | None = None  # what the forward wrapper was made for
        self.forward = self._wrap()
        self.epoch = 0  # the epoch being trained (for hooks and logs)
        self.rows: list[dict] = []  # metrics of the epochs done
        self.best: dict | None = None  # the best epoch's row (its bundle is saved)
        self.interrupted = lambda: False  # set by fit(): has Ctrl-C come?
        self._header_due = True  # the metrics table's header, before the first row shown

    # -- pieces ---------------------------------------------------------------------------

    def stage_size(self, epoch: int, epochs: int) -> tuple[int, int]:
        """The training size of ``epoch`` of ``epochs``: with progressive resizing the
        epochs are split evenly among the sizes, in order; else the size."""
        if not self.stages:
            return self.size
        return self.stages[min(len(self.stages) - 1, epoch * len(self.stages) // epochs)]

    def autocast(self):
        return autocast(self.device, self.precision)

    def freeze(self, frozen: bool) -> None:
        """Freeze the body (the frozen epochs then cost about a forward pass through it;
        with ``--train-bn`` its norm layers stay trainable, as fastai's train_bn), or
        unfreeze all but the early stages ``--freeze-early`` keeps frozen (``self.early``)."""
        for p in self.body:
            p.requires_grad_(not frozen and id(p) not in self.early)
        if frozen and self.config.train_bn:
            for module in self.model.modules():
                if is_norm(module):
                    for p in module.parameters(recurse=False):
                        p.requires_grad_(id(p) not in self.early)
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

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is validated and kept: the moving average with ``--ema``, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def forward_loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, mixed: regularise.Mixed | None = None
    ) -> torch.Tensor:
        """The training loss of one batch (the model in training mode), with label
        smoothing and class weights, of a batch ``mixed`` by mixup or cutmix."""
        self.model.train()
        with self.autocast():
            logits = self.forward(inputs).float()
        smoothing, weights = self.config.label_smoothing, self.class_weights
        if self.heads:
            return multihead.loss(logits, targets, self.heads, smoothing, weights, mixed)

        def ce(labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, labels, weight=weights, label_smoothing=smoothing)

        if mixed is None:
            return ce(targets)
        return mixed.lam * ce(targets) + (1 - mixed.lam) * ce(targets[mixed.perm])

    def regularise(self, inputs: torch.Tensor, epoch: int, step: int):
        """Random erasing, then mixup or cutmix, of one training batch (seeded by the run's
        seed, the epoch and the step); the inputs and how they were mixed (or None)."""
        config = self.config
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 10_007 + step)
        inputs = regularise.erase(inputs, generator, config.random_erasing)
        if epoch >= self.epochs - config.mix_off_epochs:
            return inputs, None  # the last epochs train unmixed
        return regularise.mix(inputs, generator, config.mixup, config.cutmix, config.mix_prob)

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

    def validate(self) -> dict:
        """Valid loss, error rate and accuracy over every validation image, once; a
        multi-target run adds each other target's error rate or mean absolute error."""
        return validate(self)

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
        start = {"epoch": 0, "step": 0, "rows": [], "best": None, "sums": (0.0, 0)}
        if resume:
            start = checkpoint.resume_point(
                self.out / "checkpoint",
                self.model,
                self.optimizer,
                self.scaler,
                distributed.world_size(),
                self.ema,
            )
            say(f"resuming after epoch {start['epoch']} (batch {start['step']})")
        self.rows, self.best = start["rows"], start["best"]
        settings = dataclasses.asdict(self.config)
        self.tracker = Tracker(self.config.parsed.track if self.main else (), self.out, settings)
        try:
            with deferred_interrupt() as self.interrupted:
                for epoch in range(start["epoch"], len(plan)):
                    skip = start["step"] if epoch == start["epoch"] else 0
                    self._run_epoch(plan, epoch, skip, start["sums"] if skip else (0.0, 0))
        except BaseException:
            self.tracker.close()
            raise
        if self.main:
            from cropdoc.engine.finish import finish_run

            finish_run(self)
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
        records.say_row(row, self.other_metrics, header=self._header_due)
        self._header_due = False
        self.tracker.log_epoch(row, [group["lr"] for group in self.optimizer.param_groups])
        if self.best is None or self._rank(row) < self._rank(self.best):
            self.best = row
            if self.main:
                records.save_best(self, row)
        if self.main:
            records.write_metrics(self.out, self.columns, self.rows)
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
        """The columns of ``metrics.csv`` (``records.METRICS`` and the other targets')."""
        return records.columns(self.other_metrics)

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
                    inputs, mixed = self.regularise(inputs, epoch, i)
                    loss = (
                        self.forward_loss(inputs, targets)
                        if mixed is None
                        else self.forward_loss(inputs, targets, mixed)
                    )
                    self._stop_if_not_finite(loss, phase, epoch, i)
                    update = (i + 1) % accum == 0 or i + 1 == per_epoch
                    self.backward(loss, accum, update=update)
                    if update and self.ema is not None:
                        self.ema.update(self.model)
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
        for group in self.optimizer.param_groups:  # each takes its role's rate: body or head
            lr = phase.lrs[group["role"]]
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
            self.out / "checkpoint", self.model, self.optimizer, self.scaler, state, self.ema
        )


def _pixels(size: tuple[int, int]) -> int:
    return size[0] * size[1]


def train(config: TrainConfig) -> dict:
    """Train a model as ``config`` says, in a new run folder; returns the summary.

    Launched by torchrun (``torchrun --nproc_per_node N -m cropdoc train ...``), every process
    trains on its share of each batch list with DDP; only the first writes the run folder.
    """
    config = absolute_paths(config.checked())
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
