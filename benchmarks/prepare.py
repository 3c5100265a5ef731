"""cropdoc prepare vs fastai's resize_images(max_size=256), same JPEGs, same run.

Usage: python benchmarks/prepare.py [--data DIR] [--per-class 200] [--workers N] [--repeats 3]

Without --data it draws the demo dataset and uses its 480x640 training JPEGs. Files are read
once before timing, so both sides start with a warm page cache, and the two run in turns,
best of --repeats. Needs the bench extra: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import machine, report


def best_times(repeats: int, runs: dict) -> dict[str, float]:
    """The shortest wall time of each ``run(i)`` over ``repeats`` rounds, run in turns."""
    best = {name: float("inf") for name in runs}
    for i in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(i)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="image folder (default: demo data)")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from fastai.vision.utils import get_image_files, resize_images

    from cropdoc.data.cache import prepare
    from cropdoc.data.demo import make_demo_data

    work = Path(tempfile.mkdtemp(prefix="cropdoc-bench-"))
    try:
        data = args.data
        if data is None:
            make_demo_data(work / "demo", per_class=args.per_class)
            data = work / "demo" / "train_images"  # JPEGs only, not the mask PNGs
        files = get_image_files(data)
        for f in files:
            f.read_bytes()

        def fastai_run(i: int) -> None:
            resize_images(
                data, max_workers=args.workers, max_size=256, dest=work / f"fa{i}", recurse=True
            )

        def cropdoc_run(i: int) -> None:
            prepare(data, cache=work / f"cd{i}", size=256, workers=args.workers)

        best = best_times(args.repeats, {"fastai": fastai_run, "cropdoc": cropdoc_run})
        fastai_s, cropdoc_s = best["fastai"], best["cropdoc"]
        result = {
            "images": len(files),
            "workers": args.workers,
            "fastai_resize_images_per_s": round(len(files) / fastai_s, 1),
            "cropdoc_prepare_per_s": round(len(files) / cropdoc_s, 1),
            "speedup": round(fastai_s / cropdoc_s, 2),
            "machine": machine(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(result, args.json)


if __name__ == "__main__":
    main()
