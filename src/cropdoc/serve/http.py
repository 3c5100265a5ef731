"""What both HTTP servers (``cropdoc serve`` and the doctor's review page) share: a body read
within a size and a time limit, and refusing requests that come from other sites.

A page on another site, open in the user's browser, can send requests to a server on the
user's own machine; so can a name of the attacker's that resolves to 127.0.0.1 (DNS
rebinding). ``guard`` refuses, with 403 and one line:

- a ``Host`` that is not one of the names the server answers to (the bound address and, on
  loopback, ``localhost``, ``127.0.0.1`` and ``::1``, plus those given with
  ``--allow-host``): a rebinding name never matches, and a ``Host`` that is not a plain
  ``name[:port]`` (``evil.com@127.0.0.1``, which a URL parser reads as ``127.0.0.1``) is
  refused whatever it ends with;
- an ``Origin`` (browsers send one with every cross-origin request and every POST) that is
  not the server's own, ``http://`` + the ``Host``;

and ``require_json`` refuses a JSON endpoint's body of any other content type with 415, so
a plain HTML form or a "simple" cross-site request cannot write.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

log = logging.getLogger("cropdoc.serve")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
ANY_HOST = "*"
# a Host header as RFC 9110 has it: a name or IPv4 address, or an IPv6 one in brackets,
# then an optional port; nothing else (no user part, no path)
HOST_FORM = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> list[str]:
    """The names a server bound to ``host`` answers to: the address itself, the loopback
    names when it is a loopback address, and ``extra``; ``["*"]`` (any) for a wildcard
    address (``0.0.0.0``, ``::``) given no ``extra``, as its names cannot be known."""
    extra = [name.strip().lower() for name in extra if name.strip()]
    if host in ("0.0.0.0", "::", ""):
        return extra or [ANY_HOST]
    names = [host.lower().strip("[]"), *extra]
    if _is_loopback(host):
        names += LOOPBACK_NAMES
    return sorted(set(names))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _hostname(netloc: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:8000`` -> ``::1``; ``""`` for
    anything that is not a plain ``name[:port]``."""
    if not HOST_FORM.fullmatch(netloc):
        return ""
    return (urlsplit(f"//{netloc}").hostname or "").lower()


def refusal(request: Request, names: list[str]) -> str | None:
    """Why ``request`` comes from another site (None when it does not)."""
    host = request.headers.get("host", "")
    malformed = bool(host) and not HOST_FORM.fullmatch(host)
    if malformed or (ANY_HOST not in names and _hostname(host) not in names):
        return (
            f"Host {host[:80]!r} is not this server's name ({', '.join(names)}): "
            "open the page at the address cropdoc printed, or start it with --allow-host NAME"
        )
    origin = request.headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
            return f"requests from other sites are refused (Origin {origin[:80]!r})"
    return None


def guard(app: FastAPI, names: list[str]) -> None:
    """Refuse, with 403 and one line, every request to ``app`` from another site."""

    @app.middleware("http")
    async def same_site_only(request: Request, call_next):
        why = refusal(request, names)
        if why is not None:
            return JSONResponse({"detail": why}, status_code=403)
        return await call_next(request)


def require_json(request: Request) -> None:
    """Refuse (415) a body that does not say it is ``application/json``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HTTPException(415, f"send Content-Type: application/json (not {kind[:60] or 'none'})")


def _amount(size: int) -> str:
    """``16384`` -> ``16 kB``; ``10485760`` -> ``10 MB``."""
    if size >= 2**20:
        return f"{size / 2**20:g} MB"
    return f"{size / 2**10:g} kB"


async def read_body(
    request: Request,
    limit: int,
    timeout: float,
    noun: str = "upload",
    what: str = "the image",
) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (or when its
    declared length already does), so an oversized body is never read in full, and with
    408 when it has not all arrived within ``timeout`` seconds. The errors call the body
    ``noun`` and say to send ``what``. A client that leaves mid-body is logged in one line."""
    declared = request.headers.get("content-length")
    too_big = HTTPException(413, f"{noun} over the limit of {_amount(limit)}")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_big
                chunks.append(chunk)
    except TimeoutError:
        raise HTTPException(
            408,
            f"the {noun} took over {timeout:g} s: send {what} at once",
            headers={"Connection": "close"},
        ) from None
    except ClientDisconnect:
        log.info("a client left before its %s arrived (%d bytes received)", noun, size)
        raise HTTPException(400, f"the client left before its {noun} arrived") from None
    if not size:
        raise HTTPException(400, f"empty request: send {what}")
    return b"".join(chunks)
