"""Likely label errors and out-of-scope photos, from out-of-fold predictions.

Every labelled photo is scored by a model that never trained on it: K runs, each trained
on all folds but one (``train --fold K/N``) and scoring the fold it left out with its
calibrated probabilities and its out-of-scope score. Confident learning (cleanlab's
``find_label_issues``) then picks the photos whose given label the others contradict.
Each fold is an ordinary run folder under ``OUT/folds/``: a fold that was interrupted
resumes from its checkpoint, a finished one is not trained again.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cropdoc.config import TrainConfig, parse_fold
from cropdoc.data.cache import Cache
from cropdoc.data.loader import split_cache
from cropdoc.files import atomic_write_json
from cropdoc.progress import say

SCORES = "oof.json"  # a fold's out-of-fold scores; its presence marks the fold done
# cleanlab's filter: how many photos its confident joint counts as mislabelled, those of
# lowest self-confidence; chosen among cleanlab's filters by measurement (docs/doctor.md)
FILTER = "low_self_confidence"


@dataclass
class OutOfFold:
    """Calibrated probabilities and out-of-scope scores of every labelled photo."""

    indices: np.ndarray  # cache indices of the labelled photos
    targets: np.ndarray  # their given class
    probs: np.ndarray  # (photos, classes), each from the fold that left the photo out
    ood: np.ndarray  # out-of-scope score (1.0: the model's threshold)
    classes: list[str]


def out_of_fold(config: TrainConfig, folds: int, folder: Path, cache: Cache) -> OutOfFold:
    """Train the ``folds`` runs of ``config`` under ``folder`` (or resume them) and gather
    each photo's scores, from ``cache`` (the dataset's, prepared), by the run that left it
    out."""
    parts = []
    for k in range(1, folds + 1):
        say(f"doctor: fold {k} of {folds}")
        parts.append(_fold(dataclasses.replace(config, fold=f"{k}/{folds}"), folder, cache))
    indices = np.concatenate([np.array(p["indices"], dtype=int) for p in parts])
    order = np.argsort(indices)
    split = split_cache(cache, config.valid_pct, config.seed)
    return OutOfFold(
        indices=indices[order],
        targets=split.targets[indices[order]],
        probs=np.concatenate([np.array(p["probs"]) for p in parts])[order],
        ood=np.concatenate([np.array(p["ood"]) for p in parts])[order],
        classes=split.classes,
    )


def _fold(config: TrainConfig, folder: Path, cache: Cache) -> dict:
    """One fold's scores: read when done before, else trained (or resumed) and scored."""
    from cropdoc.device import pick_device
    from cropdoc.engine.trainer import resume, train
    from cropdoc.evaluation.evaluate import cache_scores
    from cropdoc.trust.module import load_scoring_model

    k, n = parse_fold(config.fold)
    run = folder / f"fold-{k}-of-{n}"
    if (run / SCORES).exists():
        say(f"fold {k} of {n}: scored before, reused")
        return json.loads((run / SCORES).read_text(encoding="utf-8"))
    if (run / "checkpoint" / "state.json").exists():
        resume(run)
    else:
        if run.exists():
            shutil.rmtree(run)  # started, but stopped before its first checkpoint
        train(dataclasses.replace(config, out=str(run)))
    model, meta = load_scoring_model(run)
    valid = split_cache(cache, config.valid_pct, config.seed, (k, n)).valid
    views, ood, _ = cache_scores(model, meta, cache, valid, device=pick_device(config.device))
    scores = {"indices": valid.tolist(), "probs": views[0].tolist(), "ood": ood.tolist()}
    atomic_write_json(run / SCORES, scores)
    return scores


def label_issues(oof: OutOfFold, method: str = FILTER) -> list[dict]:
    """The photos whose given label is likely wrong (cleanlab's confident learning with the
    filter ``method``) and whose out-of-fold prediction is another class, most likely
    first: cache index, given and suggested class, the score (1 minus the out-of-fold
    probability of the given label) and the suggested class's probability."""
    from cleanlab.filter import find_label_issues

    if len(oof.targets) < 2 * len(oof.classes):
        return []
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
            "suggested": oof.classes[int(oof.probs[i].argmax())],
            "score": round(1 - float(oof.probs[i, oof.targets[i]]), 4),
            "prob": round(float(oof.probs[i].max()), 4),
        }
        for i in ranked
        if int(oof.probs[i].argmax()) != int(oof.targets[i])
    ]
