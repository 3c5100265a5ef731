"""The demo pipeline: demo data -> prepare -> show (-> train, once the engine lands)."""

from __future__ import annotations

import os
from pathlib import Path

from cropdoc.data.cache import prepare
from cropdoc.data.demo import make_demo_data
from cropdoc.show import show_samples


def run_demo(out: str | os.PathLike = "demo", quiet: bool = False) -> dict:
    """Run cropdoc's pipeline on the embedded demo dataset under ``out``; return the paths."""
    out = Path(out)
    data = make_demo_data(out / "data", quiet=quiet)
    prepared = prepare(data["root"], cache=out / "cache", quiet=quiet)
    samples = show_samples(prepared.dataset, out=out / "samples.png")
    return {
        "data": data["root"],
        "cache": str(prepared.cache),
        "samples": samples["out"],
        "images": prepared.total,
    }
