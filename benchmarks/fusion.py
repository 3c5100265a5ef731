"""Several photos of one plant: the error of one photo against 2, 3 and 5 photos fused
(``cropdoc.inference.fusion``), by the mean of log-probabilities and by the plain mean.

Held-out plants drawn by ``demo-data --views 5`` (the photo, then four other framings and
light of the same leaves) and a model trained on the close-up demo photos (``make demo``'s).
Every photo is scored once as ``predict`` scores it (quality checks on); a plant's first k
photos are fused. "1 photo" is the mean over all five single photos.

    python benchmarks/fusion.py [--model demo/runs/test_resnet-scratch] [--out /tmp/cropdoc-fusion]
        [--per-class 20] [--seed 7] [--json]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from common import machine, report

from cropdoc.inference.fusion import METHODS, fuse

VIEWS = 5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("demo/runs/test_resnet-scratch"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/cropdoc-fusion"))
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from cropdoc.data.demo import make_demo_data
    from cropdoc.inference.predict import predict

    if not (args.model / "model.json").exists():
        raise SystemExit(f"{args.model} holds no model: run make demo first, or give --model")
    started = time.perf_counter()
    data = Path(make_demo_data(args.out / "plants", per_class=args.per_class, seed=args.seed,
                               views=VIEWS, workers=2)["root"])  # fmt: skip
    with open(data / "train.csv") as f:
        rows = list(csv.DictReader(f))
    paths = [data / "train_images" / r["label"] / r["image_id"] for r in rows]
    found = predict([args.model], paths)
    index = {Path(p).name: n for n, p in enumerate(found.paths)}
    classes = found.classes
    plants: dict[str, list[int]] = {}
    for r in rows:
        plants.setdefault(r["plant"], []).append(index[r["image_id"]])
    truth = {r["plant"]: classes.index(r["label"]) for r in rows}
    single = [found.probs[n].argmax() != truth[plant] for plant, ns in plants.items() for n in ns]
    table = {"1 photo": {m: round(100 * float(np.mean(single)), 2) for m in METHODS}}
    left_out = 0
    for k in (2, 3, 5):
        errors = {m: [] for m in METHODS}
        for plant, ns in plants.items():
            members = ns[:k]
            for method in METHODS:
                fused = fuse([found.paths[n] for n in members], found.probs[members],
                             found.ood[members], [found.problems[n] for n in members],
                             found.min_confidence, method)  # fmt: skip
                errors[method].append(fused.probs.argmax() != truth[plant])
                if method == METHODS[0] and k == 5:
                    left_out += len(fused.left_out)
        table[f"{k} photos"] = {m: round(100 * float(np.mean(e)), 2) for m, e in errors.items()}
    result = {
        "machine": machine(),
        "model": str(args.model),
        "plants": len(plants),
        "photos": len(paths),
        "photos left out of the 5-photo fusions": left_out,
        "error %": table,
        "seconds": round(time.perf_counter() - started),
    }
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
