"""How long a fresh cropdoc process takes to import timm: plain ``import timm`` (the baseline:
with wandb installed, timm imports it too) against cropdoc's ``model/timm_import.py`` (timm
without wandb), each in fresh interpreters, side by side, several times each.

    python benchmarks/imports.py [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from common import machine, report

ARMS = {
    "import timm (baseline)": "import timm",
    "cropdoc.model.timm_import": "from cropdoc.model.timm_import import timm",
    "import wandb alone": "import wandb",
}


def seconds(code: str) -> tuple[float, bool]:
    """Wall seconds of a fresh interpreter that runs ``code``, and whether it imported wandb."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", f"{code}; import sys; print('wandb' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    took = time.perf_counter() - started
    return round(took, 2), done.stdout.split()[-1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = {}
    for _ in range(args.repeats):  # the arms interleaved, so drift reaches each alike
        for name, code in ARMS.items():
            took, wandb = seconds(code)
            row = rows.setdefault(name, {"seconds": [], "wandb_imported": wandb})
            row["seconds"].append(took)
    for row in rows.values():
        row["median_s"] = statistics.median(row["seconds"])
    report({"machine": machine(), "python": sys.version.split()[0], **rows}, args.json)


if __name__ == "__main__":
    main()
