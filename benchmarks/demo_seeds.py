"""The error ``make demo`` prints, over seeds: the demo's own training (``cropdoc.demo``'s
settings, its data drawn as ``make demo`` draws it) with each ``--seeds`` value as the run's
seed (the split, the order and the augmentation), so that the README gives the range a user
will see rather than one run's figure.

    python benchmarks/demo_seeds.py [--seeds 42,0,1] [--out ~/.cache/cropdoc-demo-seeds] [--json]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

from common import machine, report

from cropdoc.config import TrainConfig
from cropdoc.data.cache import prepare
from cropdoc.data.demo import make_demo_data
from cropdoc.demo import DEMO_TRAINING
from cropdoc.engine.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42,0,1")
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "cropdoc-demo-seeds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data = make_demo_data(args.out / "data")["root"]
    cache = prepare(data, cache=args.out / "cache").cache
    rows = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        started = time.perf_counter()
        run = args.out / f"seed-{seed}"
        config = TrainConfig(data=data, cache=str(cache), out=str(run), seed=seed, **DEMO_TRAINING)
        summary = train(config)
        with open(run / "metrics.csv", newline="") as f:
            last = list(csv.DictReader(f))[-1]
        rows[f"seed {seed}"] = {
            "kept error": round(summary["best"]["error_rate"], 4),
            "last error": round(float(last["error_rate"]), 4),
            "seconds": round(time.perf_counter() - started),
        }
    kept = [r["kept error"] for r in rows.values()]
    result = {
        "machine": machine(),
        **rows,
        "kept error range": f"{min(kept):.1%} to {max(kept):.1%}",
        "kept error median": f"{statistics.median(kept):.1%}",
    }
    report(result, args.json)


if __name__ == "__main__":
    main()
