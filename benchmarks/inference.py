"""CPU inference: PyTorch eager vs ONNX Runtime fp32 vs int8 (static QDQ quantisation), in one run.

Usage: python benchmarks/inference.py [--archs resnet26d,convnext_tiny] [--size 224]
       [--agreement RUN --images DIR] [--floor] [--profile]

Latency at batch 1 (median of --runs) and throughput at batch 32, random weights; int8 is
ONNX Runtime's static QDQ quantisation (calibrated on random inputs for these). With
--agreement RUN (a trained run folder) and --images DIR, also the top-1 agreement of its int8
export (calibrated on 64 of those images) against its fp32 export on all of them.

With --floor, also this machine's best dense matrix product (2048x2048x2048: torch fp32,
ONNX Runtime fp32 MatMul, ONNX Runtime uint8 x int8 MatMulInteger) and, per architecture,
the time its multiply-adds alone would take at that rate: no runtime can beat that floor,
so it tells whether a target such as "2x eager" is possible on this CPU at all.
With --profile, also where ONNX Runtime spends batch-1 time, per operator type.
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
    parser.add_argument("--floor", action="store_true", help="measure the matmul floor too")
    parser.add_argument("--profile", action="store_true", help="ONNX Runtime time per op type")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    from cropdoc.inference.export import export_onnx
    from cropdoc.model.archs import create_model
    from cropdoc.model.build import save_bundle

    result: dict = {"machine": machine(), "torch_threads": torch.get_num_threads()}
    if args.floor:
        result.update(matmul_peaks(args.runs))
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
            if args.floor:
                result.update(floors(arch, args.size, result))
            if args.profile:
                for name, suffix in (("onnx_fp32", ""), ("onnx_int8", ".int8")):
                    path = Path(tmp) / f"{arch}{suffix}.onnx"
                    for op, ms in op_times(path, args.size, args.runs).items():
                        result[f"{arch}_b1_{name}_{op}_ms"] = ms
        if args.agreement is not None:
            from cropdoc.inference.onnx_runtime import predict_onnx

            fp32 = export_onnx(args.agreement, Path(tmp) / "a.onnx")["onnx"]
            int8 = export_onnx(
                args.agreement, Path(tmp) / "a.int8.onnx", int8=True, calibrate=[args.images]
            )["onnx"]
            p32 = predict_onnx(fp32, [args.images]).probs.argmax(1)
            p8 = predict_onnx(int8, [args.images]).probs.argmax(1)
            result["int8_top1_agreement"] = round(float(np.mean(p32 == p8)), 4)
            result["agreement_images"] = len(p32)
    report(result, args.json)


def matmul_peaks(repeats: int, n: int = 2048) -> dict:
    """GMAC/s of one n x n x n product: torch fp32, ONNX Runtime fp32 and uint8 x int8."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    def session(op: str, a_type: int, b_type: int, out_type: int) -> ort.InferenceSession:
        graph = helper.make_graph(
            [helper.make_node(op, ["a", "b"], ["c"])],
            "product",
            [
                helper.make_tensor_value_info("a", a_type, [n, n]),
                helper.make_tensor_value_info("b", b_type, [n, n]),
            ],
            [helper.make_tensor_value_info("c", out_type, [n, n])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    a32, b32 = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    a8 = rng.integers(0, 255, (n, n), dtype=np.uint8)
    b8 = rng.integers(-127, 127, (n, n), dtype=np.int8)
    fp32 = session("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT)
    int8 = session("MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)
    ta, tb = torch.from_numpy(a32), torch.from_numpy(b32)
    runs = {
        "torch_fp32": lambda: ta @ tb,
        "onnx_fp32": lambda: fp32.run(None, {"a": a32, "b": b32}),
        "onnx_int8": lambda: int8.run(None, {"a": a8, "b": b8}),
    }
    repeats = max(3, repeats // 4)
    return {
        f"matmul_{name}_gmac_per_s": round(n**3 / median_seconds(run, repeats) / 1e9, 1)
        for name, run in runs.items()
    }


def op_times(path: Path, size: int, repeats: int, top: int = 8) -> dict:
    """Mean milliseconds per batch-1 run spent in each operator type (the ``top`` largest),
    from ONNX Runtime's own profile."""
    import collections
    import json

    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": np.random.default_rng(0).standard_normal((1, 3, size, size), np.float32)}
    for _ in range(repeats):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    micros: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            micros[event["args"]["op_name"]] += event["dur"]
    return {op: round(us / repeats / 1000, 2) for op, us in micros.most_common(top)}


def floors(arch: str, size: int, result: dict) -> dict:
    """The least time ``arch``'s multiply-adds need at batch 1 at the measured peaks, next to
    the times the targets ask for (eager / 2 for fp32, eager / 3 for int8)."""
    from cropdoc.model.archs import count

    gmacs = count(arch, (size, size), 10).gmacs
    fp32_peak = max(result["matmul_torch_fp32_gmac_per_s"], result["matmul_onnx_fp32_gmac_per_s"])
    eager = result[f"{arch}_b1_eager_ms"]
    return {
        f"{arch}_gmacs": round(gmacs, 2),
        f"{arch}_b1_fp32_floor_ms": round(1000 * gmacs / fp32_peak, 1),
        f"{arch}_b1_fp32_target_ms": round(eager / 2, 1),
        f"{arch}_b1_int8_floor_ms": round(1000 * gmacs / result["matmul_onnx_int8_gmac_per_s"], 1),
        f"{arch}_b1_int8_target_ms": round(eager / 3, 1),
    }


if __name__ == "__main__":
    main()
