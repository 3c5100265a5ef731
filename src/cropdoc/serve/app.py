"""The web service: ``POST /predict``, ``GET /health``, ``GET /model``, the page at ``/``.

Uploads are read in memory up to a size limit (413 beyond it, before the rest of the body is
read), decoded with the same safe decoder as everything else (415 for other formats, 400 for
bombs and broken files), and nothing the client sends is written to disk. Requests that
arrive together are batched for the model; a bounded number of images is in flight (503
beyond it). Settings come from ``CROPDOC_SERVE_*`` environment variables so that every
uvicorn worker process builds the same app.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

from cropdoc import __version__
from cropdoc.data.images import FormatError, ImageError, load_image
from cropdoc.serve.batcher import Batcher


@dataclass
class Settings:
    """What ``cropdoc serve`` was asked for."""

    model: str
    runtime: str = "torch"
    max_upload_mb: float = 10.0
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    max_inflight: int = 64
    top_k: int = 3
    threads: int | None = None  # model threads in this process (None: the runtime's default)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(**json.loads(os.environ["CROPDOC_SERVE_SETTINGS"]))

    def to_env(self) -> str:
        return json.dumps(asdict(self))


class Model:
    """The model behind the service: batched probabilities and, with torch, Grad-CAM."""

    def __init__(self, settings: Settings):
        self.settings = settings
        if settings.runtime == "onnx":
            from cropdoc.inference.onnx_runtime import onnx_scorer

            self.scorer = onnx_scorer(settings.model, settings.threads)
            self.explainer = None
        else:
            import torch

            from cropdoc.inference.explain import Explainer
            from cropdoc.inference.predict import torch_scorer

            if settings.threads:
                torch.set_num_threads(settings.threads)

            self.scorer = torch_scorer([settings.model])
            # one copy of the model: explanations run on the model thread, between batches
            self.explainer = Explainer(settings.model, loaded=self.scorer.loaded)
        self.info = self.scorer.info

    def explain_pngs(self, pixels: np.ndarray) -> dict:
        """Grad-CAM of the predicted class as base64 PNGs: the overlay, the coloured heatmap
        alone and the model's input (the last two line up, for the page's opacity slider)."""
        from cropdoc.inference.explain import heat_colours, overlay

        item = self.explainer.explain_pixels(pixels)
        heat = heat_colours(item.heatmap).astype(np.uint8)
        return {
            "overlay_png": _png(overlay(item.image, item.heatmap)),
            "heatmap_png": _png(heat),
            "input_png": _png(item.image),
        }


def _png(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI app for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    model = Model(settings)
    executor = ThreadPoolExecutor(1, thread_name_prefix="cropdoc-model")
    decoders = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="cropdoc-decode")
    batcher = Batcher(
        model.scorer.probabilities, executor, settings.max_batch, settings.batch_wait_ms / 1000
    )
    limit = int(settings.max_upload_mb * 2**20)
    state = {"inflight": 0}
    page = resources.files("cropdoc.serve").joinpath("page.html").read_text(encoding="utf-8")
    app = FastAPI(
        title="cropdoc",
        version=__version__,
        description="Diagnose crop diseases from leaf photos.",
    )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        recent = batcher.batches
        mean_batch = round(sum(recent) / len(recent), 2) if recent else None
        return {
            "status": "ok",
            "inflight": state["inflight"],
            "mean_batch": mean_batch,
            "threads": settings.threads,
        }

    @app.get("/model")
    async def model_info() -> dict:
        return {**model.info, "runtime": settings.runtime, "explain": model.explainer is not None}

    @app.post("/predict")
    async def predict(request: Request, explain: bool = False) -> dict:
        """Diagnose one photo: multipart (any file field) or the raw image bytes as body."""
        if explain and model.explainer is None:
            raise HTTPException(
                400, "explain=1 needs the torch runtime (cropdoc serve --runtime torch)"
            )
        if state["inflight"] >= settings.max_inflight:
            raise HTTPException(503, "busy: too many images in flight, try again shortly")
        state["inflight"] += 1
        try:
            started = time.perf_counter()
            body = await _read_body(request, limit)
            data = _image_bytes(body, request.headers.get("content-type", ""))
            loop = asyncio.get_running_loop()
            pixels = await loop.run_in_executor(decoders, _decode, data, model.info["cache_size"])
            probs = await batcher.submit(pixels)
            order = np.argsort(-probs)[: settings.top_k]
            result = {
                "top": [
                    {"label": model.info["classes"][i], "prob": round(float(probs[i]), 6)}
                    for i in order
                ],
                "model": {"arch": model.info["arch"], "version": model.info["version"]},
                "runtime": settings.runtime,
            }
            if explain:
                result.update(await loop.run_in_executor(executor, model.explain_pngs, pixels))
            result["ms"] = round(1000 * (time.perf_counter() - started), 2)
            return result
        finally:
            state["inflight"] -= 1

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (or when its
    declared length already does), so an oversized upload is never read in full."""
    declared = request.headers.get("content-length")
    too_big = HTTPException(413, f"upload over the limit of {limit / 2**20:g} MB")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    if not size:
        raise HTTPException(400, "empty request: send an image (multipart or raw bytes)")
    return b"".join(chunks)


def _image_bytes(body: bytes, content_type: str) -> bytes:
    """The image inside a multipart body (its first file part), or the body itself."""
    if not content_type.lower().startswith("multipart/form-data"):
        return body
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise HTTPException(400, "malformed multipart body")
    for part in message.iter_parts():
        if (
            part.get_filename() is not None
            or part.get_param("name", header="content-disposition") == "file"
        ):
            return part.get_payload(decode=True) or b""
    raise HTTPException(400, "no file in the multipart form: send the image as a file field")


def _decode(data: bytes, max_size: int) -> np.ndarray:
    try:
        return load_image(data, max_size=max_size)
    except FormatError as exc:
        raise HTTPException(415, f"unsupported image: {exc}") from None
    except ImageError as exc:
        raise HTTPException(400, f"bad image: {exc}") from None
