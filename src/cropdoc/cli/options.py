"""What the command modules share: the common options, turning a command's options into
``TrainConfig``, and printing a result as text or JSON."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Annotated

import typer

from cropdoc.config import TrainConfig
from cropdoc.core.files import json_text

JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
DataArg = Annotated[Path, typer.Argument(help="Dataset folder or CSV manifest.")]
BsOpt = Annotated[int, typer.Option(help="Batch size.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
AllowHostOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-host",
        help="Another name the server answers to (a Host header other than its address).",
    ),
]
KeepOpt = Annotated[
    float, typer.Option(help="Share of in-scope photos the out-of-scope threshold passes.")
]
TARGET_METRICS = ("_error_rate", "_mae")  # the endings of a multi-target run's other metrics


def emit(result: dict, as_json: bool, text: str) -> None:
    """Print ``result`` as one JSON document with ``--json`` (always valid JSON: a
    non-finite number is ``null``), else ``text``."""
    if as_json:
        print(json_text(result))
    else:
        print(text)


def check_keep(keep: float) -> None:
    """Refuse, in one line, a ``--keep`` share outside 0.5 to below 1."""
    from cropdoc.core.errors import UserError

    if not 0.5 <= keep < 1:
        raise UserError(f"--keep must be from 0.5 to below 1, not {keep}")


def at_least_one(**flags: int) -> None:
    """Refuse, in one line, a count option below 1 (``bs=0`` names ``--bs``)."""
    from cropdoc.core.errors import UserError

    for name, value in flags.items():
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {value}")


def train_config(options: dict) -> TrainConfig:
    """The training settings among a command's options."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if k in names}
    return TrainConfig.from_dict({"data": "", "out": "", **values})


def given_settings(ctx: typer.Context, options: dict, data: Path) -> dict:
    """The training settings typed on the command line (checked; the rest keep their
    defaults), as for the runs of ``compare`` and the doctor's folds. Typer bundles its own
    click, so the parameter source is compared by name."""
    given = {k for k in options if ctx.get_parameter_source(k).name == "COMMANDLINE"}
    config = dataclasses.asdict(train_config({**options, "data": data}))
    return {k: v for k, v in config.items() if k in given}


def training_options(*, exclude: tuple[str, ...] = ()):
    """Decorate a command ``f(own..., **options)`` so that it also takes every training
    option of ``TrainConfig`` (help and defaults from its fields) except ``exclude``: the
    command's own parameters come first, then the training options, then ``as_json``."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    generated = [
        inspect.Parameter(f.name, keyword, default=f.default, annotation=_option(f))
        for f in dataclasses.fields(TrainConfig)
        if "help" in f.metadata and f.name not in exclude
    ]

    def decorate(command):
        own = inspect.signature(command, eval_str=True).parameters.values()
        own = [p.replace(kind=keyword) for p in own if p.kind != p.VAR_KEYWORD]
        last = [p for p in own if p.name == "as_json"]
        first = [p for p in own if p.name != "as_json"]
        command.__signature__ = inspect.Signature([*first, *generated, *last])
        return command

    return decorate


def _option(setting: dataclasses.Field):
    """The typer annotation of a ``TrainConfig`` field: its type and help."""
    kind = setting.metadata["kind"] or type(setting.default)
    return Annotated[kind, typer.Option(help=setting.metadata["help"])]
