"""CPU inference: PyTorch eager vs ONNX Runtime fp32 vs int8 (dynamic quantisation), in one run.

Usage: python benchmarks/inference.py [--archs resnet26d,convnext_tiny] [--size 224]
       [--agreement RUN --images DIR]

Latency at batch 1 (median of --runs) and throughput at batch 32, random weights; int8 is
ONNX Runtime's static QDQ quantisation (calibrated on random inputs for these). With
--agreement RUN (a trained run folder) and --images DIR, also the top-1 agreement of its int8
export (calibrated on 64 of those images) against its fp32 export on all of them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import machine, report


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet26d,convnext_tiny")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--agreement", type=Path, help="trained run folder")
    parser.add_argument("--images", type=Path, help="images for the agreement check")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    from cropdoc.bundle import save_bundle
    from cropdoc.export import export_onnx
    from cropdoc.models import create_model

    result: dict = {"machine": machine(), "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            model = create_model(arch, 10, pretrained=False).eval()
            meta = {
                "arch": arch,
                "classes": [str(i) for i in range(10)],
                "size": [args.size, args.size],
                "mean": [0.5] * 3,
                "std": [0.25] * 3,
            }
            bundle = save_bundle(Path(tmp) / arch, model, meta)
            export_onnx(bundle, Path(tmp) / f"{arch}.onnx")
            export_onnx(bundle, Path(tmp) / f"{arch}.int8.onnx", int8=True)
            sessions = {
                name: ort.InferenceSession(
                    str(Path(tmp) / f"{arch}{suffix}.onnx"), providers=["CPUExecutionProvider"]
                )
                for name, suffix in (("onnx_fp32", ""), ("onnx_int8", ".int8"))
            }
            for batch in (1, 32):
                x = torch.randn(batch, 3, args.size, args.size)
                feed = {"input": x.numpy()}
                runs = {"eager": lambda m=model, x=x: m(x)}
                for name, session in sessions.items():
                    runs[name] = lambda s=session, f=feed: s.run(None, f)
                repeats = args.runs if batch == 1 else max(3, args.runs // 4)
                with torch.no_grad():
                    seconds = {n: median_seconds(r, repeats) for n, r in runs.items()}
                for name, s in seconds.items():
                    key = f"{arch}_b{batch}_{name}"
                    result[key + ("_ms" if batch == 1 else "_img_per_s")] = (
                        round(1000 * s, 2) if batch == 1 else round(batch / s, 1)
                    )
                for name in sessions:
                    result[f"{arch}_b{batch}_{name}_speedup"] = round(
                        seconds["eager"] / seconds[name], 2
                    )
        if args.agreement is not None:
            from cropdoc.onnx_runtime import predict_onnx

            fp32 = export_onnx(args.agreement, Path(tmp) / "a.onnx")["onnx"]
            int8 = export_onnx(
                args.agreement, Path(tmp) / "a.int8.onnx", int8=True, calibrate=[args.images]
            )["onnx"]
            p32 = predict_onnx(fp32, [args.images], quiet=True).probs.argmax(1)
            p8 = predict_onnx(int8, [args.images], quiet=True).probs.argmax(1)
            result["int8_top1_agreement"] = round(float(np.mean(p32 == p8)), 4)
            result["agreement_images"] = len(p32)
    report(result, args.json)


if __name__ == "__main__":
    main()
