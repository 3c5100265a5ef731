"""Several photos of one plant, one answer (``predict --group-by``, ``serve ?fuse=1``).

The photos a model would not answer for are left out of the fusion and named: those sent
back by the quality checks (``retake``) and those out of scope. The others' calibrated
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

from cropdoc.errors import UserError
from cropdoc.files import atomic_write_json, atomic_write_text, csv_row
from cropdoc.inference.predictions import Predictions, advice
from cropdoc.quality import checks

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


def read_groups(inputs: list, column: str) -> dict[str, str]:
    """Each photo's group: ``folder`` (the folder it is in), or ``column`` of the CSV
    inputs (their ``path`` column, or the first, names the photo)."""
    if column == FOLDER:
        return {}
    groups: dict[str, str] = {}
    for item in map(Path, inputs):
        if item.suffix.lower() != ".csv" or not item.is_file():
            raise UserError(
                f"--group-by {column} reads a CSV column, and {item} is not a CSV: give a CSV "
                "of paths with that column, or --group-by folder"
            )
        with open(item, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            if column not in fields:
                raise UserError(f"{item} has no column {column!r} (it has {', '.join(fields)})")
            name = "path" if "path" in fields else fields[0]
            for row in reader:
                groups[str(item.parent / row[name])] = row[column]
    return groups


def fuse_predictions(
    predictions: Predictions, groups: dict[str, str], method: str = "mean", k: int = 3
) -> list[dict]:
    """One row per group of ``predictions`` (``groups``: path -> group; empty: each photo's
    folder), in the order the groups first appear."""
    order: dict[str, list[int]] = {}
    for n, path in enumerate(predictions.paths):
        key = groups.get(path, str(Path(path).parent)) if groups else str(Path(path).parent)
        order.setdefault(key, []).append(n)
    rows = []
    for key, members in order.items():
        found = fuse(
            [predictions.paths[n] for n in members],
            predictions.probs[members],
            predictions.ood[members],
            [predictions.problems[n] for n in members],
            predictions.min_confidence,
            method,
        )
        top = np.argsort(-found.probs)[:k]
        rows.append(
            {
                "group": key,
                "photos": len(members),
                "verdict": found.verdict,
                "advice": advice(found.verdict, "") if found.used else why_none(found),
                "confidence": round(float(found.probs.max()), 6),
                "ood_score": round(found.ood, 6),
                "top": [
                    {"label": predictions.classes[i], "prob": round(float(found.probs[i]), 6)}
                    for i in top
                ],
                "used": found.used,
                "left_out": [{"path": p, "why": why} for p, why in found.left_out],
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
        cells += [f"{row['confidence']:.6f}", f"{row['ood_score']:.6f}"]
        cells += [row["top"][0]["label"], f"{row['top'][0]['prob']:.6f}", left]
        writer.writerow(csv_row(cells))
    return atomic_write_text(out, buffer.getvalue())


def why_none(found: Fused) -> str:
    """A group with no photo to use: what its photos need."""
    reasons = [why.removeprefix("retake: ") for _, why in found.left_out if why != "out of scope"]
    return reasons[0] if reasons else advice("out_of_scope")
