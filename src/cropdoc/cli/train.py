"""The training commands: lr-find, train, compare, recipe, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cropdoc.cli.options import (
    TARGET_METRICS,
    DataArg,
    JsonOpt,
    emit,
    given_settings,
    train_config,
    training_options,
)
from cropdoc.core.errors import UserError


@training_options(exclude=("lr", "epochs", "progressive", "accum", "sync_bn"))
def lr_find_command(
    data: DataArg,
    num_it: Annotated[int, typer.Option(help="Steps of the range test.")] = 100,
    out: Annotated[Path, typer.Option(help="The plot to write.")] = Path("lr_find.png"),
    as_json: JsonOpt = False,
    **options,
) -> None:
    """Learning-rate range test: prints the valley and slide suggestions, saves the plot."""
    from cropdoc.engine.lr_find import plot
    from cropdoc.engine.trainer import Trainer

    config = train_config({**options, "data": data})  # here --out is the plot, not a run
    found = Trainer(config).find_lr(num_it=num_it)
    plot(found, out)
    result = {**found.summary(), "plot": str(out)}
    emit(result, as_json, f"valley: {found.valley:.2e}\nslide:  {found.slide:.2e}\nplot: {out}")


@training_options()
def train(
    data: Annotated[Path | None, typer.Argument(help="Dataset folder or CSV manifest.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/ARCH-N).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this interrupted run.")] = None,
    as_json: JsonOpt = False,
    **options,
) -> None:
    """Fine-tune (or train from scratch) a timm model; writes a run folder and a bundle."""
    from cropdoc.engine import distributed, trainer

    if resume is not None:
        result = trainer.resume(resume)
    else:
        if data is None:
            raise UserError("give a dataset (cropdoc train DATA ...) or --resume RUN")
        config = train_config({**options, "data": data, "out": out})
        result = trainer.train(config)
    if not distributed.is_main():
        return  # across processes, the first one reports
    best = result["best"]
    emit(
        result,
        as_json,
        f"best epoch {best['epoch']}: error_rate {best['error_rate']:.4f}, "
        f"accuracy {best['accuracy']:.4f}"
        + "".join(f", {k} {v:.4f}" for k, v in best.items() if k.endswith(TARGET_METRICS))
        + f"\nrun folder: {result['run']}",
    )


@training_options(exclude=("arch",))
def compare(
    ctx: typer.Context,
    data: DataArg,
    archs: Annotated[str, typer.Option(help="Architectures to compare, comma-separated.")],
    one: Annotated[
        list[str] | None,
        typer.Option("--set", help="A setting of one architecture: ARCH.KEY=VALUE."),
    ] = None,
    sizes: Annotated[
        str | None,
        typer.Option(help="Resolution study: one architecture at each size, e.g. 128,256."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Compare folder (default runs/compare-DATA); reuse to resume."),
    ] = None,
    as_json: JsonOpt = False,
    **options,
) -> None:
    """Train several architectures on the same split; rank them on a leaderboard."""
    from cropdoc.evaluation import compare as comparing

    names = [a.strip() for a in archs.split(",") if a.strip()]
    overrides: dict[str, dict] = {}
    for text in one or []:
        arch, key, value = comparing.parse_override(text, names)
        overrides.setdefault(arch, {})[key] = value
    steps = [x.strip() for x in (sizes or "").split(",") if x.strip()]
    settings = given_settings(ctx, options, data)  # only these apply to every run
    result = comparing.compare(data, names, settings, overrides, out, steps)
    table = Path(result["files"]["leaderboard.md"]).read_text(encoding="utf-8")
    emit(result, as_json, f"{table}\nleaderboard and plots: {result['compare']}")


@training_options(exclude=("arch",))
def recipe(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The recipe: paddy-gold.")],
    data: DataArg,
    archs: Annotated[
        str | None,
        typer.Option(help="Models instead of the recipe's (each on both resizes), A,B."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Recipe folder (default runs/NAME-DATA); reuse to resume."),
    ] = None,
    plan: Annotated[bool, typer.Option("--plan", help="Print the plan and estimate only.")] = False,
    as_json: JsonOpt = False,
    **options,
) -> None:
    """A winning recipe as one resumable job: its runs, TTA, the weighted ensemble and a
    submission (paddy-gold: the Paddy Doctor gold-line solution)."""
    from cropdoc.evaluation.recipe import run_recipe

    names = [a.strip() for a in archs.split(",") if a.strip()] if archs else None
    settings = given_settings(ctx, options, data)  # they apply to every run
    result = run_recipe(name, data, out, names, settings, plan_only=plan)
    if plan:
        minutes = sum(result["estimate_seconds"].values()) / 60
        emit(result, as_json, f"{len(result['runs'])} runs, about {minutes:.1f} min")
        return
    report = Path(result["files"]["recipe.md"]).read_text(encoding="utf-8")
    emit(result, as_json, f"{report}\nrecipe folder: {result['recipe_folder']}")


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data and results.")] = Path(
        "demo"
    ),
    as_json: JsonOpt = False,
) -> None:
    """Run the whole pipeline on the embedded demo dataset."""
    from cropdoc.demo import run_demo

    result = run_demo(out)
    emit(
        result,
        as_json,
        f"demo: error rate {result['error_rate']:.1%} on the demo's "
        f"validation split; outputs in {out} (model: {result['run']})",
    )


COMMANDS = {
    "lr-find": lr_find_command,
    "train": train,
    "compare": compare,
    "recipe": recipe,
    "demo": demo,
}
