"""Several photos of one plant, one answer (``predict --group-by``, ``serve ?fuse=1``).

The photos a model would not answer for are left out of the fusion and named: those sent
back by the quality checks (``retake``), those out of scope and those that could not be read
(a group whose every photo is unreadable still has its answer: ``retake``, with each
photo's reason), so every photo listed for a group is accounted for. The others' calibrated
probabilities are combined, by default as their mean, or as the mean of their
log-probabilities (``logmean``: a normalised geometric mean, where one photo that rules a
class out weighs more); ``benchmarks/fusion.py`` measured both (docs/field.md: the mean as
good or better in every row, by one plant of 200). The fused answer gets its verdict as a
single photo does, against the model's confidence floor. numpy only.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cropdoc.contract import quality as checks
from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write_json, atomic_write_text, csv_row
from cropdoc.data.inputs import Listing, csv_photos, photo_key
from cropdoc.inference.predictions import (
    Answer,
    Predictions,
    advice,
    diagnosis,
    unanswered,
)

METHODS = ("mean", "logmean")
FOLDER = "folder"  # --group-by folder: the photos of one folder are one plant


@dataclass
class Fused:
    """The answer of one group of photos."""

    probs: np.ndarray  # (classes,), calibrated
    ood: float  # the mean out-of-scope score of the photos used
    verdict: str
    used: list[str]
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def combine(probs: np.ndarray, method: str = "mean") -> np.ndarray:
    """One distribution from the rows of ``probs``."""
    if method not in METHODS:
        raise UserError(f"--fuse must be one of {', '.join(METHODS)}")
    if method == "mean":
        return probs.mean(axis=0)
    logs = np.log(np.clip(probs, 1e-12, 1.0)).mean(axis=0)
    e = np.exp(logs - logs.max())
    return e / e.sum()


def fuse(
    paths: list[str],
    probs: np.ndarray,
    ood: np.ndarray,
    problems: list[str],
    min_confidence: float,
    method: str = "mean",
) -> Fused:
    """Fuse the photos of one plant; those sent back or out of scope are left out. When
    none is left, the group's verdict is theirs (``retake`` if any was sent back)."""
    keep = [i for i in range(len(paths)) if not problems[i] and ood[i] <= 1.0]
    left = [
        (paths[i], f"retake: {checks.ADVICE[problems[i]]}" if problems[i] else "out of scope")
        for i in range(len(paths))
        if i not in keep
    ]
    if not keep:
        verdict = "retake" if any(problems) else "out_of_scope"
        return Fused(combine(probs, method), float(np.mean(ood)), verdict, [], left)
    fused = combine(probs[keep], method)
    verdict = "uncertain" if fused.max() < min_confidence else "diagnosis"
    return Fused(fused, float(np.mean(ood[keep])), verdict, [paths[i] for i in keep], left)


def read_groups(inputs: list, column: str) -> list[tuple[str, str]]:
    """Every listed photo with its group, in the order listed: ``folder`` (the folder it is
    in), or ``column`` of the CSV inputs (their ``path`` column, or the first, names the
    photo). A photo listed under two groups is in both."""
    if column == FOLDER:
        return [(path, str(Path(path).parent)) for path in Listing(inputs)]
    listed = []
    for item in map(Path, inputs):
        if item.suffix.lower() != ".csv" or not item.is_file():
            raise UserError(
                f"--group-by {column} reads a CSV column, and {item} is not a CSV: give a CSV "
                "of paths with that column, or --group-by folder"
            )
        listed += [(path, row[column]) for row, path in csv_photos(item, column)]
    return listed


def fuse_predictions(
    predictions: Predictions, listed: list[tuple[str, str]], method: str = "mean", k: int = 3
) -> list[dict]:
    """One row per group of ``listed`` (``read_groups``: photo, group), in the order the
    groups first appear; each photo listed is used, left out with why, or unreadable."""
    scored = {photo_key(path): n for n, path in enumerate(predictions.paths)}
    unreadable = {photo_key(path): reason for path, reason in predictions.errors}
    groups: dict[str, dict[str, str]] = {}
    for path, group in listed:
        groups.setdefault(group, {}).setdefault(photo_key(path), path)
    rows = []
    for key, photos in groups.items():
        members = [scored[p] for p in photos if p in scored]
        lost = [(path, f"unreadable: {unreadable.get(p, 'not scored')}")
                for p, path in photos.items() if p not in scored]  # fmt: skip
        row = {"group": key, "photos": len(photos)}
        if not members:
            why = "none of its photos could be read: check the files, or take them again"
            rows.append({**row, **unanswered(why), "used": [],
                         "left_out": [{"path": p, "why": w} for p, w in lost]})  # fmt: skip
            continue
        found = fuse(
            [predictions.paths[n] for n in members],
            predictions.probs[members],
            predictions.ood[members],
            [predictions.problems[n] for n in members],
            predictions.min_confidence,
            method,
        )
        rows.append(
            {
                **row,
                **fused_answer(predictions.classes, found, k),
                "used": found.used,
                "left_out": [{"path": p, "why": why} for p, why in [*found.left_out, *lost]],
            }
        )
    return rows


def write_groups(result: dict, out: str | os.PathLike) -> Path:
    """``.json``: the groups and the unreadable files; otherwise CSV ``group,photos,used,
    verdict,confidence,ood_score,label,prob,left_out``."""
    out = Path(out)
    if out.suffix.lower() == ".json":
        return atomic_write_json(out, result)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["group", "photos", "used", "verdict", "confidence", "ood_score", "label", "prob"]
    writer.writerow(csv_row([*header, "left_out"]))
    for row in result["groups"]:
        left = "; ".join(f"{x['path']} ({x['why']})" for x in row["left_out"])
        cells = [row["group"], row["photos"], len(row["used"]), row["verdict"]]
        if row["top"]:
            cells += [f"{row['confidence']:.6f}", f"{row['ood_score']:.6f}"]
            cells += [row["top"][0]["label"], f"{row['top'][0]['prob']:.6f}", left]
        else:  # no photo of the group could be read
            cells += ["", "", "", "", left]
        writer.writerow(csv_row(cells))
    return atomic_write_text(out, buffer.getvalue())


def fused_answer(classes: list[str], found: Fused, k: int) -> Answer:
    """A group's answer, as one photo's (``diagnosis``): the advice for its verdict, or,
    with no photo to use, what its photos need (``why_none``)."""
    said = None if found.used else why_none(found)
    return diagnosis(classes, found.probs, found.ood, found.verdict, "", k, said)


def why_none(found: Fused) -> str:
    """A group with no photo to use: what its photos need."""
    reasons = [why.removeprefix("retake: ") for _, why in found.left_out if why != "out of scope"]
    return reasons[0] if reasons else advice("out_of_scope")
