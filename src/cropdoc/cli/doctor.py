"""The dataset doctor: doctor (its check, the review page, --apply)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cropdoc.cli.options import (
    AllowHostOpt,
    DataArg,
    JsonOpt,
    emit,
    given_settings,
    training_options,
)


@training_options(exclude=("fold",))
def doctor(
    ctx: typer.Context,
    data: DataArg,
    folds: Annotated[
        int, typer.Option(help="K-fold training for label errors and outliers (0: skip it).")
    ] = 5,
    out: Annotated[Path, typer.Option(help="Folder for the report; reuse to resume.")] = Path(
        "doctor"
    ),
    similarity: Annotated[
        float, typer.Option(help="Thumbnail correlation from which photos are near copies.")
    ] = 0.8,
    apply: Annotated[
        Path | None,
        typer.Option(help="Write a cleaned manifest from this decisions CSV (keep/drop/relabel)."),
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="The manifest --apply writes (default OUT/clean.csv).")
    ] = None,
    review: Annotated[
        bool, typer.Option(help="Serve a page to review the findings (saves OUT/decisions.csv).")
    ] = False,
    host: Annotated[str, typer.Option(help="Address of --review (loopback).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of --review.")] = 8001,
    allow_host: AllowHostOpt = None,
    engine: Annotated[
        str, typer.Option(help="Where the folds train: local (one after the other) or ray.")
    ] = "local",
    address: Annotated[
        str | None, typer.Option(help="ray: the cluster to join (auto: this machine's).")
    ] = None,
    cpus_per_fold: Annotated[int, typer.Option(help="ray: CPUs of each fold's task.")] = 1,
    gpus_per_fold: Annotated[float, typer.Option(help="ray: GPUs of each fold's task.")] = 0,
    as_json: JsonOpt = False,
    **options,
) -> None:
    """Find duplicates, leaks between splits, likely label errors and outliers; review
    them on a page; write a cleaned manifest (your files are never changed)."""
    from cropdoc.core.errors import UserError
    from cropdoc.core.extras import require

    if apply is not None:
        _apply(data, apply, manifest or out / "clean.csv", as_json)
        return
    require("doctor", "cropdoc doctor")
    if review:
        require("serve", "cropdoc doctor --review")
    if engine not in ("local", "ray"):
        raise UserError("--engine must be local or ray")
    runner = None
    if engine == "ray":
        from cropdoc.scale.folds import ray_runner

        runner = ray_runner(address, cpus_per_fold, gpus_per_fold)
    if not (review and (out / "findings.json").exists()):
        settings = given_settings(ctx, options, data)
        result, text = _check(data, out, folds, settings, similarity, runner)
        if not review:
            emit(result, as_json, text)
            return
        print(text, file=sys.stderr)
    _review(out, host, port, allow_host or [])


def _apply(data: Path, decisions: Path, manifest: Path, as_json: bool) -> None:
    """``--apply``: the cleaned manifest from a decisions CSV."""
    from cropdoc.data.decisions import apply_decisions

    result = apply_decisions(data, decisions, manifest)
    emit(
        result,
        as_json,
        f"wrote {result['manifest']}: {result['photos']} photos ({result['dropped']} "
        f"dropped, {result['relabelled']} relabelled); train on it: cropdoc train "
        f"{result['manifest']}",
    )


def _check(data: Path, out: Path, folds: int, settings: dict, similarity: float, runner):
    """Run the doctor; its findings as JSON and as lines of text."""
    from cropdoc.audit.doctor import doctor as run_doctor

    result = run_doctor(data, out, folds, settings, similarity, runner)
    counts = result.summary["counts"]
    text = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    lines = [f"{result.summary['photos']} photos: {text}"]
    lines += [f"warning: {w}" for w in result.summary.get("warnings", [])]
    lines.append(f"report: {out / 'report.md'}; issues: {out / 'issues.csv'}")
    return result.to_dict(), "\n".join(lines)


def _review(out: Path, host: str, port: int, allow_host: list[str]) -> None:
    """``--review``: serve the review page of the findings in ``out`` until Ctrl-C."""
    import uvicorn

    from cropdoc.audit.review import create_review_app
    from cropdoc.serve.app import check_address
    from cropdoc.serve.http import allowed_hosts

    check_address(host, port)
    app = create_review_app(out, allowed_hosts(host, allow_host))
    print(f"cropdoc: review the findings on http://{host}:{port}/ (Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning")


COMMANDS = {"doctor": doctor}
