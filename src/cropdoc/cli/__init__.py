"""The ``cropdoc`` command: parse arguments, call the Python API, print the result.

One module per command group (``data``, ``train``, ``evaluate``, ``doctor``, ``adapt``,
``inference``, ``scale``, ``serve``) over ``options``; each command only parses, calls the API
and prints. Heavy modules (numpy, Pillow, torch, timm) are imported inside the commands, so
``cropdoc --help`` starts quickly.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cropdoc import __version__
from cropdoc.cli import adapt, data, doctor, evaluate, inference, scale, serve, train
from cropdoc.core.errors import UserError

app = typer.Typer(
    name="cropdoc",
    help="Train, compare, explain and deploy crop-disease image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for group in (data, train, evaluate, doctor, adapt, inference, scale, serve):
    for name, command in group.COMMANDS.items():
        app.command(name)(command)


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


def main() -> None:
    """Entry point: run the app and turn user errors into one line on stderr. Progress and
    plain lines go to stderr, unless ``--json`` asks for nothing but the JSON document."""
    from cropdoc.core.progress import show_output

    show_output("--json" not in sys.argv[1:])
    try:
        app()
    except UserError as exc:
        print(f"cropdoc: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
