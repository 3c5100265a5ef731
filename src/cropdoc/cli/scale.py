"""Work that outgrows one call: score (bulk scoring into parquet shards, local or on Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cropdoc.cli.options import BsOpt, DeviceOpt, JsonOpt, emit


def score(
    model: Annotated[Path, typer.Argument(help="Run folder, or an exported .onnx model.")],
    inputs: Annotated[
        list[Path], typer.Argument(help="Photos, folders or CSV lists of paths (a path column).")
    ],
    out: Annotated[Path, typer.Option(help="Folder of the parquet shards; reuse to resume.")],
    engine: Annotated[str, typer.Option(help="local (processes here) or ray (a cluster).")] = (
        "local"
    ),
    address: Annotated[
        str | None, typer.Option(help="ray: the cluster to join (auto: this machine's).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Workers, one model each (default: one per core).")
    ] = None,
    threads: Annotated[int, typer.Option(help="Threads of each worker's model.")] = 1,
    runtime: Annotated[str, typer.Option(help="torch, or onnx (an exported model).")] = "torch",
    shard_size: Annotated[int, typer.Option(help="Photos per parquet shard.")] = 1000,
    top_k: Annotated[int, typer.Option(help="Classes kept per photo.")] = 3,
    bs: BsOpt = 64,
    tta: Annotated[bool, typer.Option(help="Average over test-time views.")] = False,
    quality_check: Annotated[
        bool, typer.Option(help="Send back small, blurred, dark, overexposed or non-leaf photos.")
    ] = True,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Score many photos into resumable parquet shards (path, verdict, confidence,
    out-of-scope score, top-k, every target), on this machine or a Ray cluster."""
    from cropdoc.core.errors import UserError
    from cropdoc.scale.engines import Job
    from cropdoc.scale.score import score as run
    from cropdoc.scale.score import summary_text

    if runtime not in ("torch", "onnx"):
        raise UserError("score --runtime must be torch or onnx")
    job = Job((str(model),), runtime, threads, top_k, bs, quality_check, tta, device)
    result = run(job, inputs, out, engine, workers, shard_size, address)
    emit(result, as_json, summary_text(result))


COMMANDS = {"score": score}
