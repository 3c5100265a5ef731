"""Attack a running ``cropdoc serve`` the ways issue #19 found, and measure what honest
clients see meanwhile. Loopback only; every loop is bounded in count and time.

    python benchmarks/security.py [--slow-clients 80] [--json]

1. slow uploads: N clients declare ``Content-Length: 5000000``, send 100 bytes and stall;
   meanwhile honest clients post a real photo: the share answered 200 and their latency.
2. many fields: one multipart body of 150,000 tiny fields (8.7 MB): how long until it is
   refused, and the slowest ``/health`` answer meanwhile.
3. a multipart body nested 2,000 levels deep: the status.
4. clients that leave mid-upload: how many lines the server logs for them.
5. other sites (issue #33): a foreign ``Origin`` posting to ``/predict`` and to the doctor
   review page's ``/decision`` (as JSON, text/plain and a form), a rebinding ``Host``
   reading ``/model`` and ``/findings``: the status of each, and whether a decision was
   saved.

``--round3`` runs issue #38's probes instead (``security_round3.py``: files touched by the
web export and score, inputs expanded twice, group-by, decoding memory, fused forms, the
in-flight bound, NaN, one-line errors), with the cropdoc of ``--src`` (a checkout's ``src``
folder; default: the installed one), so the code before a change is probed the same way:

    python benchmarks/security.py --round3 --src ../before/src --json
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from cropdoc.testing import free_port

HOST = "127.0.0.1"


def request(port: int, method: str, path: str, body: bytes = b"", headers=None, timeout=60):
    """(status, seconds) of one request."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        connection.close()


def make_model(folder: Path) -> tuple[Path, bytes]:
    """A small test_resnet bundle and a 480x640 JPEG photo."""
    import numpy as np
    from PIL import Image

    from cropdoc.model.archs import create_model
    from cropdoc.model.build import save_bundle

    model = create_model("test_resnet", 10, pretrained=False).eval()
    meta = {
        "arch": "test_resnet",
        "classes": [f"c{i}" for i in range(10)],
        "size": [128, 96],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "cache_size": 256,
    }
    save_bundle(folder, model, meta)
    rng = np.random.default_rng(0)
    photo = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (640, 480, 3), dtype=np.uint8)).save(photo, "JPEG")
    return folder, photo.getvalue()


def slow_uploads(port: int, photo: bytes, clients: int, honest: int) -> dict:
    """Slow clients hold connections; honest ones post while they do."""
    sockets = []
    for _ in range(clients):
        s = socket.create_connection((HOST, port), timeout=10)
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 5000000\r\n\r\n" + b"\xff" * 100
        )
        sockets.append(s)
    time.sleep(0.5)
    results = [request(port, "POST", "/predict", photo, {"Content-Type": "image/jpeg"})]
    for _ in range(honest - 1):
        results.append(request(port, "POST", "/predict", photo, {"Content-Type": "image/jpeg"}))
    ok = [seconds for status, seconds in results if status == 200]
    for s in sockets:
        s.close()
    return {
        "slow_clients": clients,
        "honest_requests": honest,
        "honest_ok_share": len(ok) / honest,
        "honest_median_ms": round(1000 * statistics.median(ok), 1) if ok else None,
        "honest_max_ms": round(1000 * max(ok), 1) if ok else None,
    }


def many_fields(port: int, fields: int = 150_000) -> dict:
    """One body of ``fields`` tiny form fields, with /health polled meanwhile."""
    boundary = uuid.uuid4().hex[:8]
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n'.encode()
    body = part * fields + f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    health: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set() and len(health) < 1000:
            health.append(request(port, "GET", "/health")[1])

    poller = threading.Thread(target=poll)
    poller.start()
    status, seconds = request(port, "POST", "/predict", body, headers)
    done.set()
    poller.join()
    return {
        "fields": fields,
        "body_mb": round(len(body) / 2**20, 1),
        "status": status,
        "refused_in_s": round(seconds, 3),
        "health_max_ms": round(1000 * max(health), 1) if health else None,
        "health_polls": len(health),
    }


def nested(port: int, depth: int = 2000) -> dict:
    """A multipart body whose every part is itself multipart, ``depth`` levels deep."""
    body = b"x"
    boundary = "b0"
    for level in range(depth):
        boundary = f"b{level}"
        inner = "multipart/mixed" if level else "text/plain"
        body = (
            f"--{boundary}\r\nContent-Type: {inner}; boundary=b{level - 1}\r\n\r\n".encode()
            + body
            + f"\r\n--{boundary}--\r\n".encode()
        )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, seconds = request(port, "POST", "/predict", body, headers)
    return {"depth": depth, "status": status, "seconds": round(seconds, 3)}


def leavers(port: int, clients: int = 20) -> int:
    """Clients that send half a body and close the connection."""
    for _ in range(clients):
        with socket.create_connection((HOST, port), timeout=10) as s:
            s.sendall(
                b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: 100000\r\n\r\n" + b"\xff" * 50_000
            )
            time.sleep(0.05)
    return clients


def cross_site_serve(port: int, photo: bytes) -> dict:
    """A foreign page's POST of a photo, and a rebinding name's read of the model."""
    evil = {"Origin": "http://evil.example", "Content-Type": "image/jpeg"}
    return {
        "foreign_origin_predict": request(port, "POST", "/predict", photo, evil)[0],
        "rebinding_host_model": request(port, "GET", "/model", headers={"Host": "evil.example"})[0],
        "own_origin_predict": request(
            port, "POST", "/predict", photo, {**evil, "Origin": f"http://{HOST}:{port}"}
        )[0],
    }


def cross_site_review(folder: Path) -> dict:
    """The doctor's review page on a folder of photos: the issue's curl probes (a foreign
    Origin with text/plain JSON, a form, JSON without the page's token, a rebinding Host),
    then whether any of them saved a decision."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("blast", "normal"):
        for i in range(3):
            (folder / "data" / label).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "data" / label / f"{i}.jpg")
        Image.fromarray(pixels).save(folder / "data" / label / "copy.jpg")  # a finding
    port = free_port()
    command = [sys.executable, "-m", "cropdoc", "doctor", str(folder / "data"), "--folds", "0"]
    command += ["--review", "--out", str(folder / "doc"), "--port", str(port)]
    command += ["--cache", str(folder / "cache")]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body = b'{"photo":0,"decision":"drop"}'
    try:
        _wait(port)
        evil = {"Origin": "http://evil.example"}
        probes = {
            "foreign_text_plain": {**evil, "Content-Type": "text/plain"},
            "foreign_form": {**evil, "Content-Type": "application/x-www-form-urlencoded"},
            "foreign_json": {**evil, "Content-Type": "application/json"},
            "json_without_token": {"Content-Type": "application/json"},
        }
        result = {k: request(port, "POST", "/decision", body, h)[0] for k, h in probes.items()}
        rebinding = {"Host": "evil.example"}
        result["rebinding_host_findings"] = request(port, "GET", "/findings", headers=rebinding)[0]
        result["decisions_saved"] = (folder / "doc" / "decisions.csv").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return result


def _wait(port: int, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if request(port, "GET", "/health")[0] == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no server answered on port {port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow-clients", type=int, default=80)
    parser.add_argument("--honest", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--show-log", action="store_true", help="Print the server's log.")
    parser.add_argument("--round3", action="store_true", help="Issue #38's probes only.")
    parser.add_argument("--src", type=Path, help="--round3: the cropdoc checkout's src folder.")
    args = parser.parse_args()
    if args.round3:
        from security_round3 import probe_all

        with tempfile.TemporaryDirectory() as tmp:
            result = probe_all(args.src, Path(tmp))
        print(json.dumps(result, indent=1, ensure_ascii=False) if args.json else _lines(result))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model, photo = make_model(Path(tmp) / "model")
        port = free_port()
        log = Path(tmp) / "server.log"
        command = [sys.executable, "-m", "cropdoc", "serve", str(model), "--port", str(port)]
        with open(log, "w") as out:
            server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait(port)
            before = len(log.read_text().splitlines())
            result = {
                "slow_uploads": slow_uploads(port, photo, args.slow_clients, args.honest),
                "many_fields": many_fields(port),
                "nested": nested(port),
            }
            result["cross_site_serve"] = cross_site_serve(port, photo)
            result["leavers"] = {"clients": leavers(port)}
            time.sleep(1)
            lines = log.read_text().splitlines()[before:]
            result["leavers"]["server_log_lines"] = len(lines)
            result["leavers"]["tracebacks"] = sum("Traceback" in line for line in lines)
            if args.show_log:
                print("\n".join(lines), file=sys.stderr)
        finally:
            server.terminate()
            server.wait(timeout=30)
        result["cross_site_review"] = cross_site_review(Path(tmp) / "review")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for name, values in result.items():
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
    return 0


def _lines(result: dict) -> str:
    return "\n".join(f"{name}: {json.dumps(values, ensure_ascii=False)}"
                     for name, values in result.items())  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
