"""Bulk scoring: photos/s of ``cropdoc score --engine local`` and ``--engine ray`` (2 workers
each) against a plain loop of ``cropdoc predict`` calls (one process per photo, timed on a
sample) and one ``cropdoc predict FOLDER`` call on the same photos; and the peak memory of
``score`` (its process and every worker, sampled from /proc) at N and 10 N photos.

The photos are 176x132 JPEGs cut from the demo close-ups (shifted, mirrored), written once
under --out; the model is RUN (default: the demo run at demo/runs/test_resnet-scratch).

    python benchmarks/score.py [--model RUN] [--photos 10000] [--out /tmp/cropdoc-score] [--json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import machine, report
from PIL import Image

CROP = (176, 132)


def make_photos(folder: Path, count: int, sources: list[Path]) -> Path:
    """``count`` photos in folders of 1,000 (kept: a second run reuses them)."""
    done = folder / f".{count}"
    if done.exists():
        return folder
    images = [Image.open(p).convert("RGB").resize((216, 162)) for p in sources]
    rng = np.random.default_rng(0)
    for n in range(count):
        x, y = rng.integers(0, 40), rng.integers(0, 30)
        crop = images[n % len(images)].crop((x, y, x + CROP[0], y + CROP[1]))
        if n % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        part = folder / f"part-{n // 1000:04d}"
        part.mkdir(parents=True, exist_ok=True)
        crop.save(part / f"{n:07d}.jpg", quality=85)
    done.touch()
    return folder


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/statm") as f:
                total += int(f.read().split()[1]) * 4096
            with open(f"/proc/{current}/task/{current}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def timed(command: list[str]) -> tuple[float, int]:
    """Wall seconds and the peak resident memory of the process tree of ``command``."""
    started, peak = time.perf_counter(), 0
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {proc.stderr.read().decode()[-400:]}")
    return time.perf_counter() - started, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("demo/runs/test_resnet-scratch"))
    parser.add_argument("--photos", type=int, default=10000)
    parser.add_argument("--loop-sample", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cropdoc-score"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from cropdoc.data.demo import make_demo_data

    if not (args.model / "model.json").is_file():
        raise SystemExit(f"{args.model} is not a run folder: run make demo, or give --model")
    demo = args.out / "demo"
    if not (demo / "train_images").is_dir():
        make_demo_data(demo, per_class=5, workers=2)
    sources = sorted((demo / "train_images").rglob("*.jpg"))
    small = make_photos(args.out / f"photos-{args.photos}", args.photos, sources)
    large = make_photos(args.out / f"photos-{10 * args.photos}", 10 * args.photos, sources)
    cropdoc = [sys.executable, "-m", "cropdoc"]
    rows = {"machine": machine(), "model": str(args.model), "photos": args.photos}

    def score(photos: Path, engine: str, count: int) -> dict:
        out = args.out / f"scores-{engine}-{count}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        seconds, peak = timed([*cropdoc, "score", str(args.model), str(photos), "--out",
                               str(out), "--engine", engine, "--workers", "2"])  # fmt: skip
        return {"seconds": round(seconds, 1), "photos/s": round(count / seconds, 1),
                "peak MB": round(peak / 2**20)}  # fmt: skip

    rows["score --engine local"] = score(small, "local", args.photos)
    rows["score --engine ray"] = score(small, "ray", args.photos)
    sample = sorted(small.rglob("*.jpg"))[: args.loop_sample]
    started = time.perf_counter()
    for photo in sample:
        subprocess.run([*cropdoc, "predict", str(args.model), str(photo)], check=True,
                       capture_output=True)  # fmt: skip
    seconds = time.perf_counter() - started
    rows["loop of cropdoc predict PHOTO"] = {
        "photos timed": len(sample), "photos/s": round(len(sample) / seconds, 2),
        "hours for all": round(args.photos * seconds / len(sample) / 3600, 2)}  # fmt: skip
    seconds, peak = timed([*cropdoc, "predict", str(args.model), str(small), "--out",
                           str(args.out / "predict.csv")])  # fmt: skip
    rows["one cropdoc predict FOLDER"] = {"seconds": round(seconds, 1),
                                          "photos/s": round(args.photos / seconds, 1),
                                          "peak MB": round(peak / 2**20)}  # fmt: skip
    rows[f"score --engine local, {10 * args.photos} photos"] = score(
        large, "local", 10 * args.photos
    )
    small_peak = rows["score --engine local"]["peak MB"]
    large_peak = rows[f"score --engine local, {10 * args.photos} photos"]["peak MB"]
    rows["peak memory, 10x the photos"] = f"{large_peak / small_peak:.2f}x"
    report(rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
