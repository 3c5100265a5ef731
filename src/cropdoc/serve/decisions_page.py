"""What the loopback pages of decisions on photos share (the doctor's review page, the
labelling page): the app, with the page's per-run token, its health, the listing, numbered
photos and ``POST /decision``; and reading one decision from its JSON body.

Hardened as ``cropdoc serve`` is: loopback by default, requests from other sites refused
(``cropdoc.serve.http``: foreign ``Origin`` or ``Host``), small bodies read with a size and
time limit, strict JSON sent as ``application/json`` with the page's token, photos named by
number (a client never names a file), no docs page."""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
from typing import Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from cropdoc import __version__
from cropdoc.data.decisions import CHOICES
from cropdoc.serve.http import allowed_hosts, guard, read_body, require_json

MAX_BODY = 16 * 1024  # a decision is a few dozen bytes
BODY_TIMEOUT_S = 10.0
TOKEN_HEADER = "X-Cropdoc-Token"  # the page's per-run token, which every write carries


class Board(Protocol):
    """The photos a page shows and the decisions taken on them."""

    decisions: dict

    def listing(self) -> dict: ...

    def photo(self, n: int) -> bytes: ...

    async def decide(self, body: bytes) -> dict: ...


def read_decision(body: bytes, photos: int, classes: list[str], whose: str) -> tuple:
    """``(photo, decision, label)`` of a JSON body ``{"photo": N, "decision", "label"}``,
    checked: a photo of the page (``photos`` of them), a decision of ``CHOICES``, a relabel's
    label one of ``classes`` (``whose`` classes, in the message); 400 in one line else."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise HTTPException(400, "send JSON: {photo, decision, label}") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "send a JSON object: {photo, decision, label}")
    n, decision, label = data.get("photo"), data.get("decision"), data.get("label") or ""
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < photos:
        raise HTTPException(400, "photo must be the number of a photo on the page")
    if decision not in CHOICES:
        raise HTTPException(400, f"decision must be one of {', '.join(CHOICES)}")
    if decision == "relabel" and label not in classes:
        raise HTTPException(400, f"relabel needs one of {whose} classes as label")
    return n, decision, label if decision == "relabel" else ""


def decisions_app(
    title: str, page: str, listing: str, board: Board, hosts: list[str] | None
) -> FastAPI:
    """The app of a decisions page: ``page`` (its ``__CROPDOC_TOKEN__`` replaced by this
    run's token) at ``/``, ``board``'s listing at ``listing``, its photos at ``/photo/N``
    and its decisions through ``POST /decision``; answering to the names ``hosts``
    (default the loopback names)."""
    token = secrets.token_urlsafe(24)
    page = page.replace("__CROPDOC_TOKEN__", token)
    app = FastAPI(title=title, version=__version__, docs_url=None, redoc_url=None)
    guard(app, hosts or allowed_hosts("127.0.0.1"))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "decisions": len(board.decisions)}

    @app.head("/health", include_in_schema=False)
    async def health_head() -> Response:
        return Response()

    @app.get(listing)
    async def photos() -> dict:
        return board.listing()

    @app.get("/photo/{n}")
    async def photo(n: int) -> Response:
        data = await asyncio.get_running_loop().run_in_executor(None, board.photo, n)
        return Response(data, media_type="image/jpeg")

    @app.post("/decision")
    async def decide(request: Request) -> dict:
        require_json(request)
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), token):
            raise HTTPException(403, f"missing or wrong {TOKEN_HEADER}: reload the page")
        body = await read_body(request, MAX_BODY, BODY_TIMEOUT_S, "decision", "one decision")
        return await board.decide(body)

    return app
