"""The review page of ``cropdoc doctor --review``: each finding with its photos side by
side and keep / drop / relabel buttons; every click is saved to ``decisions.csv`` at once,
so closing the tab loses nothing.

The app and its hardening are the decision pages' (``cropdoc.serve.decisions_page``);
photos are decoded by the safe decoder and shrunk."""

from __future__ import annotations

import asyncio
import io
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException

from cropdoc.audit.findings import Findings
from cropdoc.core.files import atomic_write_text
from cropdoc.data.decisions import decisions_csv, read_decisions
from cropdoc.data.images import ImageError, load_image
from cropdoc.serve.decisions_page import decisions_app, read_decision

PHOTO_SIDE = 480  # photos are shown at most this large


class Review:
    """The findings of a doctor folder and the decisions taken on them so far."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.findings = Findings.read(self.folder)
        self.photos = sorted({p for f in self.findings.findings for p in f.images})
        self.number = {p: n for n, p in enumerate(self.photos)}
        self.file = self.folder / "decisions.csv"
        self.decisions = read_decisions(self.file) if self.file.exists() else {}
        self.lock = asyncio.Lock()

    def listing(self) -> dict:
        """What the page shows: classes, findings with numbered photos, decisions."""
        rows = []
        for f in self.findings.findings:
            photos = [
                {"n": self.number[p], "name": Path(p).name, "label": label, "split": split}
                for p, label, split in zip(f.images, f.labels, f.splits, strict=True)
            ]
            rows.append(
                {
                    "id": f.id,
                    "kind": f.kind,
                    "score": f.score,
                    "suggested": f.suggested,
                    "note": f.note,
                    "photos": photos,
                }
            )
        decided = {
            str(self.number[p]): {"decision": d, "label": label}
            for p, (d, label) in self.decisions.items()
            if p in self.number
        }
        return {
            "root": self.findings.root,
            "classes": self.findings.classes,
            "findings": rows,
            "decisions": decided,
        }

    def photo(self, n: int) -> bytes:
        """Photo ``n`` as a JPEG at most ``PHOTO_SIDE`` pixels a side."""
        from PIL import Image

        if not 0 <= n < len(self.photos):
            raise HTTPException(404, "no such photo")
        try:
            pixels = load_image(self.photos[n], max_size=PHOTO_SIDE)
        except ImageError as exc:
            raise HTTPException(404, f"the photo cannot be shown: {exc}") from None
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "JPEG", quality=85)
        return out.getvalue()

    async def decide(self, body: bytes) -> dict:
        """Record one decision (``{"photo": N, "decision": ..., "label": ...}``), saved."""
        n, decision, label = read_decision(
            body, len(self.photos), self.findings.classes, "the dataset's"
        )
        async with self.lock:
            self.decisions[self.photos[n]] = (decision, label)
            atomic_write_text(self.file, decisions_csv(self.decisions))
        return {"saved": len(self.decisions), "file": str(self.file)}


def create_review_app(folder: str | Path, hosts: list[str] | None = None) -> FastAPI:
    """The FastAPI app of the review page for the doctor folder ``folder``, answering to
    the names ``hosts`` (default the loopback names: ``cropdoc.serve.http``)."""
    page = resources.files("cropdoc.audit").joinpath("review.html").read_text(encoding="utf-8")
    return decisions_app("cropdoc doctor review", page, "/findings", Review(folder), hosts)
