"""Batches from a prepared cache: a split, uint8 canvases gathered by background threads,
then resize and augmentation of the whole batch on the training device."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cropdoc.core.errors import UserError
from cropdoc.data.augment import Augment, transform_batch
from cropdoc.data.cache import Cache

if TYPE_CHECKING:
    from cropdoc.config import TrainConfig


@dataclass(frozen=True)
class Split:
    """Indices into a cache for training and validation, and the class names."""

    train: np.ndarray
    valid: np.ndarray
    classes: list[str]
    targets: np.ndarray  # class index of every cache entry (-1 when unlabelled)


def split_cache(
    cache: Cache,
    valid_pct: float = 0.2,
    seed: int = 42,
    fold: tuple[int, int] | None = None,
    split_by: str = "",
    classes: list[str] | tuple[str, ...] = (),
) -> Split:
    """The dataset's own train/valid split when it has one, else a seeded random split;
    with ``fold`` (K, N), fold K of N stratified folds of every labelled image (whatever its
    split) is the validation split and the other folds train; with ``split_by`` (a manifest
    column), whole groups of that column are held out (``group_split``). ``classes``: the
    classes to answer when they are not the data's (a model adapted to new photos keeps its
    own: a class the photos lack is allowed, a label it does not know is refused)."""
    given = list(classes)
    classes = given or cache.classes
    index = {c: i for i, c in enumerate(classes)}
    if given:
        check_known("the photos", [e.label for e in cache.images if e.label], given)
    targets = np.array([index.get(e.label, -1) if e.label else -1 for e in cache.images])
    splits = np.array([e.split or "" for e in cache.images])
    labelled = np.flatnonzero(targets >= 0)
    counts = np.bincount(targets[labelled], minlength=len(classes))
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty and not given:
        raise UserError(
            f"class {', '.join(empty)} has no readable image (cropdoc prepare lists the "
            "unreadable files with the reason): fix them, or remove the class from the dataset"
        )
    if fold is not None:
        valid = labelled[fold_of(targets[labelled], fold[1], seed) == fold[0] - 1]
        train = np.setdiff1d(labelled, valid)
    elif split_by:
        valid = group_split(cache, labelled, split_by, valid_pct, seed)
        train = np.setdiff1d(labelled, valid)
    elif (splits[labelled] == "valid").any():
        valid = labelled[splits[labelled] == "valid"]
        train = labelled[np.isin(splits[labelled], ["train", ""])]
    else:
        order = np.random.default_rng(seed).permutation(labelled)
        n_valid = max(1, round(valid_pct * len(order)))
        valid, train = np.sort(order[:n_valid]), np.sort(order[n_valid:])
    if len(train) == 0 or len(valid) == 0:
        raise UserError("the split leaves no training or no validation images: add images")
    return Split(train, valid, classes, targets)


def labelled_images(
    run: Path, cache_size: int, data=None, classes: tuple[str, ...] | list[str] = ()
) -> tuple[Cache, np.ndarray, np.ndarray]:
    """The cache, the indices and the class indices (into ``classes``) of the images to
    evaluate the run folder ``run`` on: its validation split, or the labelled ``data``
    (prepared at ``cache_size``; its validation split when it has one, else every labelled
    image). A class of ``data`` that ``classes`` lacks is refused in one line naming it."""
    from cropdoc.config import TrainConfig
    from cropdoc.data.cache import open_cache, prepare

    if data is None:
        config_file = Path(run) / "config.yaml"
        if not config_file.exists():
            raise UserError(
                f"{run} is a bundle without its run: give a labelled dataset to evaluate on"
            )
        config = TrainConfig.from_yaml(config_file)
        cache = open_cache(config.data, config.cache, config.cache_size, config.workers)
        indices = run_split(cache, config).valid
    else:
        cache = Cache(prepare(data, size=cache_size).cache)
        labelled = np.array([i for i, e in enumerate(cache.images) if e.label], dtype=int)
        valid = np.array([i for i in labelled if cache.images[i].split == "valid"], dtype=int)
        if len(labelled) == 0:
            raise UserError(f"{data} has no labelled images to evaluate on")
        indices = valid if len(valid) else labelled
    known = list(classes)
    if known:
        check_known(str(data), [cache.images[i].label for i in indices], known)
    targets = np.array([known.index(cache.images[i].label) for i in indices] if known else [])
    return cache, indices, targets.astype(int)


def check_known(source: str, labels, known) -> None:
    """Refuse, in one line, labels of ``source`` that are not among the model's ``known``
    classes."""
    unknown = sorted(set(labels) - set(known))
    if unknown:
        raise UserError(
            f"{source} has classes the model does not know: {', '.join(unknown[:5])} (the "
            f"model's: {', '.join(list(known)[:10])}); leave their photos out or train on them"
        )


def run_split(cache: Cache, config: TrainConfig) -> Split:
    """The split a run of ``config`` trains and validates on: its fold, its held-out groups,
    the dataset's own split or the seeded one (``split_cache``)."""
    fold = config.parsed.fold
    return split_cache(cache, config.valid_pct, config.seed, fold, config.split_by, config.classes)


def group_values(cache: Cache, indices: np.ndarray, column: str) -> np.ndarray:
    """Each image's value of a manifest ``column`` (``folder``: its folder's name; ``""``
    for an image without one); a column no image has is refused in one line."""
    entries = [cache.images[int(i)] for i in indices]
    if column == "folder":
        return np.array([Path(e.path).parent.name for e in entries])
    if not any(column in e.meta for e in entries):
        found = sorted({k for e in entries for k in e.meta})
        raise UserError(
            f"the manifest has no column {column!r} to group by "
            f"(its other columns: {', '.join(found) or 'none'})"
        )
    return np.array(["" if e.meta.get(column) is None else str(e.meta[column]) for e in entries])


def group_split(
    cache: Cache, labelled: np.ndarray, column: str, valid_pct: float, seed: int
) -> np.ndarray:
    """The validation images when whole groups of ``column`` are held out: groups in a
    seeded order, taken until they hold ``valid_pct`` of the images, passing over a group
    whose holding out would leave a class with no training image (so never every group).
    An image without a value is in the group ``""``."""
    groups = group_values(cache, labelled, column)
    labels = np.array([cache.images[int(i)].label for i in labelled])
    names = sorted(set(groups))
    held = np.zeros(len(labelled), bool)
    for n in np.random.default_rng(seed).permutation(len(names)):
        more = held | (groups == names[n])
        if set(labels[~more]) == set(labels):  # every class still has training images
            held = more
        if held.sum() >= valid_pct * len(labelled):
            break
    if not held.any():
        raise UserError(
            f"--split-by {column}: no group can be held out without taking every training "
            "image of some class: split by another column"
        )
    return np.sort(labelled[held])


def fold_of(targets: np.ndarray, folds: int, seed: int = 42) -> np.ndarray:
    """The fold (0 to ``folds`` - 1) of each image: each class dealt out in a seeded order,
    so every fold holds about the same share of every class."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(targets), dtype=int)
    for label in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == label))
        out[members] = (np.arange(len(members)) + rng.integers(folds)) % folds
    return out


def balanced_order(indices: np.ndarray, labels: np.ndarray, rng) -> np.ndarray:
    """``--balanced-sampling``: as many draws as there are photos, with replacement, each
    class as likely as any other."""
    classes, counts = np.unique(labels, return_counts=True)
    weight = {c: 1 / (len(classes) * n) for c, n in zip(classes, counts, strict=True)}
    p = np.array([weight[c] for c in labels])
    return rng.choice(indices, size=len(indices), replace=True, p=p / p.sum())


class Batches:
    """Iterates ``(inputs, targets)`` over a set of cache entries, one epoch at a time.

    A background thread pool gathers the uint8 pixels of upcoming batches from the memory
    map (a copy, no decoding); the device then resizes and augments the whole batch.
    """

    def __init__(
        self,
        cache: Cache,
        indices: np.ndarray,
        targets: np.ndarray,
        bs: int,
        aug: Augment,
        train: bool,
        device: torch.device,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        seed: int = 42,
        workers: int | None = None,
        drop_last: bool | None = None,
        shard: tuple[int, int] = (0, 1),
        balanced: bool = False,
    ):
        self.cache, self.indices, self.targets = cache, np.asarray(indices), targets
        self.shard = shard  # (rank, processes): each process takes every n-th batch
        self.bs, self.aug, self.train, self.device, self.seed = bs, aug, train, device, seed
        self.balanced = balanced and train  # --balanced-sampling: each class as likely
        self.drop_last = train if drop_last is None else drop_last
        if self.drop_last and len(self.indices) < bs:
            self.drop_last = False  # a tiny dataset still gets one (smaller) batch
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)

    def __len__(self) -> int:
        return len(self.order(0))

    def order(self, epoch: int) -> list[np.ndarray]:
        """This process's batches of indices of an epoch (shuffled by seed and epoch when
        training). With several processes, training batches are cut to a multiple of their
        number (so all step together) and validation batches are all kept (each image once)."""
        n = len(self.indices)
        count = n // self.bs if self.drop_last else -(-n // self.bs)
        indices = self.indices
        if self.balanced:
            labels = self.targets if self.targets.ndim == 1 else self.targets[:, 0]
            rng = np.random.default_rng([self.seed, epoch])
            indices = balanced_order(indices, labels[indices].astype(int), rng)
        elif self.train:
            indices = np.random.default_rng([self.seed, epoch]).permutation(indices)
        batches = [indices[i : i + self.bs] for i in range(0, count * self.bs, self.bs)]
        rank, processes = self.shard
        if self.train:
            batches = batches[: len(batches) // processes * processes]
        return batches[rank::processes]

    def epoch(self, epoch: int = 0, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches of ``epoch``, leaving out the first ``skip`` (for resuming)."""
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch + 7919 * self.shard[0])
        for canvas, sizes, targets in self._gather(self.order(epoch)[skip:]):
            canvas = canvas.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            inputs = transform_batch(
                canvas, sizes, self.aug, self.train, self.mean, self.std, generator
            )
            yield inputs, targets

    def _gather(self, batches: list[np.ndarray]) -> Iterator[tuple]:
        """Canvases of upcoming batches, made a few ahead by a thread pool, in order."""
        pin = self.device.type == "cuda"
        upcoming = iter(batches)
        with ThreadPoolExecutor(self.workers) as pool:
            pending = deque(
                pool.submit(self._canvas, b, pin) for b in islice(upcoming, self.workers + 1)
            )
            while pending:
                result = pending.popleft().result()
                following = next(upcoming, None)
                if following is not None:
                    pending.append(pool.submit(self._canvas, following, pin))
                yield result

    def _canvas(self, batch: np.ndarray, pin: bool) -> tuple:
        canvas, sizes = make_canvas([self.cache.pixels(int(i)) for i in batch], pin)
        # class indices; a multi-target run's (images, targets) values are floats (NaN: none)
        kind = torch.long if self.targets.ndim == 1 else torch.float32
        targets = torch.as_tensor(self.targets[batch], dtype=kind)
        return canvas, sizes, targets


def make_canvas(images: list[np.ndarray], pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(H, W, 3)`` uint8 images of any sizes into one zero-padded ``(B, H, W, 3)``
    canvas (each in its top-left corner) and their ``(B, 2)`` sizes."""
    shapes = np.array([image.shape[:2] for image in images])
    height, width = shapes.max(axis=0)
    canvas = torch.zeros((len(images), height, width, 3), dtype=torch.uint8, pin_memory=pin)
    view = canvas.numpy()
    for row, image in enumerate(images):
        h, w = shapes[row]
        view[row, :h, :w] = image
    return canvas, torch.as_tensor(shapes)
