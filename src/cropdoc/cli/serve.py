"""The servers: serve (diagnoses), label (the page to label the photos serve kept)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cropdoc.cli.options import AllowHostOpt
from cropdoc.core.errors import UserError


def serve(
    model: Annotated[
        Path,
        typer.Argument(
            help="Run folder or bundle; an exported model (.onnx, OpenVINO .xml or its "
            "folder, .tflite) with --runtime onnx|openvino|tflite."
        ),
    ],
    host: Annotated[
        str, typer.Option(help="Address to bind (loopback unless you say).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    runtime: Annotated[
        str, typer.Option(help="torch, onnx, openvino or tflite (as predict's).")
    ] = "torch",
    workers: Annotated[int, typer.Option(help="Server processes.")] = 1,
    threads: Annotated[
        int | None, typer.Option(help="Model threads per process (default: cores / workers).")
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload (413 above).")] = 10.0,
    max_batch: Annotated[
        int, typer.Option(help="Most images per model call (1: no batching).")
    ] = 16,
    batch_wait_ms: Annotated[float, typer.Option(help="How long a batch waits to fill.")] = 5.0,
    max_inflight: Annotated[
        int, typer.Option(help="Photos in flight per process (503 above).")
    ] = 64,
    max_decode_mb: Annotated[
        float, typer.Option(help="Memory one photo may take decoded (413 above).")
    ] = 64.0,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds an upload may take to arrive (408 above).")
    ] = 30.0,
    allow_host: AllowHostOpt = None,
    keep_uploads: Annotated[
        Path | None,
        typer.Option(
            help="Keep the photos answered uncertain or out of scope (and a sample of the "
            "others) with their answers in this folder, for labelling (cropdoc label)."
        ),
    ] = None,
    queue_mb: Annotated[
        float,
        typer.Option(help="The most the --keep-uploads folder may hold; full, it keeps no more."),
    ] = 1000.0,
    keep_sample: Annotated[
        float, typer.Option(help="Share of the other answers kept (--keep-uploads).")
    ] = 0.05,
) -> None:
    """Serve diagnoses over HTTP: POST /predict, GET /health, /model, the page at /."""
    import os

    from cropdoc.core.extras import require

    require("serve", "cropdoc serve")

    from cropdoc.serve.app import Settings, check_address, create_app
    from cropdoc.serve.http import allowed_hosts

    if not 1 <= workers <= 256:
        raise UserError(f"--workers must be from 1 to 256, not {workers}")
    settings = Settings(
        model=str(model.resolve()),
        runtime=runtime,
        max_upload_mb=max_upload_mb,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        max_inflight=max_inflight,
        max_decode_mb=max_decode_mb,
        body_timeout_s=body_timeout,
        threads=max(1, (os.cpu_count() or 1) // workers) if threads is None else threads,
        hosts=allowed_hosts(host, allow_host or ()),
        keep_uploads=str(keep_uploads.absolute()) if keep_uploads else None,
        queue_mb=queue_mb,
        keep_sample=keep_sample,
    ).checked()
    check_address(host, port)
    app = create_app(settings)  # a bad MODEL fails here, with one line, before serving
    print(
        f"cropdoc: serving {model} on http://{host}:{port}/ (API at /openapi.json)", file=sys.stderr
    )
    if keep_uploads:
        print(f"cropdoc: keeping the photos it does not know in {keep_uploads}", file=sys.stderr)
    _run(app, settings, host, port, workers)


def _run(app, settings, host: str, port: int, workers: int) -> None:
    """Serve ``app`` in this process, or in ``workers`` processes that each build their own
    app from the settings in their environment."""
    import os

    import uvicorn

    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="warning")
        return
    os.environ["CROPDOC_SERVE_SETTINGS"] = settings.to_env()
    uvicorn.run(
        "cropdoc.serve.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
    )


def label(
    queue: Annotated[Path, typer.Argument(help="The folder serve --keep-uploads kept photos in.")],
    host: Annotated[str, typer.Option(help="Address to bind (loopback).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8002,
    allow_host: AllowHostOpt = None,
) -> None:
    """Serve a page to label the photos a server kept: every click is saved to
    QUEUE/labels.csv, a manifest adapt and train read."""
    from cropdoc.core.extras import require

    require("serve", "cropdoc label")

    import uvicorn

    from cropdoc.serve.app import check_address
    from cropdoc.serve.http import allowed_hosts
    from cropdoc.serve.labelling import create_labelling_app

    check_address(host, port)
    app = create_labelling_app(queue, allowed_hosts(host, allow_host or ()))
    print(f"cropdoc: label the photos on http://{host}:{port}/ (Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning")


COMMANDS = {"serve": serve, "label": label}
