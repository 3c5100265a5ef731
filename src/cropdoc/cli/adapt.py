"""The commands that adapt a model to a new site: adapt (a few labelled photos),
adapt-norms (unlabelled photos, batch-norm statistics only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cropdoc.cli.options import DeviceOpt, JsonOpt, KeepOpt, check_keep, emit
from cropdoc.core.errors import UserError

ParentArg = Annotated[Path, typer.Argument(help="The run folder or bundle to adapt.")]
OutOpt = Annotated[Path, typer.Option(help="Folder of the adapted model (a new one).")]


def adapt(
    parent: ParentArg,
    data: Annotated[
        Path, typer.Argument(help="Labelled photos of the new site: a folder or a manifest.")
    ],
    out: OutOpt,
    mix: Annotated[
        float,
        typer.Option(help="Photos of the parent's training split mixed in per new photo."),
    ] = 0.0,
    epochs: Annotated[
        str, typer.Option(help="Epochs, or auto (about 80 steps, 5 to 40 epochs).")
    ] = "auto",
    lr: Annotated[
        float, typer.Option(help="Learning rate of the head (the body: 0.3 of it).")
    ] = 0.003,
    bs: Annotated[int, typer.Option(help="Batch size (at most the training photos).")] = 16,
    valid_pct: Annotated[
        float, typer.Option(help="Share of each class validated on, where DATA has no split.")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the split, the draw and the order.")] = 42,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Go on training a model on labelled photos of a new site, its classes kept; refit its
    calibration and out-of-scope score there."""
    from cropdoc.adaptation.site import adapt as adapt_site

    if bs < 1:
        raise UserError(f"--bs must be at least 1, not {bs}")
    result = adapt_site(
        parent,
        data,
        out,
        mix=mix,
        epochs=epochs,
        lr=lr,
        bs=bs,
        valid_pct=valid_pct,
        seed=seed,
        device=device,
    )
    best, photos = result["best"], result["adapted"]["photos"]
    emit(
        result,
        as_json,
        f"adapted on {photos['train']} photos ({photos['parent_mixed']} of the parent's mixed "
        f"in), validated on {photos['valid']}: best epoch {best['epoch']}, error_rate "
        f"{best['error_rate']:.4f}\nrun folder: {result['run']}",
    )


def adapt_norms(
    parent: ParentArg,
    data: Annotated[Path, typer.Argument(help="Photos of the new site (labels not needed).")],
    out: OutOpt,
    keep: KeepOpt = 0.95,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Re-estimate a model's batch-norm statistics on unlabelled photos of a new site."""
    from cropdoc.adaptation.norms import adapt_norms as adapt_site_norms

    check_keep(keep)
    result = adapt_site_norms(parent, data, out, keep=keep, device=device)
    emit(
        result,
        as_json,
        f"{result['norm_layers']} batch-norm layers re-estimated on "
        f"{result['adapted']['photos']['unlabelled']} photos\nbundle: {out}",
    )


COMMANDS = {"adapt": adapt, "adapt-norms": adapt_norms}
