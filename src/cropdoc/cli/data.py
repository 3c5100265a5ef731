"""The data commands: scan, prepare, show, demo-data, fetch, models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cropdoc.cli.options import (
    DataArg,
    JsonOpt,
    emit,
)


def scan(data: DataArg, as_json: JsonOpt = False) -> None:
    """List a dataset's classes, image counts, unlabelled test images and skipped files."""
    from cropdoc.data.layouts import discover

    summary = discover(data).summary()
    emit(summary, as_json, _describe(summary))


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


def prepare(
    data: DataArg,
    cache: Annotated[
        Path | None,
        typer.Option(
            help="Cache folder (default: keyed, under $CROPDOC_CACHE or ~/.cache/cropdoc)."
        ),
    ] = None,
    size: Annotated[
        int, typer.Option(help="Longer side of the cached images; 0 keeps full resolution.")
    ] = 256,
    workers: Annotated[
        int | None, typer.Option(help="Decoding processes (default: all cores).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Decode and shrink every image once into a fast, memory-mapped cache."""
    from cropdoc.data.cache import prepare as run_prepare

    result = run_prepare(data, cache=cache, size=size, workers=workers)
    summary = result.summary()
    lines = [f"bad image {e['path']}: {e['reason']}" for e in summary["errors"]]
    lines += [f"skipped {s['path']}: {s['reason']}" for s in summary["skipped"]]
    lines.append(
        f"prepared {summary['cached']} of {summary['images']} images into {summary['cache']} "
        f"({summary['decoded']} decoded, {summary['reused']} reused, "
        f"{len(summary['errors'])} bad) in {summary['seconds']:.1f}s"
    )
    emit(summary, as_json, "\n".join(lines))


def show(
    data: DataArg,
    per_label: Annotated[int, typer.Option(help="Images per label.")] = 3,
    out: Annotated[Path, typer.Option(help="The PNG to write.")] = Path("samples.png"),
    seed: Annotated[int, typer.Option(help="Seed of the random choice.")] = 42,
    as_json: JsonOpt = False,
) -> None:
    """Save a grid of random images per label, with the label names and counts."""
    from cropdoc.data.show import show_samples

    result = show_samples(data, out=out, per_label=per_label, seed=seed)
    labels = ", ".join(f"{k} ({v})" for k, v in result["classes"].items())
    emit(result, as_json, f"labels: {labels}\nwrote {result['out']}")


def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to create.")],
    per_class: Annotated[int, typer.Option(help="Training images per class.")] = 50,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed draws the same data.")] = 0,
    size: Annotated[
        str | None,
        typer.Option(
            help="HxW of large field photos, e.g. 1536x2048 (default: 640x480 close-ups)."
        ),
    ] = None,
    lesion_scale: Annotated[
        float | None, typer.Option(help="Pixels per lesion unit (default 1.6; field photos 2.0).")
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Comma-separated subset of the classes (default: all).")
    ] = None,
    views: Annotated[
        int, typer.Option(help="Photos of each plant (other framings and light), 1 to 10.")
    ] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Draw the demo dataset: leaf photos with small lesions, in Kaggle paddy layout."""
    from cropdoc.config import parse_size
    from cropdoc.data.demo import make_demo_data

    result = make_demo_data(
        out,
        per_class=per_class,
        seed=seed,
        size=parse_size(size) if size else None,
        lesion_scale=lesion_scale,
        classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None,
        views=views,
    )
    emit(
        result,
        as_json,
        f"demo dataset: {result['root']} ({result['train_images']} training "
        f"and {result['test_images']} test images; masks in {result['masks']})",
    )


def fetch(
    source: Annotated[str, typer.Argument(help="kaggle:<competition>, or a downloaded zip.")],
    dest: Annotated[Path, typer.Option(help="Folder to unpack into (new or empty).")],
    as_json: JsonOpt = False,
) -> None:
    """Download a Kaggle competition's data (or unpack its zip) into a folder."""
    from cropdoc.data.fetch import fetch as run_fetch

    result = run_fetch(source, dest)
    emit(result, as_json, f"unpacked {result['files']} files into {result['dest']}")


def models(
    filter_text: Annotated[str, typer.Option("--filter", help="Only names containing this.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """List the blog's preset architectures (params, GMACs) and other timm names."""
    from cropdoc.model.archs import PRESETS, count, list_models

    names = list_models(filter_text)
    presets = [count(n) for n in names if n in PRESETS]
    others = [n for n in names if n not in PRESETS]
    result = {
        "presets": [
            {
                "name": i.name,
                "params_m": round(i.params_m, 2),
                "gmacs": round(i.gmacs, 2),
                "input_size": list(i.input_size),
                "note": PRESETS[i.name],
            }
            for i in presets
        ],
        "other_timm_models": others,
    }
    lines = [f"{'architecture':<24} {'params':>8} {'GMACs':>7}  {'size':>7}  note"]
    lines += [
        f"{p['name']:<24} {p['params_m']:>7.1f}M {p['gmacs']:>7.2f}  "
        f"{p['input_size'][0]:>3}x{p['input_size'][1]:<3}  {p['note']}"
        for p in result["presets"]
    ]
    if others:
        lines.append(
            f"other timm models: {', '.join(others[:60])}"
            + (f" ... ({len(others)} in all)" if len(others) > 60 else "")
        )
    emit(result, as_json, "\n".join(lines))


COMMANDS = {
    "scan": scan,
    "prepare": prepare,
    "show": show,
    "demo-data": demo_data,
    "fetch": fetch,
    "models": models,
}
