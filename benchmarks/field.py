"""Large field photos whose lesions are a few pixels wide: whole photo shrunk to the model's
size, whole photo at the largest size this budget affords, and tiles with multiple-instance
learning (max and attention pooling), trained side by side in one run.

    python benchmarks/field.py [--per-class 48] [--epochs 30] [--photo 1536x2048]
        [--lesion-scale 1.5] [--large 576x768] [--tile 192] [--tiles-per-image 4]
        [--out /tmp/cropdoc-field] [--json]

The data: ``cropdoc demo-data --size 1536x2048 --lesion-scale 1.5 --classes ...`` (four
classes; spots about 20-27 px across at full resolution, 2-3 px once the photo is shrunk to
256 wide). Every arm trains the same architecture from scratch for the same epochs, 32 tiles
or 8 to 16 whole photos a step; its images/s and seconds are reported. Then the best tiled run's
stitched Grad-CAM is scored against the lesion masks at full resolution (pointing game), and
the peak memory of tiled prediction on a 4000x3000 photo is measured in a fresh process
(beside a 1000x750 one: the difference is what the photo size costs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from cropdoc.config import parse_size

CLASSES = ["normal", "brown_spot", "blast", "hispa"]


def arms(args, photo: tuple[int, int]) -> dict:
    """Each arm's training settings (cropdoc.TrainConfig fields)."""
    common = dict(arch=args.arch, epochs=args.epochs, from_scratch=True, lr=0.01, workers=2)
    small = f"{256 * photo[0] // photo[1]}x256"
    large, tile, count = args.large, args.tile, args.tiles_per_image
    tiles = dict(common, tile=tile, tiles_per_image=count, bs=max(1, 32 // count), lr=args.tile_lr)
    return {
        f"whole photo shrunk ({small})": dict(
            common, size=small, item_size=small, cache_size=256, bs=16
        ),
        f"whole photo large ({large})": dict(
            common, size=large, item_size=large, cache_size=max(parse_size(large)), bs=8
        ),
        f"tiles {tile}, max MIL": dict(tiles, mil="max"),
        f"tiles {tile}, attention MIL": dict(tiles, mil="attention"),
    }


def train_arm(name: str, settings: dict, data: Path, out: Path) -> dict:
    """Train one arm (or read its result, when an earlier run of this script finished it)."""
    from cropdoc import TrainConfig, train

    run = out / name.split(" (")[0].replace(" ", "-").replace(",", "")
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
    train_seconds = sum(float(r["train_seconds"]) for r in _metrics(run))
    result = {
        "run": str(run),
        "lr": settings["lr"],
        "error_rate": summary["best"]["error_rate"],
        "best_epoch": summary["best"]["epoch"],
        "last_error_rate": float(_metrics(run)[-1]["error_rate"]),
        "epochs": summary["epochs"],
        "train_images_per_s": round(summary["train_images"] * summary["epochs"] / train_seconds, 2),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(seconds, 1),
    }
    done.write_text(json.dumps(result))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--arch", default="test_resnet")
    parser.add_argument("--photo", default="1536x2048", help="HxW of the field photos")
    parser.add_argument("--lesion-scale", type=float, default=1.5)
    parser.add_argument("--large", default="576x768", help="the large whole-photo arm's size")
    parser.add_argument("--tile", type=int, default=192)
    parser.add_argument("--tile-lr", type=float, default=0.002, help="lr of the tiled arms")
    parser.add_argument("--tiles-per-image", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cropdoc-field"))
    parser.add_argument("--only", default="", help="comma-separated arm numbers (1-4)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from common import machine, report

    from cropdoc.data.demo import make_demo_data
    from cropdoc.inference import explain

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
    chosen = arms(args, photo)
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
        "arch": f"{args.arch} from scratch, {args.epochs} epochs each",
        **{name: r for name, r in results.items()},
    }
    whole = [v["error_rate"] for k, v in results.items() if k.startswith("whole")]
    if tiled:
        best_name = min(tiled, key=lambda k: tiled[k]["error_rate"])
        best = tiled[best_name]["run"]
        pointing = explain.score(best, Path(data["root"]) / "masks", method="gradcam")
        result["pointing game (stitched Grad-CAM, full resolution)"] = {
            k: pointing[k] for k in ("images", "pointing_game", "energy_inside", "chance", "dilate")
        } | {"run": best_name}
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
    (out / "field.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
