"""The labelling page of ``cropdoc label QUEUE``: each photo ``serve --keep-uploads`` kept,
with the model's top answers and keep / drop / label buttons. "keep" takes the model's
answer as the label, "label" another class, "drop" leaves the photo out. Every click is
saved at once to ``QUEUE/decisions.csv`` and the manifest ``QUEUE/labels.csv``
(``path,label,split``, paths relative to the queue), which ``adapt`` and ``train`` read.

The app and its hardening are the decision pages' (``cropdoc.serve.decisions_page``), as for
the doctor's review page."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException

from cropdoc.adaptation.queue import read_info
from cropdoc.core.files import atomic_write_text, csv_row
from cropdoc.data.decisions import decisions_csv, read_decisions
from cropdoc.serve.decisions_page import decisions_app, read_decision

MANIFEST = "labels.csv"
DECISIONS = "decisions.csv"


class Labelling:
    """The photos of a queue folder, what the model answered, and the decisions so far."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).absolute()
        self.classes = read_info(self.folder)["classes"]
        self.photos, self.answers = [], []
        for record in sorted(self.folder.glob("*.json")):
            kept = _record(record)
            if kept and (self.folder / kept["photo"]).is_file():
                self.photos.append(kept["photo"])
                self.answers.append(kept)
        self.number = {name: n for n, name in enumerate(self.photos)}
        self.file = self.folder / DECISIONS
        self.decisions = read_decisions(self.file) if self.file.exists() else {}
        self.lock = asyncio.Lock()

    def listing(self) -> dict:
        """What the page shows: the classes, each photo's answer, the decisions taken."""
        photos = [
            {
                "n": n,
                "name": name,
                "reason": kept["reason"],
                "received": kept.get("received", ""),
                "verdict": kept["answer"].get("verdict", ""),
                "top": kept["answer"].get("top", []),
            }
            for n, (name, kept) in enumerate(zip(self.photos, self.answers, strict=True))
        ]
        decided = {
            str(self.number[p]): {"decision": d, "label": label}
            for p, (d, label) in self.decisions.items()
            if p in self.number
        }
        return {
            "queue": str(self.folder),
            "classes": self.classes,
            "photos": photos,
            "decisions": decided,
        }

    def photo(self, n: int) -> bytes:
        """The bytes of photo ``n`` (a JPEG the queue wrote)."""
        if not 0 <= n < len(self.photos):
            raise HTTPException(404, "no such photo")
        return (self.folder / self.photos[n]).read_bytes()

    async def decide(self, body: bytes) -> dict:
        """Record one decision (``{"photo": N, "decision": ..., "label": ...}``): saved to
        the decisions and the manifest at once."""
        n, decision, label = read_decision(body, len(self.photos), self.classes, "the model's")
        top = self.answers[n]["answer"].get("top") or []
        if decision == "keep" and not top:
            raise HTTPException(400, "the model gave no answer to keep: label it or drop it")
        async with self.lock:
            self.decisions[self.photos[n]] = (decision, label)
            atomic_write_text(self.file, decisions_csv(self.decisions))
            atomic_write_text(self.folder / MANIFEST, self.manifest_text())
        labelled = sum(1 for d, _ in self.decisions.values() if d != "drop")
        return {"saved": len(self.decisions), "labelled": labelled, "manifest": MANIFEST}

    def manifest_text(self) -> str:
        """``path,label,split`` of every photo kept or labelled (the split left to the
        command that reads it)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "label", "split"])
        for name, (decision, label) in sorted(self.decisions.items()):
            if decision == "drop" or name not in self.number:
                continue
            if decision == "keep":
                label = self.answers[self.number[name]]["answer"]["top"][0]["label"]
            writer.writerow(csv_row([name, label, ""]))
        return buffer.getvalue()


def _record(path: Path) -> dict | None:
    """A kept photo's JSON record, or None when it is not one (skipped, never changed)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    ok = isinstance(record, dict) and isinstance(record.get("answer"), dict)
    ok = ok and isinstance(record.get("photo"), str) and "/" not in record["photo"]
    return record if ok and record["photo"] == path.with_suffix(".jpg").name else None


def create_labelling_app(folder: str | Path, hosts: list[str] | None = None) -> FastAPI:
    """The FastAPI app of the labelling page for the queue ``folder``, answering to the
    names ``hosts`` (default the loopback names)."""
    page = resources.files("cropdoc.serve").joinpath("labelling.html").read_text("utf-8")
    return decisions_app("cropdoc label", page, "/photos", Labelling(folder), hosts)
