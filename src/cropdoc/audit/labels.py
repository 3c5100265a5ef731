"""Likely label errors and out-of-scope photos, from out-of-fold predictions.

Every labelled photo is scored by a model that never trained on it: K runs, each trained
on all folds but one (``train --fold K/N``) and scoring the fold it left out with its
calibrated probabilities and its out-of-scope score. Confident learning (cleanlab's
``find_label_issues``) then picks the photos whose given label the others contradict,
except between two classes the models confuse on a large share of their photos (cleanlab's
``find_overlapping_classes``): there a disagreement says more about the pair than about
the photo, so the pair is one finding of its own.
Each fold is an ordinary run folder under ``OUT/folds/``: a fold that was interrupted
resumes from its checkpoint, a finished one is not trained again.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cropdoc.config import TrainConfig
from cropdoc.core.files import atomic_write_json
from cropdoc.core.progress import say
from cropdoc.data.cache import Cache
from cropdoc.data.loader import run_split, split_cache

SCORES = "oof.json"  # a fold's out-of-fold scores; its presence marks the fold done
# cleanlab's filter: how many photos its confident joint counts as mislabelled, those of
# lowest self-confidence; chosen among cleanlab's filters by measurement (docs/doctor.md)
FILTER = "low_self_confidence"
# share of two classes' photos that out-of-fold predictions put in the other class, from
# which the pair overlaps (5% of labels flipped at random put about 0.6% between two of ten
# classes; docs/doctor.md measured 36% for the demo's hispa and normal, 3% for the next pair)
OVERLAP = 0.2


@dataclass
class OutOfFold:
    """Calibrated probabilities and out-of-scope scores of every labelled photo."""

    indices: np.ndarray  # cache indices of the labelled photos
    targets: np.ndarray  # their given class
    probs: np.ndarray  # (photos, classes), each from the fold that left the photo out
    ood: np.ndarray  # out-of-scope score (1.0: the model's threshold)
    classes: list[str]


FoldRunner = Callable[[list[TrainConfig], Path, Cache], list[dict]]


def out_of_fold(
    config: TrainConfig, folds: int, folder: Path, cache: Cache, runner: FoldRunner | None = None
) -> OutOfFold:
    """Train the ``folds`` runs of ``config`` under ``folder`` (or resume them) and gather
    each photo's scores, from ``cache`` (the dataset's, prepared), by the run that left it
    out. ``runner`` trains them (``(configs, folder, cache) -> their scores``, in order);
    by default one after the other here (``cropdoc.scale.folds``: as Ray tasks)."""
    configs = [dataclasses.replace(config, fold=f"{k}/{folds}") for k in range(1, folds + 1)]
    parts = [_scored_before(c, folder) for c in configs]  # a rerun starts no runner for these
    todo = [n for n, part in enumerate(parts) if part is None]
    if todo:
        done = (runner or _in_turn)([configs[n] for n in todo], folder, cache)
        for n, part in zip(todo, done, strict=True):
            parts[n] = part
    indices = np.concatenate([np.array(p["indices"], dtype=int) for p in parts])
    order = np.argsort(indices)
    split = split_cache(cache, config.valid_pct, config.seed, split_by=config.split_by)
    return OutOfFold(
        indices=indices[order],
        targets=split.targets[indices[order]],
        probs=np.concatenate([np.array(p["probs"]) for p in parts])[order],
        ood=np.concatenate([np.array(p["ood"]) for p in parts])[order],
        classes=split.classes,
    )


def _in_turn(configs: list[TrainConfig], folder: Path, cache: Cache) -> list[dict]:
    """The folds' scores, trained one after the other."""
    parts = []
    for config in configs:
        say(f"doctor: fold {config.fold.replace('/', ' of ')}")
        parts.append(fold_scores(config, folder, cache))
    return parts


def fold_folder(config: TrainConfig, folder: Path) -> Path:
    """Where the doctor trains fold ``config.fold`` (``k/n``): ``folder/fold-k-of-n``."""
    k, n = config.parsed.fold
    return folder / f"fold-{k}-of-{n}"


def _scored_before(config: TrainConfig, folder: Path) -> dict | None:
    """The fold's scores if a run before wrote them, else None."""
    path = fold_folder(config, folder) / SCORES
    if not path.exists():
        return None
    say(f"fold {config.fold.replace('/', ' of ')}: scored before, reused")
    return json.loads(path.read_text(encoding="utf-8"))


def fold_scores(config: TrainConfig, folder: Path, cache: Cache) -> dict:
    """One fold's scores, trained (or resumed) and scored; ``out_of_fold`` reads those
    scored before and hands only the rest to its runner."""
    from cropdoc.engine.trainer import resume, train
    from cropdoc.evaluation.evaluate import cache_scores
    from cropdoc.model.device import pick_device
    from cropdoc.model.scoring import load_scoring_model

    run = fold_folder(config, folder)
    if (run / "checkpoint" / "state.json").exists():
        resume(run)
    else:
        if run.exists():
            shutil.rmtree(run)  # started, but stopped before its first checkpoint
        train(dataclasses.replace(config, out=str(run)))
    model, meta = load_scoring_model(run)
    valid = run_split(cache, config).valid  # the fold's own: config.fold is k/n
    views, ood, _ = cache_scores(model, meta, cache, valid, device=pick_device(config.device))
    scores = {"indices": valid.tolist(), "probs": views[0].tolist(), "ood": ood.tolist()}
    atomic_write_json(run / SCORES, scores)
    return scores


def overlapping_classes(oof: OutOfFold, share: float = OVERLAP) -> list[dict]:
    """Pairs of classes (three or more in the dataset) whose photos the out-of-fold
    predictions put in the other class of the pair at least ``share`` of the time, most
    confused first: the two class indices, cleanlab's count of such photos, their share of
    the two classes' photos, and the cache indices of the photos predicted as the other."""
    from cleanlab.dataset import find_overlapping_classes

    if len(oof.classes) < 3 or len(oof.targets) < 2 * len(oof.classes):
        return []
    table = find_overlapping_classes(labels=oof.targets, pred_probs=oof.probs)
    counts = np.bincount(oof.targets, minlength=len(oof.classes))
    predicted = oof.probs.argmax(1)
    pairs = []
    for a, b, n in zip(
        table["Class Index A"],
        table["Class Index B"],
        table["Num Overlapping Examples"],
        strict=True,
    ):
        ratio = n / (counts[a] + counts[b])
        if ratio < share:
            continue
        crossed = ((oof.targets == a) & (predicted == b)) | ((oof.targets == b) & (predicted == a))
        order = np.argsort(oof.probs[crossed, oof.targets[crossed]])  # most doubted label first
        photos = oof.indices[crossed][order]
        pairs.append(
            {
                "classes": (int(a), int(b)),
                "count": int(n),
                "share": float(ratio),
                "indices": [int(i) for i in photos],
            }
        )
    return pairs


def label_issues(
    oof: OutOfFold, method: str = FILTER, skip: Iterable[tuple[int, int]] = ()
) -> list[dict]:
    """The photos whose given label is likely wrong (cleanlab's confident learning with the
    filter ``method``) and whose out-of-fold prediction is another class, most likely
    first: cache index, given and suggested class, the score (1 minus the out-of-fold
    probability of the given label) and the suggested class's probability. A photo whose
    given and predicted classes are a pair of ``skip`` (classes that overlap) is left out:
    that pair is the finding."""
    from cleanlab.filter import find_label_issues

    if len(oof.targets) < 2 * len(oof.classes):
        return []
    pairs = {frozenset(pair) for pair in skip}
    predicted = oof.probs.argmax(1)
    ranked = find_label_issues(
        labels=oof.targets,
        pred_probs=oof.probs,
        filter_by=method,
        return_indices_ranked_by="self_confidence",
    )
    return [
        {
            "index": int(oof.indices[i]),
            "given": oof.classes[int(oof.targets[i])],
            "suggested": oof.classes[int(predicted[i])],
            "score": round(1 - float(oof.probs[i, oof.targets[i]]), 4),
            "prob": round(float(oof.probs[i].max()), 4),
        }
        for i in ranked
        if predicted[i] != oof.targets[i]
        and frozenset((int(predicted[i]), int(oof.targets[i]))) not in pairs
    ]
