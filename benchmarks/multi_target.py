"""One model, several answers: disease alone, disease + variety, disease + variety + age
(every loss weighted 1) and disease + variety with the variety weighted 0.2, on the demo
data (whose varieties and ages show in the photos), with the same training
budget (the demo's recipe: test_resnet from scratch at 256x192, 30 epochs) and three seeds
each, run in turn seed by seed so that the machine's load falls on all alike. Then the
first three again, fine-tuned (fastai's fine_tune, 1 frozen + 10 epochs) from a stand-in
for a pretrained hub body, which cannot be downloaded here: test_resnet trained on other
demo photos (``--seed 2``) on their disease and variety, its head dropped.

Each run is scored on its own validation split (the best epoch's bundle, chosen on the
disease error) and on a separate held-out demo set drawn with another seed: disease error,
variety error, age mean absolute error. The cost of an epoch is timed apart, after the
runs: one epoch (training and validation) of each configuration in turn, ``--rounds``
times, the median of each (the runs' own epoch times are listed too, but share the machine
with whatever else ran). A finished run in ``--out`` is reused (delete it to train it
again).

    python benchmarks/multi_target.py [--per-class 50] [--heldout-per-class 40]
        [--epochs 30] [--seeds 3] [--pretrain-per-class 100] [--fine-tune-epochs 10]
        [--out /tmp/cropdoc-multi] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

from common import machine, report

from cropdoc.core.files import atomic_write_json
from cropdoc.testing import keep_if_finished, stand_in_body

CONFIGS = {
    "disease": {},
    "disease+variety": {"targets": "label,variety"},
    "disease+variety+age": {"targets": "label,variety,age", "regress": "age"},
    "disease+variety@0.2": {"targets": "label,variety", "target_weights": "1,0.2"},
}
# Fine-tuning the stand-in body (fastai's fine_tune, as from a hub body) at every loss weight 1.
FINE_TUNED = ("disease", "disease+variety", "disease+variety+age")


def train_run(args, data: Path, cache: Path, run: Path, seed: int, extra: dict) -> None:
    """Train one run with the demo's settings and ``extra`` (unless it is already there)."""
    from cropdoc import TrainConfig, train
    from cropdoc.demo import DEMO_TRAINING
    from cropdoc.engine.trainer import phases

    settings = {**DEMO_TRAINING, "epochs": args.epochs, "workers": 2, "seed": seed, **extra}
    config = TrainConfig(data=str(data), cache=str(cache), out=str(run), **settings)
    if not keep_if_finished(run, sum(p.epochs for p in phases(config, float(config.lr)))):
        train(config)


def scores(run: Path, heldout: Path) -> dict:
    """The run's best epoch on its validation split, its cost per epoch, and its bundle
    on the held-out set."""
    from cropdoc import evaluate

    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    best = json.loads((run / "model.json").read_text())["metrics"]
    held = evaluate(run, data=heldout, out=run / "heldout")
    others = held.get("targets", {})
    return {
        "valid_disease_error": best["error_rate"],
        "valid_variety_error": best.get("variety_error_rate"),
        "valid_age_mae": best.get("age_mae"),
        "heldout_disease_error": held["error_rate"],
        "heldout_variety_error": others.get("variety", {}).get("error_rate"),
        "heldout_age_mae": others.get("age", {}).get("mae"),
        "epoch_seconds": statistics.mean(float(r["train_seconds"]) for r in rows),
        "best_epoch": best["epoch"],
    }


def epoch_costs(args, data: Path, cache: Path) -> dict[str, float]:
    """Median seconds of one epoch (training + validation) of each configuration, timed in
    turn ``args.rounds`` times with the demo's settings."""
    from cropdoc import TrainConfig
    from cropdoc.demo import DEMO_TRAINING
    from cropdoc.engine.trainer import Trainer, phases

    trainers = {}
    for name, extra in CONFIGS.items():
        settings = {**DEMO_TRAINING, "epochs": args.epochs, "workers": 2, **extra}
        config = TrainConfig(data=str(data), cache=str(cache), out="", **settings)
        trainers[name] = Trainer(config)
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            phase = phases(trainer.config, float(trainer.config.lr))[0]
            trainer.freeze(False)
            started = time.perf_counter()
            trainer.train_epoch(phase, 0, 0)
            trainer.validate()
            times[name].append(time.perf_counter() - started)
    return {name: round(statistics.median(t), 3) for name, t in times.items()}


def summary(runs: dict[str, list[dict]]) -> dict:
    """Mean and spread (the lowest and highest of the seeds) of every score, per config."""
    out = {}
    for name, results in runs.items():
        row = {}
        for key in results[0]:
            values = [r[key] for r in results if r[key] is not None]
            if values and key not in ("seed", "best_epoch"):
                row[key] = {
                    "mean": round(statistics.mean(values), 4),
                    "min": round(min(values), 4),
                    "max": round(max(values), 4),
                }
        out[name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--heldout-per-class", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pretrain-per-class", type=int, default=100)
    parser.add_argument("--fine-tune-epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="/tmp/cropdoc-multi")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from cropdoc import make_demo_data, prepare

    out = Path(args.out)
    make_demo_data(out / "data", per_class=args.per_class, seed=0, workers=2)
    make_demo_data(out / "heldout", per_class=args.heldout_per_class, seed=1, workers=2)
    cache = prepare(out / "data", cache=out / "cache", size=256).cache
    started = time.perf_counter()
    seeds = range(42, 42 + args.seeds)
    body = stand_in_body(out / "stand-in", args.pretrain_per_class)
    fine_tune = {"from_scratch": False, "weights": str(body), "epochs": args.fine_tune_epochs}
    groups = {  # run folder: configurations
        "runs": CONFIGS,
        "fine-tuned": {name: {**CONFIGS[name], **fine_tune} for name in FINE_TUNED},
    }
    for folder, configs in groups.items():  # all the training first, seed by seed
        for seed in seeds:
            for name, extra in configs.items():
                run = out / folder / f"{name}-seed{seed}"
                train_run(args, out / "data", cache, run, seed, extra)
    runs, fine_tuned = (
        {
            name: [
                {"seed": seed, **scores(out / folder / f"{name}-seed{seed}", out / "heldout")}
                for seed in seeds
            ]
            for name in configs
        }
        for folder, configs in groups.items()
    )
    costs = epoch_costs(args, out / "data", cache)
    result = {
        "machine": machine(),
        "epoch_seconds": costs,
        "epoch_cost_vs_disease": {k: round(v / costs["disease"], 4) for k, v in costs.items()},
        "photos": args.per_class * 10,
        "heldout_photos": args.heldout_per_class * 10,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "summary": summary(runs),
        "runs": runs,
        "fine_tuned_epochs": f"1 frozen + {args.fine_tune_epochs}",
        "fine_tuned_summary": summary(fine_tuned),
        "fine_tuned_runs": fine_tuned,
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(out / "result.json", result)
    report(result, args.json)


if __name__ == "__main__":
    main()
