"""The web service: ``POST /predict``, ``GET /health``, ``GET /model``, the page at ``/``.

Uploads are read in memory up to a size limit (413 beyond it, before the rest of the body is
read) and within a time limit (408 for a body that trickles in), parsed off the event loop
by a streaming multipart parser with limits on parts and headers, decoded with the same
safe decoder as everything else (415 for other formats, 400 for bombs and broken files),
and nothing the client sends is written to disk (with ``--keep-uploads``, a photo the model
did not know is kept as the model read it: ``adaptation.queue``). A request counts as in
flight only once its body has arrived, so slow clients cannot take the slots of honest
ones. Requests that arrive together are batched for the model; a bounded number of images
is in flight (503 with ``Retry-After`` beyond it). Settings come from the
``CROPDOC_SERVE_SETTINGS`` environment variable so that every uvicorn worker process builds
the same app.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import mimetypes
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from cropdoc import __version__
from cropdoc.contract import quality as checks
from cropdoc.core.errors import UserError, one_line
from cropdoc.data.images import FormatError, ImageError, TooLargeError, read_image
from cropdoc.inference import fusion
from cropdoc.inference.predictions import NOT_FINITE, answer, diagnosis, verdicts
from cropdoc.inference.scorers import RUNTIMES, load_scorer
from cropdoc.serve.batcher import Batcher
from cropdoc.serve.http import allowed_hosts, guard, read_body

log = logging.getLogger("cropdoc.serve")
MAX_PARTS = 16  # parts of a multipart form: one image needs one
RETRY_AFTER_S = 1  # what a client told "busy" (503) should wait
IMAGE_BODY = "an image (multipart or raw bytes)"  # what /predict takes
# the web app's files whose type a browser insists on (module scripts, wasm, the manifest)
APP_TYPES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".webmanifest": "application/manifest+json",
}
# the app's files: checked with the server on every load (the service worker keeps them
# offline), and never sniffed as another type
APP_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


@dataclass
class Settings:
    """What ``cropdoc serve`` was asked for."""

    model: str
    runtime: str = "torch"
    max_upload_mb: float = 10.0
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    max_inflight: int = 64  # photos (a fused form's count each)
    max_decode_mb: float = 64.0  # the most one photo may take decoded (width x height x bytes)
    body_timeout_s: float = 30.0  # the longest an upload's body may take to arrive
    top_k: int = 3
    threads: int | None = None  # model threads in this process (None: the runtime's default)
    hosts: list[str] | None = None  # the names it answers to (None: loopback's; serve.http)
    keep_uploads: str | None = None  # a queue folder: keep what the model did not know
    queue_mb: float = 1000.0  # the queue's bound
    keep_sample: float = 0.05  # the share of the other answers kept too

    def checked(self) -> Settings:
        """The settings, or a clear error naming the first one that makes no sense."""
        limits = {
            "--max-upload-mb": (self.max_upload_mb, 0.001, 1024),
            "--max-batch": (self.max_batch, 1, 4096),
            "--batch-wait-ms": (self.batch_wait_ms, 0, 10_000),
            "--max-inflight": (self.max_inflight, 1, 1_000_000),
            "--max-decode-mb": (self.max_decode_mb, 1, 4096),
            "--body-timeout": (self.body_timeout_s, 0.1, 3600),
            "--threads": (1 if self.threads is None else self.threads, 1, 1024),
            "--top-k": (self.top_k, 1, 1000),
        }
        for flag, (value, low, high) in limits.items():
            if not low <= value <= high:
                raise UserError(f"{flag} must be from {low:g} to {high:g}, not {value:g}")
        if self.runtime not in RUNTIMES:
            raise UserError(f"--runtime must be {', '.join(RUNTIMES[:-1])} or {RUNTIMES[-1]}")
        return self

    @classmethod
    def from_env(cls) -> Settings:
        return cls(**json.loads(os.environ["CROPDOC_SERVE_SETTINGS"]))

    def to_env(self) -> str:
        return json.dumps(asdict(self))


class Model:
    """The model behind the service: batched probabilities from the scorer ``predict``
    loads for the same runtime (``load_scorer``) and, with torch, Grad-CAM."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.scorer = load_scorer([settings.model], settings.runtime, threads=settings.threads)
        self.explainer = None
        if settings.runtime == "torch":
            from cropdoc.inference.explain import Explainer

            # one copy of the model: explanations run on the model thread, between batches
            self.explainer = Explainer(settings.model, loaded=self.scorer.loaded)
        self.info = self.scorer.info

    def score_rows(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, float, dict]]:
        """``(probabilities, out-of-scope score, extra)`` of each image: one batched model
        call; ``extra`` holds a tiled model's top ``tiles`` and a multi-target model's other
        ``targets`` (JSON-ready), else nothing."""
        probs, ood, extra = self.scorer.score(images)
        rows = []
        for n in range(len(probs)):
            row = {"tiles": extra["tiles"][n]} if "tiles" in extra else {}
            if self.scorer.others:
                k = self.settings.top_k
                row["targets"] = {
                    t.name: answer(t, extra["targets"][t.name][n], k) for t in self.scorer.others
                }
            rows.append((probs[n], ood[n], row))
        return rows

    def explain_pngs(self, pixels: np.ndarray) -> dict:
        """Grad-CAM of the predicted class as base64 PNGs: the overlay, the coloured heatmap
        alone and the model's input (the last two line up, for the page's opacity slider)."""
        from cropdoc.inference.figures import heat_colours, overlay, shrunk

        item = self.explainer.explain_pixels(pixels)
        image, heatmap = shrunk(item.image, item.heatmap)  # a tiled model's is full size
        heat = heat_colours(heatmap).astype(np.uint8)
        return {
            "overlay_png": _png(overlay(image, heatmap)),
            "heatmap_png": _png(heat),
            "input_png": _png(image),
        }


def _png(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def check_address(host: str, port: int) -> None:
    """Refuse, in one line, a port out of range or an address that cannot be bound now."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be from 1 to 65535, not {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(infos[0][4])
    except OSError as exc:
        raise UserError(
            f"cannot serve on {host}:{port} ({exc.strerror or exc}): choose another --port "
            "or --host"
        ) from None


class Service:
    """What the routes share: the model, its batcher, the thread pools, the in-flight count."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.model = Model(settings)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="cropdoc-model")
        self.decoders = ThreadPoolExecutor(
            min(4, os.cpu_count() or 1), thread_name_prefix="cropdoc-decode"
        )
        self.batcher = Batcher(
            self.model.score_rows,
            self.executor,
            settings.max_batch,
            settings.batch_wait_ms / 1000,
        )
        self.limit = int(settings.max_upload_mb * 2**20)
        self.max_bytes = int(settings.max_decode_mb * 2**20)
        self.inflight = 0  # photos being decoded and scored
        self.queue = None  # --keep-uploads: uploads kept for labelling (adaptation.queue)
        if settings.keep_uploads:
            from cropdoc.adaptation.queue import Queue

            self.queue = Queue.open(
                settings.keep_uploads, settings.queue_mb, settings.keep_sample, self.model.info
            )

    def health(self) -> dict:
        recent = self.batcher.batches
        return {
            "status": "ok",
            "inflight": self.inflight,
            "mean_batch": round(sum(recent) / len(recent), 2) if recent else None,
            "threads": self.settings.threads,
        }

    async def predict(self, request: Request, explain: bool, fuse: bool = False) -> dict:
        """Read the upload, then (counted in flight) decode, batch and answer; ``fuse``:
        every photo of the form is of one plant, and the answer is theirs together."""
        if explain and fuse:
            raise HTTPException(400, "explain=1 answers one photo: leave out fuse=1")
        if explain and self.model.explainer is None:
            raise HTTPException(
                400, "explain=1 needs the torch runtime (cropdoc serve --runtime torch)"
            )
        started = time.perf_counter()
        body = await read_body(request, self.limit, self.settings.body_timeout_s, what=IMAGE_BODY)
        loop = asyncio.get_running_loop()
        kind = request.headers.get("content-type", "")
        photos = await loop.run_in_executor(self.decoders, _image_parts, body, kind)
        photos = photos if fuse else photos[:1]
        # in flight from here, a photo at a time: a slow upload holds no slot while its body
        # arrives, and a form of 16 photos holds 16
        count, limit = len(photos), self.settings.max_inflight
        if count > limit:
            raise HTTPException(
                400, f"this server scores at most {limit} photos at a time: send fewer"
            )
        if self.inflight + count > limit:
            raise HTTPException(
                503,
                "busy: too many images in flight, try again shortly",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.inflight += count
        try:
            if fuse:
                result = await self._fuse(photos)
            else:
                result = await self._diagnose(photos[0][1], explain)
        finally:
            self.inflight -= count
        result["ms"] = round(1000 * (time.perf_counter() - started), 2)
        return result

    async def _diagnose(self, data: bytes, explain: bool) -> dict:
        loop = asyncio.get_running_loop()
        info = self.model.info
        pixels, original = await loop.run_in_executor(
            self.decoders, _decode, data, info["cache_size"], self.max_bytes
        )
        quality = checks.check(pixels, original)
        probs, ood, extra = await self.batcher.submit(pixels)
        if not _finite(probs, ood):
            raise HTTPException(500, NOT_FINITE)
        (verdict,) = verdicts(
            probs[None], np.array([ood]), info["min_confidence"], [quality.problem]
        )
        k = self.settings.top_k
        result = {
            **diagnosis(info["classes"], probs, ood, verdict, quality.problem, k),
            "model": {"arch": info["arch"], "version": info["version"]},
            "runtime": self.settings.runtime,
        }
        result.update(extra)  # a tiled model's top tiles, a multi-target model's answers
        await self._keep(pixels, verdict, result)
        if explain:
            pngs = await loop.run_in_executor(self.executor, self.model.explain_pngs, pixels)
            result.update(pngs)
        return result

    async def _fuse(self, photos: list[tuple[str, bytes]]) -> dict:
        """Several photos of one plant (the form's file parts), one answer (``fusion``); a
        part that cannot be read, or that the model gives no finite answer for, is left
        out and named, as a photo sent back is."""
        loop = asyncio.get_running_loop()
        info = self.model.info
        decoded, bad = [], []
        for name, data in photos:
            try:
                image = await loop.run_in_executor(
                    self.decoders, _decode, data, info["cache_size"], self.max_bytes
                )
                decoded.append((name, image))  # image: (pixels, size as taken)
            except HTTPException as exc:
                bad.append((name, f"unreadable: {exc.detail}"))
        if not decoded:
            status = 415 if all("unsupported" in why for _, why in bad) else 400
            named = "; ".join(f"{name}: {why}" for name, why in bad)
            raise HTTPException(status, f"no photo of the form could be read ({named})"[:600])
        scored = await asyncio.gather(*(self.batcher.submit(p) for _, (p, _) in decoded))
        kept = [n for n, (p, o, _) in enumerate(scored) if _finite(p, o)]
        bad += [(decoded[n][0], NOT_FINITE) for n in range(len(decoded)) if n not in kept]
        if not kept:
            raise HTTPException(500, NOT_FINITE)
        decoded, scored = [decoded[n] for n in kept], [scored[n] for n in kept]
        problems = [checks.check(pixels, original).problem for _, (pixels, original) in decoded]
        probs = np.stack([p for p, _, _ in scored])
        ood = np.array([o for _, o, _ in scored], np.float64)
        names = [name for name, _ in decoded]
        found = fusion.fuse(names, probs, ood, problems, info["min_confidence"])
        found.left_out += bad
        each = verdicts(probs, ood, info["min_confidence"], problems)
        k = self.settings.top_k
        for (_, (pixels, _)), verdict, p, o, q in zip(
            decoded, each, probs, ood, problems, strict=True
        ):
            await self._keep(pixels, verdict, diagnosis(info["classes"], p, o, verdict, q, k))
        return {
            **fusion.fused_answer(info["classes"], found, self.settings.top_k),
            "used": found.used,
            "left_out": [{"photo": name, "why": why} for name, why in found.left_out],
            "photos": [
                {
                    "photo": name,
                    "verdict": v,
                    "quality": q,
                    "label": info["classes"][int(p.argmax())],
                    "confidence": round(float(p.max()), 6),
                }
                for name, v, q, p in zip(names, each, problems, probs, strict=True)
            ],  # fmt: skip
            "model": {"arch": info["arch"], "version": info["version"]},
            "runtime": self.settings.runtime,
        }

    async def _keep(self, pixels: np.ndarray, verdict: str, answer: dict) -> None:
        """With ``--keep-uploads``: keep the photo and the answer it got, when the queue
        keeps answers of this ``verdict`` (off the event loop)."""
        reason = self.queue.reason(verdict) if self.queue is not None else ""
        if reason:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.decoders, self.queue.keep, pixels, answer, reason)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI app for ``settings`` (default: from the environment)."""
    service = Service((settings or Settings.from_env()).checked())
    page = resources.files("cropdoc.serve").joinpath("page.html").read_text(encoding="utf-8")
    # no /docs page: Swagger UI comes from a CDN, which fails offline; /openapi.json stays
    app = FastAPI(
        title="cropdoc",
        version=__version__,
        description="Diagnose crop diseases from leaf photos.",
        docs_url=None,
        redoc_url=None,
    )
    guard(app, service.settings.hosts or allowed_hosts("127.0.0.1"))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return service.health()

    @app.head("/health", include_in_schema=False)
    async def health_head() -> Response:
        return Response()

    @app.get("/model")
    async def model_info() -> dict:
        explains = service.model.explainer is not None
        return {
            **service.model.info,
            "runtime": service.settings.runtime,
            "explain": explains,
            "keeps_uploads": service.queue is not None,  # the web app keeps photos for it
        }

    @app.post("/predict")
    async def predict(request: Request, explain: bool = False, fuse: bool = False) -> dict:
        """Diagnose one photo: multipart (any file field) or the raw image bytes as body;
        with ``fuse=1``, the photos of a multipart form are of one plant: one answer."""
        return await service.predict(request, explain, fuse)

    _mount_web_app(app, service.settings.model)
    return app


def _mount_web_app(app: FastAPI, model: str) -> None:
    """``/app``: the web app built beside the model (``cropdoc export MODEL --format web``:
    ``RUN/app``, or ``app/`` beside a ``.onnx`` file), looked up at each request (an app
    exported while the server runs is served at once). Only the files its ``files.json``
    lists are served, and only as plain files (never through a link); anything else, and
    every path while no app is built, is a 404 that says how to build it."""
    folder = model if os.path.isdir(model) else os.path.dirname(os.path.abspath(model))
    web = Path(folder) / "app"

    @app.get("/app", include_in_schema=False)
    async def app_root() -> Response:
        return RedirectResponse("/app/")

    @app.get("/app/{rest:path}", include_in_schema=False)
    async def app_file(rest: str) -> Response:
        from cropdoc.inference.webapp import app_files

        listed = app_files(web)
        if listed is None:
            raise HTTPException(
                404, f"no web app beside {model}: build it with cropdoc export {model} --format web"
            )
        name = rest or "index.html"
        path = web / name
        if name not in listed or not _plain_file(web, name):
            raise HTTPException(404, f"/app/{name[:80]} is not a file of the web app")
        kind = APP_TYPES.get(path.suffix) or mimetypes.guess_type(name)[0]
        return FileResponse(
            path, media_type=kind or "application/octet-stream", headers=APP_HEADERS
        )


def _plain_file(folder: Path, name: str) -> bool:
    """True when ``folder/name`` is a regular file reached through no link."""
    path = folder
    for part in name.split("/"):
        path = path / part
        if path.is_symlink():
            return False
    return path.is_file()


def _finite(probs: np.ndarray, ood) -> bool:
    """True when the model's answer for a photo is a number: a NaN is never a diagnosis."""
    return bool(np.isfinite(probs).all() and np.isfinite(ood))


def _image_parts(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """The images of a multipart body (its file parts, with their file names), or the body.

    Multipart bodies go through python-multipart's streaming parser with limits: at most
    ``MAX_PARTS`` parts, 8 headers of at most 4 kB a part; a part's content is never parsed
    again, so nesting costs nothing."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        return [("photo", body)]
    if not options.get(b"boundary"):
        raise HTTPException(400, "malformed multipart body: no boundary")
    parts: list[dict] = []
    header = {"field": b"", "value": b""}

    def part_begin() -> None:
        if len(parts) == MAX_PARTS:
            raise HTTPException(400, f"more than {MAX_PARTS} parts in the form: send fewer images")
        parts.append({"headers": {}, "data": []})

    def header_end() -> None:
        parts[-1]["headers"][header["field"].lower()] = header["value"]
        header.update(field=b"", value=b"")

    callbacks = {
        "on_part_begin": part_begin,
        "on_part_data": lambda data, start, end: parts[-1]["data"].append(data[start:end]),
        "on_header_field": lambda data, start, end: header.update(
            field=header["field"] + data[start:end]
        ),
        "on_header_value": lambda data, start, end: header.update(
            value=header["value"] + data[start:end]
        ),
        "on_header_end": header_end,
    }
    try:
        parser = MultipartParser(options[b"boundary"], callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise HTTPException(400, f"malformed multipart body: {one_line(exc, 100)}") from None
    found = []
    for n, part in enumerate(parts):
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if b"filename" in disposition or disposition.get(b"name") == b"file":
            name = disposition.get(b"filename", b"").decode("utf-8", "replace") or f"photo {n + 1}"
            found.append((name, b"".join(part["data"])))
    if not found:
        raise HTTPException(400, "no file in the multipart form: send the image as a file field")
    return found


def _decode(data: bytes, max_size: int, max_bytes: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The upload's pixels and its size as taken (width, height)."""
    try:
        return read_image(data, max_size=max_size, max_bytes=max_bytes)
    except TooLargeError as exc:
        raise HTTPException(413, f"image too large: {exc}") from None
    except FormatError as exc:
        raise HTTPException(415, f"unsupported image: {exc}") from None
    except ImageError as exc:
        raise HTTPException(400, f"bad image: {exc}") from None
