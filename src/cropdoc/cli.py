"""The ``cropdoc`` command: parse arguments, call the Python API, print the result.

Heavy modules (numpy, Pillow, torch, timm) are imported inside the commands, so
``cropdoc --help`` starts quickly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cropdoc import __version__
from cropdoc.errors import UserError

app = typer.Typer(
    name="cropdoc",
    help="Train, compare, explain and deploy crop-disease image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
DataArg = Annotated[Path, typer.Argument(help="Dataset folder or CSV manifest.")]


def _emit(result: dict, as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(result, indent=1, ensure_ascii=False))
    else:
        print(text)


def _version(value: bool) -> None:
    if value:
        print(f"cropdoc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Train, compare, explain and deploy crop-disease image classifiers."""


@app.command()
def scan(data: DataArg, as_json: JsonOpt = False) -> None:
    """List a dataset's classes, image counts, unlabelled test images and skipped files."""
    from cropdoc.data.layouts import discover

    summary = discover(data).summary()
    _emit(summary, as_json, _describe(summary))


def _describe(summary: dict) -> str:
    lines = [
        f"{summary['root']} ({summary['layout']} layout): {summary['labelled']} labelled "
        f"images in {len(summary['classes'])} classes"
    ]
    width = max(len(c) for c in summary["classes"])
    lines += [f"  {c:<{width}}  {n:>6}" for c, n in summary["counts"].items()]
    if summary["unlabelled_test"]:
        lines.append(f"unlabelled test images: {summary['unlabelled_test']}")
    lines += [f"skipped {s['path']}: {s['reason']}" for s in summary["skipped"]]
    lines += [f"warning: {w}" for w in summary["warnings"]]
    return "\n".join(lines)


@app.command()
def prepare(
    data: DataArg,
    cache: Annotated[
        Path | None,
        typer.Option(
            help="Cache folder (default: keyed, under $CROPDOC_CACHE or ~/.cache/cropdoc)."
        ),
    ] = None,
    size: Annotated[int, typer.Option(help="Longer side of the cached images, in pixels.")] = 256,
    workers: Annotated[
        int | None, typer.Option(help="Decoding processes (default: all cores).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Decode and shrink every image once into a fast, memory-mapped cache."""
    from cropdoc.data.cache import prepare as run_prepare

    result = run_prepare(data, cache=cache, size=size, workers=workers, quiet=as_json)
    summary = result.summary()
    lines = [f"bad image {e['path']}: {e['reason']}" for e in summary["errors"]]
    lines += [f"skipped {s['path']}: {s['reason']}" for s in summary["skipped"]]
    lines.append(
        f"prepared {summary['cached']} of {summary['images']} images into {summary['cache']} "
        f"({summary['decoded']} decoded, {summary['reused']} reused, "
        f"{len(summary['errors'])} bad) in {summary['seconds']:.1f}s"
    )
    _emit(summary, as_json, "\n".join(lines))


@app.command()
def show(
    data: DataArg,
    per_label: Annotated[int, typer.Option(help="Images per label.")] = 3,
    out: Annotated[Path, typer.Option(help="The PNG to write.")] = Path("samples.png"),
    seed: Annotated[int, typer.Option(help="Seed of the random choice.")] = 42,
    as_json: JsonOpt = False,
) -> None:
    """Save a grid of random images per label, with the label names and counts."""
    from cropdoc.show import show_samples

    result = show_samples(data, out=out, per_label=per_label, seed=seed)
    labels = ", ".join(f"{k} ({v})" for k, v in result["classes"].items())
    _emit(result, as_json, f"labels: {labels}\nwrote {result['out']}")


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to create.")],
    per_class: Annotated[int, typer.Option(help="Training images per class.")] = 50,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed draws the same data.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Draw the demo dataset: leaf photos with small lesions, in Kaggle paddy layout."""
    from cropdoc.data.demo import make_demo_data

    result = make_demo_data(out, per_class=per_class, seed=seed, quiet=as_json)
    _emit(
        result,
        as_json,
        f"demo dataset: {result['root']} ({result['train_images']} training "
        f"and {result['test_images']} test images; masks in {result['masks']})",
    )


@app.command()
def fetch(
    source: Annotated[str, typer.Argument(help="kaggle:<competition>, or a downloaded zip.")],
    dest: Annotated[Path, typer.Option(help="Folder to unpack into (new or empty).")],
    as_json: JsonOpt = False,
) -> None:
    """Download a Kaggle competition's data (or unpack its zip) into a folder."""
    from cropdoc.fetch import fetch as run_fetch

    result = run_fetch(source, dest)
    _emit(result, as_json, f"unpacked {result['files']} files into {result['dest']}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data and results.")] = Path(
        "demo"
    ),
    as_json: JsonOpt = False,
) -> None:
    """Run the whole pipeline on the embedded demo dataset."""
    from cropdoc.pipeline import run_demo

    result = run_demo(out, quiet=as_json)
    _emit(result, as_json, "\n".join(f"{k}: {v}" for k, v in result.items()))


def main() -> None:
    """Entry point: run the app and turn user errors into one line on stderr."""
    try:
        app()
    except UserError as exc:
        print(f"cropdoc: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
