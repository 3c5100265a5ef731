"""Large field photos whose lesions are a few pixels wide: whole photo shrunk to the model's
size, whole photo at the largest size this budget affords, and tiles with multiple-instance
learning (max and attention pooling), trained side by side in one run.

    python benchmarks/field.py [--per-class 48] [--epochs 15] [--scratch-epochs 30]
        [--photo 1536x2048] [--lesion-scale 0.65] [--large 576x768] [--tile 192]
        [--tiles-per-image 8] [--out /tmp/cropdoc-field] [--json]

No pretrained weights can be downloaded here, so the benchmark makes its own: a stand-in
body (``cropdoc.testing.stand_in_body``: test_resnet trained on 1,000 close-up demo photos of
another draw, on their disease and then their disease and variety, its head dropped), and every arm
fine-tunes it (fastai's fine_tune: one frozen epoch, then ``--epochs``), as a user would
fine-tune ImageNet weights. The whole-photo arms also train from scratch for
``--scratch-epochs`` (the recipe that suits them when the body's features do not), and the
best whole-photo error is the lowest of all four.

The field photos: ``cropdoc demo-data --size 1536x2048 --lesion-scale 0.65 --classes ...``
(four classes; spots about 8-12 px across at full resolution, about the size the stand-in
body saw them at 256x192, and 1 px once the photo is shrunk to 256 wide). Each arm's
images/s and seconds are reported. Then the best tiled run's stitched Grad-CAM is scored
against the lesion masks at full resolution (pointing game), and the peak memory of tiled
prediction on a 4000x3000 photo is measured in a fresh process (beside a 1000x750 one: the
difference is what the photo size costs).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from common import machine, report

from cropdoc.config import parse_size
from cropdoc.core.files import atomic_write_json
from cropdoc.testing import stand_in_body, stand_in_scores

CLASSES = ["normal", "brown_spot", "blast", "hispa"]


def arms(args, photo: tuple[int, int], weights: str) -> dict:
    """Each arm's training settings (cropdoc.TrainConfig fields)."""
    tuned = dict(arch=args.arch, epochs=args.epochs, weights=weights, lr=0.01, workers=2)
    scratch = dict(tuned, epochs=args.scratch_epochs, weights=None, from_scratch=True)
    small, large = f"{256 * photo[0] // photo[1]}x256", args.large
    shrunk = dict(size=small, item_size=small, cache_size=256, bs=16)
    whole = dict(size=large, item_size=large, cache_size=max(parse_size(large)), bs=8)
    count = args.tiles_per_image
    tiles = dict(tuned, tile=args.tile, tiles_per_image=count, bs=max(1, 32 // count))
    return {
        f"whole photo shrunk ({small}), fine-tuned": tuned | shrunk,
        f"whole photo shrunk ({small}), from scratch": scratch | shrunk,
        f"whole photo large ({large}), fine-tuned": tuned | whole,
        f"whole photo large ({large}), from scratch": scratch | whole,
        f"tiles {args.tile}, max MIL, fine-tuned": dict(tiles, mil="max"),
        f"tiles {args.tile}, attention MIL, fine-tuned": dict(tiles, mil="attention"),
    }


def body(out: Path) -> tuple[str, dict]:
    """The body every fine-tuned arm starts from (its weights file and what its two stages
    scored on their own validation photos)."""
    started = time.perf_counter()
    weights = stand_in_body(out / "stand-in")
    disease, both = stand_in_scores(out / "stand-in").values()
    summary = {
        "what": "test_resnet on close-up demo photos (--seed 2, 10 classes x 100, 256x192): "
        "30 epochs on the disease from scratch, then 20 on the disease and variety",
        "error_rate": disease["error_rate"],
        "then": {k: both[k] for k in ("error_rate", "variety_error_rate")},
        "seconds": round(time.perf_counter() - started),
    }
    return str(weights), summary


def train_arm(name: str, settings: dict, data: Path, out: Path) -> dict:
    """Train one arm (or read its result, when an earlier run of this script finished it)."""
    from cropdoc import TrainConfig, train

    run = out / re.sub(r"\W+", "-", name).strip("-")
    done = run / "arm.json"
    if done.exists():
        return json.loads(done.read_text())
    config = TrainConfig(
        data=str(data),
        out=str(run),
        cache=str(out / f"cache-{settings.get('cache_size', 0)}"),
        **settings,
    )
    started = time.perf_counter()
    summary = train(config)
    seconds = time.perf_counter() - started
    rows = _metrics(run)
    train_seconds = sum(float(r["train_seconds"]) for r in rows)
    result = {
        "run": str(run),
        "lr": settings["lr"],
        "start": "from scratch" if settings.get("from_scratch") else "the stand-in body",
        "error_rate": summary["best"]["error_rate"],
        "best_epoch": summary["best"]["epoch"],
        "valid_loss": summary["best"]["valid_loss"],
        "last_error_rate": float(rows[-1]["error_rate"]),
        "epochs": summary["epochs"],
        "train_images_per_s": round(summary["train_images"] * summary["epochs"] / train_seconds, 2),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(seconds, 1),
    }
    atomic_write_json(done, result)
    return result


def _metrics(run: Path) -> list[dict]:
    import csv

    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# VmHWM, not ru_maxrss: ru_maxrss keeps the forking parent's peak across exec
PEAK = textwrap.dedent(
    """
    import re, sys
    from cropdoc import predict
    predict([sys.argv[1]], [sys.argv[2]], device="cpu")
    status = open("/proc/self/status").read()
    print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024)
    """
)


def peak_memory(run: str, size: tuple[int, int], out: Path) -> int:
    """Peak resident memory (bytes) of a fresh process predicting one photo of ``size``."""
    from PIL import Image

    photo = out / f"photo-{size[0]}x{size[1]}.jpg"
    pixels = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photo, quality=90)
    result = subprocess.run(
        [sys.executable, "-c", PEAK, run, str(photo)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.split()[-1])


def pointing_game(run: str, data: Path, out: Path) -> dict:
    """The pointing game of ``run``'s stitched Grad-CAM on its validation photos, overall and
    per class (kept in ``out``: a rerun reads it back)."""
    from cropdoc.inference import localisation

    done = out / f"pointing-{Path(run).name}.json"
    if not done.exists():
        scored = localisation.score(run, data / "masks", method="gradcam")
        keys = ("images", "pointing_game", "energy_inside", "chance", "dilate")
        per_class = {k: v["pointing_game"] for k, v in scored["per_class"].items()}
        atomic_write_json(done, {k: scored[k] for k in keys} | {"per class": per_class})
    return json.loads(done.read_text())


def lesion_probe(run: str, data: Path, photos: int = 16) -> dict:
    """Can the tiled model's body see each disease's lesions? For each diseased class, up to
    3 grid tiles from each of ``photos`` training photos that hold a lesion (by its mask),
    against as many tiles of normal photos; both kinds hold leaves (a fifth of their pixels
    or more are leaf green). Returns the 5-fold accuracy of a logistic regression on the
    body's features per class (0.5: the features do not tell the lesion from a healthy leaf)."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    from cropdoc.contract.grid import cut, grid
    from cropdoc.data.images import load_image
    from cropdoc.inference.explain import Explainer
    from cropdoc.model.archs import features_and_logits
    from cropdoc.model.tiled import normalise

    explainer = Explainer(run, "cpu")
    tiles_meta, rng = explainer.meta.tiles, np.random.default_rng(0)
    tile = tiles_meta.tile
    mean, std = torch.tensor(explainer.meta.mean), torch.tensor(explainer.meta.std)

    def tiles(label: str, lesion: bool) -> np.ndarray:
        found = []
        for path in sorted((data / "train_images" / label).glob("*.jpg"))[:photos]:
            pixels = load_image(path)
            mask = load_image(data / "masks" / label / f"{path.stem}.png")[..., 0] > 127
            leaf = pixels[..., 1].astype(int) - pixels[..., 0] > 40
            keep = [
                (y, x)
                for y, x in grid(*pixels.shape[:2], tile, tiles_meta.overlap)
                if leaf[y : y + tile, x : x + tile].mean() >= 0.2
                and mask[y : y + tile, x : x + tile].any() == lesion
            ]
            for k in rng.permutation(len(keep))[:3]:
                found.append(cut(pixels, keep[k], tile))
        return np.stack(found)

    def features(pixels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = normalise(torch.from_numpy(pixels), mean, std)
            return features_and_logits(explainer.net.body, x)[0].float().numpy()

    healthy = features(tiles("normal", False))
    result = {}
    for label in CLASSES[1:]:
        sick = features(tiles(label, True))
        x, y = np.concatenate([sick, healthy]), np.r_[np.ones(len(sick)), np.zeros(len(healthy))]
        model = LogisticRegression(max_iter=2000)
        result[label] = round(float(cross_val_score(model, x, y, cv=5).mean()), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=15, help="after one frozen epoch")
    parser.add_argument("--scratch-epochs", type=int, default=30)
    parser.add_argument("--arch", default="test_resnet")
    parser.add_argument("--photo", default="1536x2048", help="HxW of the field photos")
    parser.add_argument("--lesion-scale", type=float, default=0.65)
    parser.add_argument("--large", default="576x768", help="the large whole-photo arm's size")
    parser.add_argument("--tile", type=int, default=192)
    parser.add_argument("--tiles-per-image", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cropdoc-field"))
    parser.add_argument("--only", default="", help="comma-separated arm numbers (1-6)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from cropdoc.data.demo import make_demo_data

    out = args.out
    started = time.perf_counter()
    photo = parse_size(args.photo)
    data = make_demo_data(
        out / "data",
        args.per_class,
        seed=0,
        size=photo,
        lesion_scale=args.lesion_scale,
        classes=CLASSES,
    )
    data_seconds = time.perf_counter() - started
    weights, start = body(out)
    chosen = arms(args, photo, weights)
    if args.only:
        keep = {int(i) - 1 for i in args.only.split(",")}
        chosen = {k: v for i, (k, v) in enumerate(chosen.items()) if i in keep}
    results = {name: train_arm(name, s, Path(data["root"]), out) for name, s in chosen.items()}
    tiled = {k: v for k, v in results.items() if k.startswith("tiles")}
    result = {
        "machine": machine(),
        "data": f"{len(CLASSES)} classes x {args.per_class} photos of {photo[0]}x{photo[1]}, "
        f"lesion scale {args.lesion_scale}, "
        f"20% validation (drawn in {data_seconds:.0f} s)",
        "arch": f"{args.arch}: fine-tuned 1 + {args.epochs} epochs from the stand-in body, "
        f"or {args.scratch_epochs} epochs from scratch",
        "stand-in body": start,
        **{name: r for name, r in results.items()},
    }
    whole = [v["error_rate"] for k, v in results.items() if k.startswith("whole")]
    if tiled:
        # equal errors (38 photos) go to the lower validation loss at the best epoch
        best_name = min(tiled, key=lambda k: (tiled[k]["error_rate"], tiled[k]["valid_loss"]))
        best = tiled[best_name]["run"]
        result["pointing game (stitched Grad-CAM, full resolution)"] = pointing_game(
            best, Path(data["root"]), out
        ) | {"run": best_name}
        result["lesion tiles vs healthy tiles, linear probe of the body's features"] = lesion_probe(
            best, Path(data["root"])
        )
        small = peak_memory(best, (750, 1000), out)
        large = peak_memory(best, (3000, 4000), out)
        result["peak memory, tiled predict (MB)"] = {
            "1000x750 photo": round(small / 2**20),
            "4000x3000 photo": round(large / 2**20),
            "difference": round((large - small) / 2**20),
            "4000x3000 photo's pixels": round(3000 * 4000 * 3 / 2**20),
        }
        if whole:
            ratio = tiled[best_name]["error_rate"] / max(min(whole), 1e-9)
            result["tiled error / best whole-photo error"] = round(ratio, 3)
    result["seconds"] = round(time.perf_counter() - started)
    report(result, args.json)
    atomic_write_json(out / "field.json", result)


if __name__ == "__main__":
    main()
