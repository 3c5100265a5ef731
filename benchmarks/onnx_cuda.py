"""Batch-1 latency of an exported model through ONNX Runtime's CUDA provider (and the CPU
provider beside it), where the installed onnxruntime has it.

    python benchmarks/onnx_cuda.py [--arch convnext_tiny] [--size 224] [--runs 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="convnext_tiny")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    import numpy as np
    import onnxruntime as ort

    from cropdoc.inference.export import export_onnx
    from cropdoc.model.archs import create_model
    from cropdoc.model.build import save_bundle

    folder = Path(tempfile.mkdtemp()) / "bundle"
    meta = {
        "arch": args.arch,
        "classes": [f"c{i}" for i in range(10)],
        "size": [args.size, args.size],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
    }
    save_bundle(folder, create_model(args.arch, 10, pretrained=False).eval(), meta)
    onnx_path = export_onnx(folder)["onnx"]
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size), np.float32)
    result = {"arch": args.arch, "size": args.size, "available": ort.get_available_providers()}
    for provider in ("CUDAExecutionProvider", "CPUExecutionProvider"):
        if provider not in result["available"]:
            result[provider] = "not available"
            continue
        session = ort.InferenceSession(onnx_path, providers=[provider])
        for _ in range(5):
            session.run(None, {"input": x})
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            session.run(None, {"input": x})
            times.append(time.perf_counter() - start)
        result[provider] = {"latency_ms": round(1000 * statistics.median(times), 3)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
