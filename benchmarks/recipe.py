"""Which regularisers earn their place: an ablation on the demo photos, fine-tuning the
stand-in pretrained body (``cropdoc.testing.stand_in_body``) with fastai's fine_tune (1
frozen epoch, then ``--epochs``) at the demo's size, three seeds each: the baseline, each
regulariser alone, and the combination. Scored on a held-out draw of another seed: error and
ECE after the temperature fitted on the validation split, mean and range over the seeds.

Then the class weights: the same recipe on an imbalanced version of the demo data (one
class, ``--minority``, keeps 10% of its training photos), with and without
``--class-weights inverse`` and ``--balanced-sampling``: the minority class's recall on the
held-out photos. A finished run in ``--out`` is reused.

    python benchmarks/recipe.py [--stand-in /tmp/cropdoc-real/stand-in] [--out /tmp/cropdoc-recipe]
        [--per-class 40] [--epochs 5] [--seeds 3] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

from common import machine, report

from cropdoc.testing import keep_if_finished, stand_in_body

ALONE = {
    "baseline": {},
    "mixup 0.2": {"mixup": 0.2},
    "cutmix 1.0": {"cutmix": 1.0},
    "label smoothing 0.1": {"label_smoothing": 0.1},
    "random erasing 0.25": {"random_erasing": 0.25},
    "ema 0.9": {"ema": 0.9},
    "drop path 0.1": {"drop_path": 0.1},
}
ALL = {k: v for extra in ALONE.values() for k, v in extra.items()}  # before RandAugment came
ALONE["rand augment 2,9"] = {"rand_augment": "2,9"}
ALONE["trivial augment"] = {"rand_augment": "trivial"}
ALONE["global pool max"] = {"global_pool": "max"}
ALONE["all of them"] = ALL
BALANCE = {
    "plain": {},
    "class weights inverse": {"class_weights": "inverse"},
    "balanced sampling": {"balanced_sampling": True},
}
RECIPE = dict(arch="test_resnet", bs=16, lr=0.01, size="256x192", item_size="256x192")


def train_run(data: Path, cache: Path, run: Path, body: Path, seed: int, args, extra) -> None:
    from cropdoc import TrainConfig, train
    from cropdoc.engine.schedule import phases

    settings = {**RECIPE, "epochs": args.epochs, "workers": 2, "seed": seed, **extra}
    config = TrainConfig(data=str(data), cache=str(cache), out=str(run), weights=str(body),
                         **settings)  # fmt: skip
    if not keep_if_finished(run, sum(p.epochs for p in phases(config, float(config.lr)))):
        train(config)


def held_out(run: Path, heldout: Path, minority: str = "") -> dict:
    from cropdoc.evaluation.evaluate import evaluate

    found = evaluate(run, heldout, out=run / "evaluation-heldout")
    out = {"error": found["error_rate"], "ece": found["calibration"]["ece"][1]}
    if minority:
        out["recall"] = next(r["recall"] for r in found["per_class"] if r["class"] == minority)
    return out


def seeded(folder: Path, data, cache, body, args, extra, heldout, minority="") -> list[dict]:
    """One configuration trained with each seed under ``folder``; its held-out scores."""
    found = []
    for seed in range(42, 42 + args.seeds):
        run = folder.with_name(folder.name.replace(" ", "-")) / str(seed)
        train_run(data, cache, run, body, seed, args, extra)
        found.append(held_out(run, heldout, minority))
    return found


def summary(values: list[float]) -> str:
    """Mean (min - max) in percent."""
    return (
        f"{100 * statistics.mean(values):.2f}% ({100 * min(values):.2f} - {100 * max(values):.2f})"
    )


def imbalanced(data: Path, out: Path, minority: str, keep: float = 0.1) -> Path:
    """A manifest of the demo's training photos with ``minority`` cut to ``keep`` of its own."""
    with open(data / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lines, seen = ["path,label"], 0
    per_class = sum(r["label"] == minority for r in rows)
    for row in rows:
        if row["label"] == minority:
            seen += 1
            if seen > max(2, int(per_class * keep)):
                continue
        lines.append(f"{data / 'train_images' / row['label'] / row['image_id']},{row['label']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.csv").write_text("\n".join(lines) + "\n")
    return out / "manifest.csv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stand-in", type=Path, default=Path("/tmp/cropdoc-stand-in-body"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/cropdoc-recipe"))
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--heldout-per-class", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--minority", default="hispa")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from cropdoc import make_demo_data, prepare

    started = time.perf_counter()
    out = args.out
    body = stand_in_body(args.stand_in)
    data = Path(make_demo_data(out / "data", per_class=args.per_class, workers=2)["root"])
    heldout = Path(
        make_demo_data(out / "heldout", per_class=args.heldout_per_class, seed=1)["root"]
    )
    cache = Path(prepare(data, cache=out / "cache", size=256, workers=2).cache)
    table = {}
    for name, extra in ALONE.items():
        found = seeded(out / "ablation" / name, data, cache, body, args, extra, heldout)
        table[name] = {
            "error": summary([f["error"] for f in found]),
            "ece": summary([f["ece"] for f in found]),
        }
    manifest = imbalanced(data, out / "imbalanced", args.minority)
    uneven_cache = Path(prepare(manifest, cache=out / "cache-imbalanced", size=256).cache)
    balance = {}
    for name, extra in BALANCE.items():
        folder = out / "balance" / name
        found = seeded(folder, manifest, uneven_cache, body, args, extra, heldout, args.minority)
        balance[name] = {
            f"{args.minority} recall": summary([f["recall"] for f in found]),
            "error": summary([f["error"] for f in found]),
        }
    result = {
        "machine": machine(),
        "ablation": table,
        "imbalanced": balance,
        "seconds": round(time.perf_counter() - started),
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
