"""Load test of `cropdoc serve` on loopback: with and without batching, in one run.

Usage: python benchmarks/serve.py MODEL IMAGE [--requests 2000] [--concurrency 16]
       python benchmarks/serve.py --random test_resnet --size 128x96 IMAGE
       python benchmarks/serve.py ... --workers 2 --threads 1   (passed on to both servers)

Starts the server twice on a free port (``--max-batch 16`` and ``--max-batch 1``), sends
``--requests`` POSTs of IMAGE's bytes from ``--concurrency`` client threads (keep-alive
connections), and reports throughput, p50/p95 latency and the count of 5xx answers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import machine, report

from cropdoc.testing import free_port


def start(model: Path, port: int, max_batch: int, options: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "cropdoc", "serve", str(model), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--max-batch", str(max_batch), "--max-inflight", "256", *options],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("the server did not start")


def load(port: int, body: bytes, requests: int, concurrency: int) -> dict:
    """Send ``requests`` POSTs from ``concurrency`` threads; latencies and status codes."""
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            started = time.perf_counter()
            connection.request("POST", "/predict", body, {"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            response.read()
            with lock:
                latencies.append(time.perf_counter() - started)
                statuses.append(response.status)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    latencies.sort()
    return {
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
        "errors_5xx": sum(s >= 500 for s in statuses),
        "not_200": sum(s != 200 for s in statuses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", type=Path, nargs="+", help="MODEL IMAGE, or IMAGE with --random")
    parser.add_argument("--random", help="serve a random-weight bundle of this architecture")
    parser.add_argument("--size", default="128x96", help="its input size, with --random")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--threads", type=int, help="model threads per server process")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = random_bundle(args.random, args.size, Path(tmp)) if args.random else args.paths[0]
        run(model, args.paths[-1], args)


def random_bundle(arch: str, size: str, folder: Path) -> Path:
    """A bundle of ``arch`` with random weights at ``size`` (speed needs no training)."""
    from cropdoc.config import parse_size
    from cropdoc.model.archs import create_model
    from cropdoc.model.build import save_bundle

    height, width = parse_size(size)
    meta = {"arch": arch, "classes": [str(i) for i in range(10)], "size": [height, width]}
    meta.update(mean=[0.5] * 3, std=[0.25] * 3, cache_size=max(height, width))
    return save_bundle(folder, create_model(arch, 10, pretrained=False), meta)


def run(model: Path, image: Path, args: argparse.Namespace) -> None:
    body = image.read_bytes()
    result: dict = {"machine": machine(), "model": str(model), "requests": args.requests}
    result["concurrency"] = args.concurrency
    options = ["--workers", str(args.workers)]
    options += ["--threads", str(args.threads)] if args.threads else []
    result["server_options"] = " ".join(options)
    for name, max_batch in (("batched", 16), ("one_at_a_time", 1)):
        port = free_port()
        process = start(model, port, max_batch, options)
        try:
            load(port, body, min(100, args.requests), args.concurrency)  # warm-up
            for key, value in load(port, body, args.requests, args.concurrency).items():
                result[f"{name}_{key}"] = value
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/health")
            health = json.loads(connection.getresponse().read())
            result[f"{name}_mean_batch"] = health["mean_batch"]
        finally:
            process.terminate()
            process.wait()
    result["batching_speedup"] = round(
        result["batched_requests_per_s"] / result["one_at_a_time_requests_per_s"], 2
    )
    report(result, args.json)


if __name__ == "__main__":
    main()
