"""Decisions on findings (``decisions.csv``: ``path,decision,label``) and the cleaned
manifest they make (``path,label,split`` plus metadata columns), which every command
reads as a dataset. The user's files are never changed: dropping a photo leaves it out of
the manifest, relabelling one writes its new label there."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write_text, csv_row, csv_unescape
from cropdoc.data.layouts import Dataset, discover

CHOICES = ("keep", "drop", "relabel")
COLUMNS = ("path", "decision", "label")


def read_decisions(path: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """``{path: (decision, label)}`` from a decisions CSV (a later row for the same photo
    replaces an earlier one); any bad row is refused in one line naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: give the decisions CSV to apply") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder: give the decisions CSV to apply") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a UTF-8 text CSV file") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    try:
        return _decisions(path, reader)
    except csv.Error as exc:
        raise UserError(f"{path} row {reader.line_num}: not a readable CSV row ({exc})") from None


def _decisions(path: Path, reader: csv.DictReader) -> dict[str, tuple[str, str]]:
    lacking = [c for c in ("path", "decision") if c not in (reader.fieldnames or [])]
    if lacking:
        raise UserError(
            f"{path} lacks the column(s) {', '.join(lacking)}: it needs {', '.join(COLUMNS)}"
        )
    decisions = {}
    for number, row in enumerate(reader, start=2):
        decision = (row.get("decision") or "").strip().lower()
        label = csv_unescape((row.get("label") or "").strip())
        if decision not in CHOICES:
            raise UserError(
                f"{path} row {number}: decision {decision!r} is not one of {', '.join(CHOICES)}"
            )
        if decision == "relabel" and not label:
            raise UserError(f"{path} row {number}: relabel needs the new label in 'label'")
        decisions[csv_unescape((row.get("path") or "").strip())] = (decision, label)
    return decisions


def decisions_csv(decisions: dict[str, tuple[str, str]]) -> str:
    """The text of a decisions CSV."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for path, (decision, label) in sorted(decisions.items()):
        writer.writerow(csv_row([path, decision, label if decision == "relabel" else ""]))
    return out.getvalue()


def apply_decisions(
    data: str | os.PathLike | Dataset,
    decisions: str | os.PathLike,
    manifest: str | os.PathLike,
) -> dict:
    """Write ``manifest``: the dataset's photos with ``decisions`` applied (dropped photos
    left out, relabelled ones with their new label), each with its split and metadata.
    Returns what it did."""
    dataset = data if isinstance(data, Dataset) else discover(data)
    chosen = read_decisions(decisions)
    manifest = Path(manifest).expanduser().absolute()
    _refuse_inside(manifest, dataset)
    known = {str(item.path) for item in dataset.items}
    known |= {str(path) for path, _ in dataset.skipped}  # left out of the manifest anyway
    unknown = [p for p in chosen if p not in known]
    if unknown:
        raise UserError(
            f"{decisions} names {len(unknown)} photo(s) that are not in {dataset.root} "
            f"(first: {unknown[0]}): was it made for another dataset?"
        )
    classes = set(dataset.classes)
    extra = sorted({k for item in dataset.items for k in item.meta})
    rows, counts = [], {"keep": 0, "drop": 0, "relabel": 0}
    for item in dataset.items:
        decision, label = chosen.get(str(item.path), ("keep", ""))
        counts[decision] += 1
        if decision == "drop":
            continue
        if decision == "relabel" and label not in classes:
            raise UserError(
                f"{decisions}: {item.path} is relabelled {label!r}, which is not one of "
                f"the dataset's classes ({', '.join(sorted(classes))})"
            )
        new_label = label if decision == "relabel" else item.label or ""
        path = os.path.relpath(item.path, manifest.parent)
        path = str(item.path) if path.startswith("..") else path  # relative only below it
        rows.append([path, new_label, item.split or "", *(item.meta.get(k, "") for k in extra)])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_row(["path", "label", "split", *extra]))
    writer.writerows(csv_row(row) for row in rows)
    atomic_write_text(manifest, out.getvalue())
    return {
        "manifest": str(manifest),
        "photos": len(rows),
        "dropped": counts["drop"],
        "relabelled": counts["relabel"],
        "kept": counts["keep"],
    }


def _refuse_inside(manifest: Path, dataset: Dataset) -> None:
    folder = dataset.root.parent if dataset.root.is_file() else dataset.root
    target, folder = manifest.resolve(), folder.resolve()
    if target == dataset.root.resolve() or folder in target.parents:
        raise UserError(
            f"{manifest} is inside the dataset folder {folder}: write the manifest elsewhere "
            "(--manifest), the dataset's files are never changed"
        )
