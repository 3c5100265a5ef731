"""The loop from the field by simulation (issue #41): rounds of K labels chosen by the model's
uncertainty against K chosen at random, on a set of ``../shared/real-photos`` whose labels
are hidden from the loop until it asks for them.

    python benchmarks/active.py ../shared/real-photos [--set beans] [--start 10]
        [--per-round 30] [--rounds 4] [--arms uncertainty,random] [--control] [--seed 0]
        [--out ~/.cache/cropdoc-active] [--json]

Round 0 trains a model from the ImageNet weights (``real_data.py``) on ``--start`` photos a
class drawn at random from the set's training split (cropdoc's defaults, batches of 16);
both arms share it. Each round, the arm's model answers every training photo not labelled
yet; "uncertainty" asks for the labels of the ``--per-round`` photos of smallest margin
between its two likeliest classes, "random" for as many drawn at random; then ``cropdoc
adapt`` trains on from the arm's model on every label so far. Each model is scored on the
set's validation split. ``--control`` then trains each arm's final labels anew from the
ImageNet weights with the defaults, validated on the set's validation photos, as the
all-labels model was. Results are kept in ``OUT/results.json`` as they come.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np
from common import machine, report

ARCH = "tf_efficientnet_lite0"


def pool(data: Path) -> tuple[list[Path], list[str]]:
    """The training photos of a split-layout set and their (hidden) labels."""
    photos = sorted(p for p in (data / "train").glob("*/*") if p.is_file())
    return photos, [p.parent.name for p in photos]


def manifest(photos: list[Path], labels: list[str], chosen: list[int], path: Path) -> Path:
    """The labelled photos so far as a manifest (no split: adapt holds out a fifth)."""
    from cropdoc.adaptation.site import manifest_text
    from cropdoc.data.layouts import Item

    path.parent.mkdir(parents=True, exist_ok=True)
    items = [Item(photos[i], labels[i]) for i in sorted(chosen)]
    path.write_text(manifest_text(items))
    return path


def control_manifest(data: Path, photos, labels, chosen: list[int], path: Path) -> Path:
    """The chosen photos as the training split and the set's validation photos as the
    validation split: how the all-labels model of docs/real.md was trained."""
    from cropdoc.adaptation.site import manifest_text
    from cropdoc.data.layouts import Item

    items = [Item(photos[i], labels[i], split="train") for i in sorted(chosen)]
    valid = sorted(p for p in (data / "valid").glob("*/*") if p.is_file())
    items += [Item(p, p.parent.name, split="valid") for p in valid]
    path.write_text(manifest_text(items))
    return path


def ask(run: Path, photos: list[Path], chosen: set[int], k: int, arm: str, rng) -> list[int]:
    """The ``k`` photos not labelled yet whose labels the arm asks for."""
    from cropdoc import predict

    left = [i for i in range(len(photos)) if i not in chosen]
    if arm == "random":
        return [int(i) for i in rng.choice(left, k, replace=False)]
    found = predict([run], [photos[i] for i in left])
    top2 = np.sort(found.probs, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    return [left[i] for i in np.argsort(margin)[:k]]


def accuracy(run: Path, data: Path, out: Path) -> float:
    from cropdoc.evaluation.evaluate import evaluate

    return round(evaluate(run, data / "valid", out=out)["accuracy"], 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--set", default="beans")
    parser.add_argument("--start", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--arms", default="uncertainty,random")
    parser.add_argument("--control", action="store_true", help="each arm's labels, trained anew")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "cropdoc-active")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from real_photos import _default_weights

    from cropdoc import TrainConfig, adapt, show_output, train

    show_output(True)
    data, out = args.data / args.set, args.out / args.set
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    photos, labels = pool(data)
    rng = np.random.default_rng(args.seed)
    start = [
        int(i)
        for c in sorted(set(labels))
        for i in rng.choice([n for n, x in enumerate(labels) if x == c], args.start, False)
    ]
    seed_run = out / "round0"
    if not (seed_run / "model.json").exists():
        started = time.perf_counter()
        config = TrainConfig(
            data=str(manifest(photos, labels, start, out / "round0.csv")),
            arch=ARCH,
            weights=str(_default_weights(ARCH)),
            bs=16,
            seed=args.seed,
            out=str(seed_run),
        )
        train(config)
        results["round 0"] = {
            "labels": len(start),
            "accuracy": accuracy(seed_run, data, out / "scores" / "round0"),
            "seconds": round(time.perf_counter() - started, 1),
        }
        results_file.write_text(json.dumps(results, indent=1))
    print(f"round 0: {json.dumps(results['round 0'])}", flush=True)

    def kept(name: str, make, run: Path, count: int) -> None:
        """Make ``run`` with ``make()`` unless the result of ``name`` is kept already, score
        it on the set's validation photos, keep the result and print it."""
        if name not in results:
            started = time.perf_counter()
            make()
            results[name] = {
                "labels": count,
                "accuracy": accuracy(run, data, out / "scores" / run.name),
                "seconds": round(time.perf_counter() - started, 1),
            }
            results_file.write_text(json.dumps(results, indent=1))
        print(f"{name}: {json.dumps(results[name])}", flush=True)

    for arm in args.arms.split(","):
        chosen, run = list(start), seed_run
        arm_rng = np.random.default_rng(args.seed + 1)
        for n in range(1, args.rounds + 1):
            chosen += ask(run, photos, set(chosen), args.per_round, arm, arm_rng)
            parent, run = run, out / f"{arm}-{n}"
            labelled = manifest(photos, labels, chosen, out / f"{arm}-{n}.csv")
            make = functools.partial(adapt, parent, labelled, run, seed=n)
            kept(f"{arm}, round {n}", make, run, len(chosen))
        if args.control:  # the arm's last labels, trained as the all-labels model was
            labelled = control_manifest(data, photos, labels, chosen, out / f"{arm}-all.csv")
            run = out / f"{arm}-control"
            config = TrainConfig(data=str(labelled), arch=ARCH, seed=args.seed, out=str(run),
                                 weights=str(_default_weights(ARCH)))  # fmt: skip
            name = f"{arm}, {len(chosen)} labels, trained from the ImageNet weights"
            kept(name, functools.partial(train, config), run, len(chosen))
    summary = {"machine": machine(), "set": args.set, "pool": len(photos), "rows": results}
    report(summary, args.json)


if __name__ == "__main__":
    main()
