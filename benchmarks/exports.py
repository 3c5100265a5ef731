"""Every export of one trained run, checked against PyTorch on the same held-out photos through
each runtime's own preprocessing (``cropdoc.inference.predict.photo_parity``): top-1
agreement, the largest probability difference, the file's size, and the time to score one
photo at a time (decode included, the median of the photos, after one warm-up photo).

    python benchmarks/exports.py RUN [--photos 32] [--out /tmp/cropdoc-exports] [--json]

RUN is a run folder whose data is here (``cropdoc demo`` writes one: demo/runs/...).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import machine, report

from cropdoc.config import TrainConfig
from cropdoc.inference.predictions import collect_inputs, predict_paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cropdoc-exports"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from cropdoc.inference.export import export_onnx
    from cropdoc.inference.litert_runtime import tflite_scorer
    from cropdoc.inference.mobile import export_openvino, export_tflite
    from cropdoc.inference.onnx_runtime import onnx_scorer
    from cropdoc.inference.openvino_runtime import openvino_scorer
    from cropdoc.inference.predict import photo_parity, torch_scorer

    data = Path(TrainConfig.from_yaml(args.run / "config.yaml").data)
    found = collect_inputs([data / "test_images"])
    photos = found[:: max(1, len(found) // args.photos)][: args.photos]
    training = data / "train_images"
    args.out.mkdir(parents=True, exist_ok=True)
    exports = {
        "ONNX fp32": lambda: export_onnx(args.run, args.out / "model.onnx", photos=False)["onnx"],
        "ONNX int8": lambda: export_onnx(
            args.run, args.out / "model.int8.onnx", int8=True, calibrate=[training], photos=False
        )["onnx"],
        "OpenVINO fp32": lambda: export_openvino(args.run, args.out / "model.xml", photos[:1])[
            "openvino"
        ],
        "tflite fp32": lambda: export_tflite(args.run, args.out / "model.tflite", photos[:1])[
            "tflite"
        ],
    }
    runtimes = {
        "ONNX fp32": onnx_scorer,
        "ONNX int8": onnx_scorer,
        "OpenVINO fp32": openvino_scorer,
        "tflite fp32": tflite_scorer,
    }
    rows = {"machine": machine(), "photos": len(photos)}
    rows["PyTorch (reference)"] = {"ms per photo": per_photo_ms(torch_scorer([args.run]), photos)}
    for name, build in exports.items():
        started = time.perf_counter()
        path = Path(build())
        built = time.perf_counter() - started
        scorer = runtimes[name](path)
        parity = photo_parity(args.run, scorer, photos)
        size = path.stat().st_size + (
            path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0
        )
        rows[name] = {
            "top-1 agreement": parity["top1_agreement"],
            "max |prob diff|": f"{parity['max_prob_diff']:.1e}",
            "MB": round(size / 2**20, 2),
            "export s": round(built, 1),
            "ms per photo": per_photo_ms(scorer, photos),
        }
    report(rows, args.json)
    return 0


def per_photo_ms(scorer, photos: list[Path]) -> float:
    """The median time to score one photo at a time, decoding included."""
    predict_paths(photos[:1], scorer, bs=1, quality=False)  # warm-up
    times = []
    for photo in photos:
        started = time.perf_counter()
        predict_paths([photo], scorer, bs=1, quality=False)
        times.append(1000 * (time.perf_counter() - started))
    return round(statistics.median(times), 1)


if __name__ == "__main__":
    raise SystemExit(main())
