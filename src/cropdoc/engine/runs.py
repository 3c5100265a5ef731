"""Run folders and the process around a training run: a new folder per run, the paths its
``config.yaml`` records, and Ctrl-C deferred to the end of a step."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from pathlib import Path

from cropdoc.config import TrainConfig
from cropdoc.core.errors import UserError


@contextlib.contextmanager
def deferred_interrupt():
    """Defer Ctrl-C to the end of the current step; yields a function telling if it came."""
    received: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGINT, previous)


def new_run_folder(config: TrainConfig) -> Path:
    """``config.out``, or ``runs/<arch>-<n>``; refuses a folder that already holds a run."""
    if config.out:
        out = Path(config.out)
        if (out / "config.yaml").exists():
            raise UserError(
                f"{out} already holds a run: resume it with --resume {out}, or choose another --out"
            )
    else:
        base = Path("runs") / config.arch.replace("/", "_").split(".")[0]
        n = 1
        while (out := base.with_name(f"{base.name}-{n}")).exists():
            n += 1
    out.mkdir(parents=True, exist_ok=True)
    return out


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with its dataset and cache as absolute paths, so that its run folder's
    ``config.yaml`` (which calibrate, evaluate and resume read) names the same files from
    any working directory."""
    cache = str(Path(config.cache).expanduser().absolute()) if config.cache else config.cache
    data = str(Path(config.data).expanduser().absolute()) if config.data else config.data
    return dataclasses.replace(config, data=data, cache=cache)
