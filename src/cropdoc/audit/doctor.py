"""``cropdoc doctor``: check a dataset for copies, leaks, label errors, out-of-scope and
unreadable photos, on the cache that training uses, and write what it finds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cropdoc.audit.duplicates import SIMILARITY, duplicate_groups, fingerprints
from cropdoc.audit.findings import KINDS, Finding, Findings, ordered, write
from cropdoc.audit.labels import FoldRunner
from cropdoc.config import TrainConfig
from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write_json
from cropdoc.core.progress import say
from cropdoc.data.cache import Cache, prepare
from cropdoc.data.loader import split_cache

CHEAP = {"epochs": 2, "freeze_epochs": 1}  # the folds' training, unless told otherwise
FOLDS = 5
OUTLIER = 1.25  # out-of-scope score (1.0: the threshold 5% of in-scope photos pass) flagged
WEAK = 0.3  # out-of-fold error rate above which label findings are said to be weak


def doctor(
    data: str | os.PathLike,
    out: str | os.PathLike = "doctor",
    folds: int = FOLDS,
    settings: dict | None = None,
    similarity: float = SIMILARITY,
    runner: FoldRunner | None = None,
) -> Findings:
    """Check the dataset ``data`` and write ``report.md``, ``issues.csv``, ``findings.json``
    and image grids to ``out``; returns the findings.

    Args:
        folds: K of the K-fold training whose out-of-fold predictions find label errors and
            out-of-scope photos (0: copies, leaks and unreadable files only).
        settings: training settings of the folds (``TrainConfig`` fields; by default the
            defaults with 2 epochs after 1 frozen); running again with the same settings
            continues where it stopped.
        similarity: thumbnail correlation from which two photos are near copies.
        runner: how the folds are trained (``labels.out_of_fold``; default one after the
            other here; ``cropdoc.scale.folds.ray_runner``: as Ray tasks).
    """
    settings = {**CHEAP, **(settings or {})}
    config = TrainConfig.from_dict({**settings, "data": str(data), "out": ""})
    if folds and not 2 <= folds <= 20:
        raise UserError("--folds must be from 2 to 20 (0 skips the model's checks)")
    if not 0 < similarity <= 1:
        raise UserError("--similarity must be above 0 and at most 1")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file: give a folder for the doctor's report")
    prepared = prepare(data, config.cache, config.cache_size, config.workers)
    cache = Cache(prepared.cache)
    _refuse_inside(folder, cache.root)
    _same_settings(folder, {"data": str(Path(data).resolve()), "folds": folds, **settings})
    splits = _splits(cache, config)
    found = _copies(cache, splits, similarity)
    warnings, oof_error = [], None
    if folds:
        from cropdoc.audit.labels import out_of_fold

        oof = out_of_fold(config, folds, folder / "folds", cache, runner)
        found += _model_findings(oof, cache, splits)
        oof_error = float((oof.probs.argmax(1) != oof.targets).mean())
        warnings += _weak(oof_error)
    unreadable = [(e["path"], e["reason"]) for e in cache.errors]
    unreadable += [(str(p), why) for p, why in prepared.dataset.skipped if _unreadable(why)]
    found += [Finding("unreadable", [p], [None], [""], 1.0, note=why) for p, why in unreadable]
    result = Findings(str(cache.root), cache.classes, ordered(found))
    result.summary = {
        "photos": len(cache) + len(cache.errors),
        "counts": {kind: len(result.of_kind(kind)) for kind in KINDS},
        "conflicts": sum(f.note.startswith("labels differ") for f in result.findings),
        "folds": folds,
        "out_of_fold_error": oof_error,
        "warnings": warnings,
        "settings": ", ".join(f"{k} {v}" for k, v in settings.items()),
    }
    index = {e.path: i for i, e in enumerate(cache.images)}
    write(folder, result, lambda path: cache.pixels(index[path]) if path in index else None)
    return result


def _weak(oof_error: float) -> list[str]:
    """The warning that the folds' label findings are weak, when they are."""
    if oof_error <= WEAK:
        return []
    return [
        f"the folds' models get {oof_error:.0%} of the photos wrong out of fold, so their "
        "label findings are weak: train the folds longer (--epochs) or from pretrained weights"
    ]


def _unreadable(reason: str) -> bool:
    """Whether a file ``scan`` skipped is a photo that should be there (a broken link, a
    listed file that is missing), not merely another kind of file."""
    return not reason.startswith(("hidden file", "not an image file"))


def _refuse_inside(folder: Path, root: Path) -> None:
    data_dir = root.parent if root.is_file() else root
    target = folder.expanduser().resolve()
    if target == data_dir.resolve() or data_dir.resolve() in target.parents:
        raise UserError(
            f"--out {folder} is inside the dataset folder {data_dir}: choose a folder outside "
            "it (the doctor never writes into your dataset)"
        )


def _same_settings(folder: Path, settings: dict) -> None:
    """Refuse to continue a doctor folder made with other settings (its folds would not
    fit together); record the settings of a new one."""
    saved = folder / "doctor.json"
    if saved.exists():
        try:
            before = json.loads(saved.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(
                f"{saved} is damaged: remove it (or the folder {folder}) to start again, or "
                "choose another --out"
            ) from None
        if before != settings:
            raise UserError(
                f"{folder} holds a doctor run with other settings: run it with the same "
                "options to continue, or choose another --out"
            )
        return
    atomic_write_json(saved, settings)


def _splits(cache: Cache, config: TrainConfig) -> list[str]:
    """Each cached photo's split as training will see it: its own, else the seeded split
    that ``train`` makes (``--valid-pct``, ``--seed``); unlabelled photos are test photos."""
    split = split_cache(cache, config.valid_pct, config.seed, split_by=config.split_by)
    names = ["train" if e.split in (None, "train") else e.split for e in cache.images]
    for i in split.valid:
        names[i] = "valid"
    for i, e in enumerate(cache.images):
        if e.label is None or e.split == "test":
            names[i] = "test"
    return names


def _copies(cache: Cache, splits: list[str], similarity: float) -> list[Finding]:
    """A finding for each group of copies: a leak when it spans splits."""
    say(f"doctor: looking for copies among {len(cache)} photos")
    found = []
    for group in duplicate_groups(fingerprints(cache), similarity):
        entries = [cache.images[i] for i in group.members]
        labels = [e.label for e in entries]
        where = [splits[i] for i in group.members]
        notes = ["exact copies" if group.exact else "near copies"]
        if len(set(labels) - {None}) > 1:
            notes.insert(0, "labels differ")
        kind = "leak" if len(set(where)) > 1 else "duplicate"
        if kind == "leak":
            notes.append(f"in {' and '.join(sorted(set(where)))}")
        found.append(
            Finding(
                kind, [e.path for e in entries], labels, where, group.score, None, ", ".join(notes)
            )
        )
    return found


def _model_findings(oof, cache: Cache, splits: list[str]) -> list[Finding]:
    """Pairs of classes the folds confuse, label errors (confident learning on out-of-fold
    probabilities, outside those pairs) and out-of-scope photos (out-of-fold score
    ``OUTLIER`` times the model's threshold or more: by its making, 5% of the dataset's own
    photos pass the threshold itself)."""
    from cropdoc.audit.labels import label_issues, overlapping_classes

    found = []
    overlaps = overlapping_classes(oof)
    for pair in overlaps:
        a, b = (oof.classes[c] for c in pair["classes"])
        entries = [cache.images[i] for i in pair["indices"]]
        note = (
            f"the folds' models put {pair['share']:.0%} of the photos of {a} and {b} in the "
            "other class: a disagreement between them says little about one photo; look at "
            "the pair (clearer photos, a clearer definition) or merge the two classes"
        )
        found.append(
            Finding(
                "overlap",
                [e.path for e in entries],
                [e.label for e in entries],
                [splits[i] for i in pair["indices"]],
                round(pair["share"], 4),
                note=note,
            )
        )
    for issue in label_issues(oof, skip=[pair["classes"] for pair in overlaps]):
        e = cache.images[issue["index"]]
        note = (
            f"out-of-fold probability {issue['prob']:.0%} for {issue['suggested']}, "
            f"{1 - issue['score']:.0%} for {issue['given']}"
        )
        found.append(
            Finding(
                "label",
                [e.path],
                [e.label],
                [splits[issue["index"]]],
                issue["score"],
                issue["suggested"],
                note,
            )
        )
    for i in np.flatnonzero(oof.ood > OUTLIER):
        index = int(oof.indices[i])
        e = cache.images[index]
        note = f"out-of-scope score {oof.ood[i]:.2f} (1.0 is the model's threshold)"
        found.append(
            Finding(
                "outlier",
                [e.path],
                [e.label],
                [splits[index]],
                round(float(oof.ood[i]), 4),
                note=note,
            )
        )
    return found
