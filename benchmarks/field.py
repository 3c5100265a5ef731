"""Large field photos whose lesions are a few pixels wide: whole photo shrunk to the model's
size, whole photo at the largest size this budget affords, and tiles with multiple-instance
learning (max and attention pooling), trained side by side in one run.

    python benchmarks/field.py [--per-class 40] [--epochs 8] [--out /tmp/cropdoc-field] [--json]

The data: ``cropdoc demo-data --size 1536x2048 --classes ...`` (four classes; lesions 10-20
px, 1-2 px once the photo is shrunk to 256). Every arm trains the same architecture from
scratch for the same epochs; its images/s and seconds are reported. Then the best tiled run's
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

CLASSES = ["normal", "brown_spot", "blast", "hispa"]
PHOTO = (1536, 2048)


def arms(arch: str, epochs: int) -> dict[str, dict]:
    """Each arm's training settings (cropdoc.TrainConfig fields)."""
    common = dict(arch=arch, epochs=epochs, from_scratch=True, lr=0.01, workers=2, seed=0)
    return {
        "whole photo shrunk (192x256)": dict(
            common, size="192x256", item_size="192x256", cache_size=256, bs=16
        ),
        "whole photo large (768x1024)": dict(
            common, size="768x1024", item_size="768x1024", cache_size=1024, bs=8
        ),
        "tiles 256, max MIL": dict(common, tile=256, tiles_per_image=8, mil="max", bs=4),
        "tiles 256, attention MIL": dict(
            common, tile=256, tiles_per_image=8, mil="attention", bs=4
        ),
    }


def train_arm(name: str, settings: dict, data: Path, out: Path) -> dict:
    from cropdoc import TrainConfig, train

    run = out / name.split(" (")[0].replace(" ", "-").replace(",", "")
    config = TrainConfig(
        data=str(data),
        out=str(run),
        cache=str(out / f"cache-{settings.get('cache_size', 0)}"),
        **settings,
    )
    started = time.perf_counter()
    summary = train(config)
    seconds = time.perf_counter() - started
    rows = [json.loads(json.dumps(r)) for r in _metrics(run)]
    train_seconds = sum(float(r["train_seconds"]) for r in rows)
    return {
        "run": str(run),
        "error_rate": summary["best"]["error_rate"],
        "best_epoch": summary["best"]["epoch"],
        "epochs": summary["epochs"],
        "train_images_per_s": round(summary["train_images"] * summary["epochs"] / train_seconds, 2),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(seconds, 1),
    }


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
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--arch", default="test_resnet")
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
    data = make_demo_data(out / "data", args.per_class, seed=0, size=PHOTO, classes=CLASSES)
    data_seconds = time.perf_counter() - started
    chosen = arms(args.arch, args.epochs)
    if args.only:
        keep = {int(i) - 1 for i in args.only.split(",")}
        chosen = {k: v for i, (k, v) in enumerate(chosen.items()) if i in keep}
    results = {name: train_arm(name, s, Path(data["root"]), out) for name, s in chosen.items()}
    tiled = {k: v for k, v in results.items() if k.startswith("tiles")}
    result = {
        "machine": machine(),
        "data": f"{len(CLASSES)} classes x {args.per_class} photos of {PHOTO[0]}x{PHOTO[1]}, "
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
