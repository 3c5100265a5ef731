"""The review page of ``cropdoc doctor --review``: each finding with its photos side by
side and keep / drop / relabel buttons; every click is saved to ``decisions.csv`` at once,
so closing the tab loses nothing.

Hardened as ``cropdoc serve`` is: loopback by default, requests from other sites refused
(``cropdoc.serve.http``: foreign ``Origin`` or ``Host``), small bodies read with a size and
time limit, strict JSON sent as ``application/json`` with the page's per-run token, photos
named by number (a client never names a file), decoded by the safe decoder and shrunk, no
docs page."""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import secrets
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from cropdoc import __version__
from cropdoc.audit.decisions import CHOICES, decisions_csv, read_decisions
from cropdoc.audit.findings import Findings
from cropdoc.data.images import ImageError, load_image
from cropdoc.files import atomic_write_text
from cropdoc.serve.http import allowed_hosts, guard, read_body, require_json

MAX_BODY = 16 * 1024  # a decision is a few dozen bytes
BODY_TIMEOUT_S = 10.0
PHOTO_SIDE = 480  # photos are shown at most this large
TOKEN_HEADER = "X-Cropdoc-Token"  # the page's per-run token, which every write carries


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
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise HTTPException(400, "send JSON: {photo, decision, label}") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "send a JSON object: {photo, decision, label}")
        n, decision, label = data.get("photo"), data.get("decision"), data.get("label") or ""
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < len(self.photos):
            raise HTTPException(400, "photo must be the number of a photo on the page")
        if decision not in CHOICES:
            raise HTTPException(400, f"decision must be one of {', '.join(CHOICES)}")
        if decision == "relabel" and label not in self.findings.classes:
            raise HTTPException(400, "relabel needs one of the dataset's classes as label")
        async with self.lock:
            self.decisions[self.photos[n]] = (decision, label if decision == "relabel" else "")
            atomic_write_text(self.file, decisions_csv(self.decisions))
        return {"saved": len(self.decisions), "file": str(self.file)}


def create_review_app(folder: str | Path, hosts: list[str] | None = None) -> FastAPI:
    """The FastAPI app of the review page for the doctor folder ``folder``, answering to
    the names ``hosts`` (default the loopback names: ``cropdoc.serve.http``)."""
    review = Review(folder)
    token = secrets.token_urlsafe(24)
    page = resources.files("cropdoc.audit").joinpath("review.html").read_text(encoding="utf-8")
    page = page.replace("__CROPDOC_TOKEN__", token)
    app = FastAPI(title="cropdoc doctor review", version=__version__, docs_url=None, redoc_url=None)
    guard(app, hosts or allowed_hosts("127.0.0.1"))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "decisions": len(review.decisions)}

    @app.head("/health", include_in_schema=False)
    async def health_head() -> Response:
        return Response()

    @app.get("/findings")
    async def findings() -> dict:
        return review.listing()

    @app.get("/photo/{n}")
    async def photo(n: int) -> Response:
        data = await asyncio.get_running_loop().run_in_executor(None, review.photo, n)
        return Response(data, media_type="image/jpeg")

    @app.post("/decision")
    async def decide(request: Request) -> dict:
        require_json(request)
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), token):
            raise HTTPException(403, f"missing or wrong {TOKEN_HEADER}: reload the review page")
        body = await read_body(request, MAX_BODY, BODY_TIMEOUT_S, "decision", "one decision")
        return await review.decide(body)

    return app
