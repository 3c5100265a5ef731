"""The README's recipe from three starts, side by side in one run, on the real material that
ships in packages (``benchmarks/real_data.py``): (a) from scratch, (b) the stand-in body
(``cropdoc.testing.stand_in_body``: test_resnet trained on other demo photos), (c) real
ImageNet weights (EfficientNet-Lite0 as timm's ``tf_efficientnet_lite0``, ``--weights``).

No labelled set of real leaf-disease photos ships in a package of the index, so every arm
trains and is scored on demo close-ups (drawn by ``cropdoc demo-data``: ``--per-class`` a
class, their own 20% validation split, and a held-out draw of another seed). What is real:
the weights of (c), the out-of-scope set (7 real photos of no plant: scikit-image,
scikit-learn, matplotlib), and two real photos of diseased leaves (redpatch), which no arm
has seen the like of: each arm's verdict on them is reported.

Each arm: the README's recipe, ``cropdoc train DATA --arch ARCH`` (fastai's fine_tune: 1
frozen epoch, then ``--epochs`` at lr 0.01), with two of its defaults changed for 320
training photos: ``--bs 16`` (the default 64 makes 5 steps an epoch) and ``--epochs 10``,
at the demo photos' cached size 256x192 (lesions of a few pixels); from scratch one-cycle on
everything for the same 11 epochs. (With the defaults untouched, 6 epochs of 5 steps at
128 px: docs/real.md.)
Reported: the held-out error and ECE after the temperature fitted on the validation split,
the out-of-scope AUROC against the real non-plant photos, the pointing game of Grad-CAM on
the validation photos' lesion masks, and the verdicts on the two real leaves. A finished
run in ``--out`` is reused.

    python benchmarks/real.py [--material ~/.cache/cropdoc-real] [--out /tmp/cropdoc-real]
        [--per-class 40] [--epochs 10] [--bs 16] [--size 256x192] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import machine, report
from real_data import ARCH, fetch

from cropdoc.testing import keep_if_finished, stand_in_body


def arms(material: Path, stand_in: Path) -> dict[str, dict]:
    """The three starts, as ``train`` settings."""
    weights = material / "weights" / f"{ARCH}.safetensors"
    return {
        "scratch": {"arch": "test_resnet", "from_scratch": True, "pretrained": False},
        "stand-in": {"arch": "test_resnet", "weights": str(stand_in)},
        "imagenet": {"arch": ARCH, "weights": str(weights)},
    }


def train_arm(data: Path, cache: Path, run: Path, settings: dict, epochs, bs, size) -> float:
    """Train one arm with the README's defaults (unless finished); its seconds."""
    from cropdoc import TrainConfig, train
    from cropdoc.engine.schedule import phases

    config = TrainConfig(
        data=str(data),
        cache=str(cache),
        out=str(run),
        workers=2,
        epochs=epochs,
        bs=bs,
        size=size,
        item_size=size,
        **settings,
    )
    if settings.get("from_scratch"):  # the same budget: the frozen epoch trains too
        config.epochs = epochs + config.freeze_epochs
    started = time.perf_counter()
    if not keep_if_finished(run, sum(p.epochs for p in phases(config, float(config.lr)))):
        train(config)
    return round(time.perf_counter() - started, 1)


def score(run: Path, data: Path, heldout: Path, material: Path) -> dict:
    """Held-out error and ECE, out-of-scope AUROC, pointing game, the real leaves."""
    from cropdoc.contract.bundle import BundleMeta
    from cropdoc.evaluation.evaluate import evaluate
    from cropdoc.inference.localisation import score as pointing
    from cropdoc.inference.predict import predict

    held = evaluate(run, heldout, out=run / "evaluation-heldout", ood=material / "not_plants")
    found = pointing(run, data / "masks", method="gradcam", device="cpu")
    leaves = predict([run], [material / "leaves"]).top(1)
    meta = BundleMeta.read(run)
    return {
        "valid_error": round(meta.metrics["error_rate"], 4),
        "heldout_error": round(held["error_rate"], 4),
        "heldout_images": held["images"],
        "ece_before": round(held["calibration"]["ece"][0], 4),
        "ece_after": round(held["calibration"]["ece"][1], 4),
        "ood_auroc": round(held["ood"]["auroc"], 4),
        "ood_flagged": round(held["ood"]["flagged_out_of_scope"], 3),
        "in_scope_flagged": round(held["ood"]["flagged_in_scope"], 3),
        "pointing_game": found["pointing_game"],
        "pointing_chance": found["chance"],
        "real_leaves": [
            f"{Path(r['path']).name}: {r['verdict']} (ood {r['ood_score']:.2f}, "
            f"{r['top'][0]['label']} {r['top'][0]['prob']:.2f})"
            for r in leaves
        ],
        "weights": meta.weights,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--material", type=Path, default=Path.home() / ".cache" / "cropdoc-real")
    parser.add_argument("--out", type=Path, default=Path("/tmp/cropdoc-real"))
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--heldout-per-class", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--bs", type=int, default=16)
    parser.add_argument("--size", default="256x192")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from cropdoc import make_demo_data, prepare

    started = time.perf_counter()
    material = args.material.expanduser()
    fetch(material)
    out = args.out
    data = Path(make_demo_data(out / "data", per_class=args.per_class, seed=3, workers=2)["root"])
    heldout = make_demo_data(out / "heldout", per_class=args.heldout_per_class, seed=4)["root"]
    cache = Path(prepare(data, cache=out / "cache", size=256, workers=2).cache)
    stand_in = stand_in_body(out / "stand-in-body")
    result: dict = {"machine": machine()}
    for name, settings in arms(material, stand_in).items():
        run = out / "runs" / name
        seconds = train_arm(data, cache, run, settings, args.epochs, args.bs, args.size)
        scores = score(run, data, Path(heldout), material)
        result[name] = {"train_seconds": seconds, **scores}
    result["seconds"] = round(time.perf_counter() - started, 1)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
