"""Prediction results that both runtimes share (no torch here): the inputs to read, the
probabilities, and writing them as CSV or JSON."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np

from cropdoc.contract import quality as checks
from cropdoc.contract.bundle import TileMeta
from cropdoc.contract.kinds import WholePhoto
from cropdoc.contract.targets import LABEL, Target
from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write_json, atomic_write_text, csv_row, csv_rows
from cropdoc.core.progress import Progress
from cropdoc.data.images import ImageError, read_image
from cropdoc.data.inputs import collect_inputs

WHOLE_PHOTO = WholePhoto(TileMeta())  # a scorer's kind unless told (it holds no state: shared)

VERDICTS = ("diagnosis", "uncertain", "out_of_scope", "retake")
ADVICE = {
    "diagnosis": "",
    "uncertain": "not sure: take a closer photo of the lesion, in daylight",
    "out_of_scope": "this does not look like a photo this model knows",
    "retake": "take the photo again",  # a retake's own advice says why (quality.checks)
}


def verdicts(
    probs: np.ndarray, ood: np.ndarray, min_confidence: float, problems: list[str] | None = None
) -> list[str]:
    """``retake`` where the photo failed a quality check (``problems``: the failed check of
    each photo, ``""`` for none), else ``out_of_scope`` where the out-of-scope score passes
    1.0 (the boundary fitted on the validation split), else ``uncertain`` below the
    confidence floor, else ``diagnosis``."""
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    problems = problems or [""] * len(confidence)
    return [
        _verdict(c, o, q, min_confidence) for c, o, q in zip(confidence, ood, problems, strict=True)
    ]


def _verdict(confidence: float, ood: float, problem: str, min_confidence: float) -> str:
    if problem:
        return "retake"
    if ood > 1.0:
        return "out_of_scope"
    return "uncertain" if confidence < min_confidence else "diagnosis"


def advice(verdict: str, problem: str = "") -> str:
    """What to tell the user about a verdict (a retake: what to fix)."""
    return checks.ADVICE[problem] if verdict == "retake" and problem else ADVICE[verdict]


@dataclass
class Predictions:
    """Calibrated class probabilities and out-of-scope scores per readable image, and the
    unreadable ones with their reason; a multi-target model's other answers too."""

    classes: list[str]
    paths: list[str]
    probs: np.ndarray  # (images, classes), calibrated
    errors: list[tuple[str, str]] = field(default_factory=list)
    ood: np.ndarray | None = None  # (images,): above 1.0 is out of scope
    min_confidence: float = 0.0
    tiles: list[list[dict]] = field(default_factory=list)  # a tiled model's: what drove each
    others: tuple[Target, ...] = ()  # a multi-target model's targets after the label
    answers: dict[str, np.ndarray] = field(default_factory=dict)  # their probs or values
    problems: list[str] = field(default_factory=list)  # each photo's failed quality check
    kind: WholePhoto = WHOLE_PHOTO  # the model's

    def labels(self, target: str = LABEL) -> list[str]:
        """The answer to ``target`` for every image: the likeliest class, or the value."""
        if target == LABEL:
            return [self.classes[i] for i in self.probs.argmax(1)]
        found = [t for t in self.others if t.name == target]
        if not found:
            names = ", ".join([LABEL, *(t.name for t in self.others)])
            raise UserError(f"the model does not answer {target!r}: its targets are {names}")
        values = self.answers[target]
        if found[0].kind == "class":
            return [found[0].classes[i] for i in values.argmax(1)]
        return [f"{v:.4g}" for v in values]

    def __post_init__(self) -> None:
        if self.ood is None:
            self.ood = np.zeros(len(self.paths))
        if not self.problems:
            self.problems = [""] * len(self.paths)

    def verdicts(self) -> list[str]:
        return verdicts(self.probs, self.ood, self.min_confidence, self.problems)

    def top(self, k: int) -> list[dict]:
        """Rows of path, verdict, confidence (calibrated top-1), out-of-scope score and the
        ``k`` likeliest classes with their probabilities."""
        rows = []
        for n, (path, p, o, verdict, problem) in enumerate(
            zip(self.paths, self.probs, self.ood, self.verdicts(), self.problems, strict=True)
        ):
            extra = {"tiles": self.tiles[n]} if self.tiles else {}
            if self.others:
                extra["targets"] = {
                    t.name: answer(t, self.answers[t.name][n], k) for t in self.others
                }
            rows.append(
                {"path": path, **diagnosis(self.classes, p, o, verdict, problem, k), **extra}
            )
        return rows


class Answer(TypedDict):
    """The answer for one photo or one fused group, the same in ``predict --json``,
    ``fuse``, ``serve`` and the web app (``ANSWER_KEYS``); ``score``'s shards flatten it
    (``top`` as label/prob columns). A group none of whose photos could be read has no
    confidence, out-of-scope score or top classes (None, None, [])."""

    verdict: str  # one of VERDICTS
    advice: str  # what to do next, in words
    quality: str  # the failed photo check, or ""
    confidence: float | None  # the calibrated top-1 probability
    ood_score: float | None  # out-of-scope score: above 1.0 is out of scope
    top: list[dict]  # the likeliest classes: {"label", "prob"}, most likely first


ANSWER_KEYS = tuple(Answer.__annotations__)


def diagnosis(
    classes: list[str],
    probs: np.ndarray,
    ood: float,
    verdict: str,
    problem: str,
    k: int,
    why: str | None = None,
) -> Answer:
    """The answer for probabilities ``probs`` over ``classes``: its verdict, the advice
    for it (``why`` instead when given), the quality problem, confidence, out-of-scope
    score and the ``k`` likeliest classes with their probabilities."""
    order = np.argsort(-probs)[:k]
    return Answer(
        verdict=verdict,
        advice=advice(verdict, problem) if why is None else why,
        quality=problem,
        confidence=round(float(probs.max()), 6),
        ood_score=round(float(ood), 6),
        top=[{"label": classes[i], "prob": round(float(probs[i]), 6)} for i in order],
    )


def unanswered(why: str) -> Answer:
    """The answer when no photo could be read: take them again (``why``)."""
    return Answer(verdict="retake", advice=why, quality="", confidence=None, ood_score=None, top=[])


@dataclass
class Scorer:
    """A model as a function from decoded images to ``(probabilities, out-of-scope
    scores)``, calibrated (a tiled bundle's adds the top tiles of each photo), and what it
    is: ``info`` has ``classes``, ``cache_size`` (the longer side images are decoded to, 0:
    full size), ``arch``, ``size``, ``version``, ``metrics``, ``min_confidence`` and
    ``tile`` (0 unless tiled)."""

    score: Callable[[list[np.ndarray]], tuple]  # -> (probs, ood, extra: tiles and targets)
    info: dict
    loaded: tuple | None = None  # the first model and its meta, where torch loaded one
    others: tuple[Target, ...] = ()  # a multi-target model's targets after the label
    kind: WholePhoto = WHOLE_PHOTO  # the model's


def file_version(path: str | os.PathLike) -> str:
    """A model file's version: the first 12 hex digits of its sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def write_submission(
    predict_paths_fn: Callable[[list[Path]], Predictions],
    sample: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    target: str = LABEL,
) -> Path:
    """A Kaggle submission: ``image_id,label`` for every id of ``sample``, in its order,
    labelled by ``predict_paths_fn`` (paths -> ``Predictions``) of any runtime; with
    another ``target`` of a multi-target model, ``image_id,TARGET``."""
    sample, images = Path(sample), Path(images)
    rows = csv_rows(sample)
    header = [cell.strip() for cell in next(rows, [])]
    if "image_id" not in header:
        raise UserError(f"{sample} has no image_id column: is it a sample submission?")
    at = header.index("image_id")
    ids = [row[at] for row in rows if len(row) > at and row[at].strip()]
    missing = [i for i in ids if not (images / i).is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} image(s) of {sample.name} are not in {images} "
            f"(first: {missing[0]}): give the folder that holds them"
        )
    predictions = predict_paths_fn([images / i for i in ids])
    if predictions.errors:
        path, reason = predictions.errors[0]
        raise UserError(
            f"{len(predictions.errors)} image(s) could not be read "
            f"(first: {path}: {reason}): a submission needs every id"
        )
    labels = predictions.labels(target)
    rows = "".join(f"{i},{lab}\n" for i, lab in zip(ids, labels, strict=True))
    text = f"image_id,{target}\n" + rows
    return atomic_write_text(out, text)


def write_predictions(predictions: Predictions, out: str | os.PathLike, k: int) -> Path:
    """``.json``: rows with the verdict and the top-k; otherwise CSV ``path,verdict,
    confidence,ood_score,label,prob,label_2,prob_2,...`` (a tiled model's adds the top
    tile's box ``x y width height`` and weight), ``quality`` (the failed photo-quality
    check of a retake) and the unreadable files with their reason."""
    out = Path(out)
    rows = predictions.top(k)
    if out.suffix.lower() == ".json":
        atomic_write_json(
            out,
            {
                "predictions": rows,
                "errors": [{"path": p, "reason": r} for p, r in predictions.errors],
            },
        )
        return out
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["path", "verdict", "confidence", "ood_score"]
    for i in range(1, k + 1):
        header += ["label", "prob"] if i == 1 else [f"label_{i}", f"prob_{i}"]
    header += [name for name, _ in predictions.kind.columns()]
    for target in predictions.others:  # a multi-target model's: columns named by target
        if target.kind == "regress":
            header.append(target.name)
            continue
        for i in range(1, min(k, len(target.classes)) + 1):
            suffix = "" if i == 1 else f"_{i}"
            header += [f"{target.name}{suffix}", f"{target.name}_prob{suffix}"]
    writer.writerow(csv_row([*header, "quality", "error"]))
    for row in rows:
        cells = [row["path"], row["verdict"], f"{row['confidence']:.6f}", f"{row['ood_score']:.6f}"]
        for t in row["top"]:
            cells += [t["label"], f"{t['prob']:.6f}"]
        cells += [v if isinstance(v, str) else f"{v:.4f}" for v in predictions.kind.cells(row)]
        for target in predictions.others:
            found = row["targets"][target.name]
            if target.kind == "regress":
                cells.append(f"{found['value']:.4f}")
            for t in found.get("top", []):
                cells += [t["label"], f"{t['prob']:.6f}"]
        writer.writerow(csv_row([*cells, row["quality"], ""]))
    for path, reason in predictions.errors:
        writer.writerow(csv_row([path, *[""] * len(header), reason]))
    atomic_write_text(out, buffer.getvalue())
    return out


NOT_FINITE = "the model gave no finite answer (NaN or infinity): its file may be damaged"


def predict_paths(inputs: list, scorer: Scorer, bs: int = 64, quality: bool = True) -> Predictions:
    """``score_photos`` of the distinct photos of ``inputs`` (files, folders, CSV lists of
    paths: ``cropdoc.data.inputs``)."""
    return score_photos([str(p) for p in collect_inputs(inputs)], scorer, bs, quality)


def score_photos(
    paths: list[str], scorer: Scorer, bs: int = 64, quality: bool = True
) -> Predictions:
    """Decode the photos ``paths`` a batch at a time (longer side: the scorer's cache size;
    the unreadable ones are listed with their reason), check each photo's quality
    (``quality``; a failed check makes the verdict ``retake``) and score every readable one.
    A photo the model gives a NaN or infinite answer for is listed with the errors: it is
    never a diagnosis. A tiled scorer's photos are decoded at full size, one at a time."""
    good, errors, probs, ood, tiles, problems = [], [], [], [], [], []
    answers: dict[str, list[np.ndarray]] = {t.name: [] for t in scorer.others}
    bs = scorer.kind.batch(bs)
    with Progress(len(paths), "predict") as progress:
        for start in range(0, len(paths), bs):
            chunk, pixels, checked = [], [], []
            for path in paths[start : start + bs]:
                try:
                    decoded, original = read_image(path, max_size=scorer.info["cache_size"])
                    pixels.append(decoded)
                    chunk.append(str(path))
                    checked.append(checks.check(decoded, original).problem if quality else "")
                except ImageError as exc:
                    errors.append((str(path), str(exc)))
            progress.update(len(paths[start : start + bs]))
            if not chunk:
                continue
            p, o, extra = scorer.score(pixels)
            finite = np.isfinite(p).all(axis=1) & np.isfinite(o)
            for name, values in extra.get("targets", {}).items():
                finite &= np.isfinite(values.reshape(len(values), -1)).all(axis=1)
                answers[name].append(values)
            errors += [(path, NOT_FINITE) for path, ok in zip(chunk, finite, strict=True) if not ok]
            probs.append(p[finite])
            ood.append(o[finite])
            tiles += [t for t, ok in zip(extra.get("tiles", []), finite, strict=False) if ok]
            for name in answers:
                answers[name][-1] = answers[name][-1][finite]
            good += [path for path, ok in zip(chunk, finite, strict=True) if ok]
            problems += [q for q, ok in zip(checked, finite, strict=True) if ok]
    classes = scorer.info["classes"]
    return Predictions(
        classes,
        good,
        np.concatenate(probs) if probs else np.zeros((0, len(classes))),
        errors,
        np.concatenate(ood) if ood else np.zeros(0),
        scorer.info["min_confidence"],
        tiles,
        scorer.others,
        {t.name: _joined(answers[t.name], t) for t in scorer.others},
        problems,
        scorer.kind,
    )


def _joined(parts: list[np.ndarray], target: Target) -> np.ndarray:
    """A target's answers of every batch as one array (an empty one when none)."""
    if parts:
        return np.concatenate(parts)
    return np.zeros((0, target.width) if target.kind == "class" else 0)


def answer(target: Target, value: np.ndarray, k: int) -> dict:
    """One image's answer to a target: the likeliest class, its probability and the top
    ``k``; or the value."""
    if target.kind == "regress":
        return {"value": round(float(value), 4)}
    order = np.argsort(-value)[:k]
    top = [{"label": target.classes[i], "prob": round(float(value[i]), 6)} for i in order]
    return {"label": top[0]["label"], "prob": top[0]["prob"], "top": top}
