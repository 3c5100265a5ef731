"""What the doctor found, as data (``Finding``) and as files: ``findings.json`` (what the
review page and ``--apply`` read), ``issues.csv`` (one row per finding), ``report.md``
and one image grid per kind of finding."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write_bytes, atomic_write_json, atomic_write_text, csv_row

KINDS = ("leak", "duplicate", "label", "overlap", "outlier", "unreadable")
WHAT = {
    "leak": "copies in more than one split (train / valid / test): they flatter the error rate",
    "duplicate": "exact or near copies within one split",
    "label": "likely label errors: out-of-fold predictions contradict the given label",
    "overlap": "two classes the folds' models confuse on a large share of their photos: "
    "their disagreements are listed together here, not as label errors",
    "outlier": "photos the model's out-of-scope score puts outside the dataset's own photos",
    "unreadable": "files that could not be decoded",
}
GRID_ROWS = 12  # findings drawn in each kind's grid
GRID_THUMB = 160
GRID_COLS = 8  # photos drawn of each finding


@dataclass
class Finding:
    """One finding: its kind, the photos it is about (with their labels and splits), how
    sure it is (0 to 1; for copies their similarity), the label it suggests, a short note."""

    kind: str
    images: list[str]
    labels: list[str | None]
    splits: list[str]
    score: float
    suggested: str | None = None
    note: str = ""
    id: int = 0


@dataclass
class Findings:
    """The doctor's result: findings (conflicting copies first, then by kind and score),
    the dataset's classes and root, counts per kind, the files written."""

    root: str
    classes: list[str]
    findings: list[Finding]
    summary: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "classes": self.classes,
            "summary": self.summary,
            "files": self.files,
            "findings": [asdict(f) for f in self.findings],
        }

    @classmethod
    def read(cls, folder: str | Path) -> Findings:
        """The findings a doctor run wrote to ``folder``."""
        path = Path(folder) / "findings.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(
                f"{folder} holds no doctor findings: run cropdoc doctor first"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path} is damaged: run cropdoc doctor again") from None
        try:
            findings = [Finding(**f) for f in data["findings"]]
            return cls(data["root"], data["classes"], findings, data["summary"], data["files"])
        except (KeyError, TypeError):
            raise UserError(f"{path} is not a doctor's findings: run the doctor again") from None


def ordered(findings: list[Finding]) -> list[Finding]:
    """Copies with conflicting labels first, then by kind (``KINDS``) and score; numbered."""

    def key(f: Finding):
        conflict = f.kind in ("leak", "duplicate") and len(set(f.labels) - {None}) > 1
        return (not conflict, KINDS.index(f.kind), -f.score)

    result = sorted(findings, key=key)
    for number, finding in enumerate(result, start=1):
        finding.id = number
    return result


def write(folder: Path, result: Findings, pixels) -> dict:
    """Write ``findings.json``, ``issues.csv``, ``report.md`` and ``grid-KIND.png``
    (``pixels(path)`` gives a photo's cached pixels, or None); returns the files."""
    files = {"issues.csv": str(folder / "issues.csv"), "report.md": str(folder / "report.md")}
    for kind in KINDS:
        chosen = result.of_kind(kind)[:GRID_ROWS]
        if chosen and kind != "unreadable":
            path = folder / f"grid-{kind}.png"
            atomic_write_bytes(path, _grid(chosen, pixels))
            files[path.name] = str(path)
    files["findings.json"] = str(folder / "findings.json")
    result.files = files
    atomic_write_text(folder / "issues.csv", _issues_csv(result.findings))
    atomic_write_text(folder / "report.md", _report(result))
    atomic_write_json(folder / "findings.json", result.to_dict())
    return files


def _issues_csv(findings: list[Finding]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "kind", "images", "given_labels", "suggested_label", "splits", "score"])
    for f in findings:
        labels = ";".join(label or "" for label in f.labels)
        row = [f.id, f.kind, ";".join(f.images), labels, f.suggested or "", ";".join(f.splits)]
        writer.writerow(csv_row([*row, f.score]))
    return out.getvalue()


def _report(result: Findings) -> str:
    lines = [f"# Dataset doctor: {result.root}", ""]
    summary = result.summary
    lines += [
        f"{summary.get('photos', 0)} photos, {len(result.classes)} classes. "
        f"Settings: {summary.get('settings', '')}.",
        "",
        "| finding | count | what it means |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {kind} | {len(result.of_kind(kind))} | {WHAT[kind]} |" for kind in KINDS]
    if summary.get("out_of_fold_error") is not None:
        lines += [
            "",
            f"Out-of-fold error rate of the folds' models: {summary['out_of_fold_error']:.1%}.",
        ]
    lines += [f"\n**Warning:** {w}" for w in summary.get("warnings", [])]
    if summary.get("conflicts"):
        lines += ["", f"**{summary['conflicts']} group(s) of copies carry different labels.**"]
    for kind in KINDS:
        found = result.of_kind(kind)
        if not found:
            continue
        lines += ["", f"## {kind} ({len(found)})", ""]
        if kind != "unreadable" and f"grid-{kind}.png" in result.files:
            lines += [f"![{kind}](grid-{kind}.png)", ""]
        for f in found[:50]:
            photos = ", ".join(
                f"`{Path(p).name}` ({label or 'unlabelled'}, {split})"
                for p, label, split in zip(f.images, f.labels, f.splits, strict=True)
            )
            hint = f" -> **{f.suggested}**" if f.suggested else ""
            lines.append(f"- #{f.id} score {f.score:.3f}{hint}: {photos}. {f.note}".rstrip())
        if len(found) > 50:
            lines.append(f"- ... {len(found) - 50} more in issues.csv")
    lines += [
        "",
        "Review them with `cropdoc doctor DATA --review`, then write a cleaned "
        "manifest with `cropdoc doctor DATA --apply decisions.csv`.",
        "",
    ]
    return "\n".join(lines)


def _grid(findings: list[Finding], pixels) -> bytes:
    """A PNG with one row per finding: its photos side by side, each captioned."""
    width = min(max(len(f.images) for f in findings), GRID_COLS)
    side, caption = GRID_THUMB, 28
    canvas = Image.new("RGB", (width * (side + 8) + 8, len(findings) * (side + caption + 8) + 8))
    draw = ImageDraw.Draw(canvas)
    canvas.paste((255, 255, 255), (0, 0, *canvas.size))
    for row, finding in enumerate(findings):
        y = 8 + row * (side + caption + 8)
        shown = zip(finding.images[:GRID_COLS], finding.labels, strict=False)
        for col, (path, label) in enumerate(shown):
            x = 8 + col * (side + 8)
            image = pixels(path)
            if image is not None:
                thumb = Image.fromarray(np.ascontiguousarray(image))
                thumb.thumbnail((side, side))
                canvas.paste(thumb, (x, y))
            text = f"#{finding.id} {label or 'no label'}"
            if finding.suggested and col == 0:
                text += f" -> {finding.suggested}"
            draw.text((x, y + side + 4), text[:28], fill=(0, 0, 0))
    out = io.BytesIO()
    canvas.save(out, "PNG")
    return out.getvalue()
