"""serve: real HTTP against `cropdoc serve` on a free loopback port, and a headless browser."""

from __future__ import annotations

import base64
import http.client
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # trains or serves a model in other processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``cropdoc serve`` in a subprocess, stopped at the end."""

    def __init__(self, model: Path, *options: str):
        self.model, self.port = model, _free_port()
        command = [sys.executable, "-m", "cropdoc", "serve", str(model), "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("server exited: " + self.process.stdout.read())
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read(), response.getheader("content-type") or ""
        finally:
            connection.close()

    def json(self, method: str, path: str, body=None, headers=None):
        status, data, _ = self.request(method, path, body, headers)
        return status, json.loads(data)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _multipart(data: bytes, name: str = "leaf.jpg") -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.fixture(scope="module")
def photo(trained_run) -> Path:
    return sorted((trained_run.parent / "data" / "train_images" / "blast").glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def server(trained_run):
    running = Server(trained_run, "--max-upload-mb", "1", "--max-inflight", "4")
    yield running
    running.stop()


def test_predict_health_model_and_page(server, trained_run, photo):
    data = photo.read_bytes()
    body, headers = _multipart(data)
    status, result = server.json("POST", "/predict", body, headers)
    assert status == 200, result
    assert len(result["top"]) == 3 and result["ms"] > 0
    assert abs(sum(t["prob"] for t in result["top"]) - 1) < 1  # the top 3 of a distribution
    from cropdoc.inference.predict import predict

    expected = predict([trained_run], [photo])
    assert result["top"][0]["label"] == expected.classes[int(expected.probs[0].argmax())]
    assert result["top"][0]["prob"] == pytest.approx(float(expected.probs[0].max()), abs=1e-4)
    assert result["model"]["arch"] == "test_resnet"
    status, raw = server.json("POST", "/predict", data, {"Content-Type": "image/jpeg"})
    assert status == 200 and raw["top"] == result["top"]
    status, health = server.json("GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["mean_batch"] >= 1
    status, info = server.json("GET", "/model")
    assert status == 200 and len(info["classes"]) == 10 and info["size"] == [128, 96]
    assert info["metrics"]["error_rate"] >= 0
    status, page, kind = server.request("GET", "/")
    assert status == 200 and kind.startswith("text/html")
    assert b"http://" not in page and b"https://" not in page  # no CDN: works offline
    status, docs, _ = server.request("GET", "/docs")
    assert status == 200 and b"swagger" in docs.lower()


def test_explain_returns_pngs_of_the_input_size(server, photo):
    body, headers = _multipart(photo.read_bytes())
    status, result = server.json("POST", "/predict?explain=1", body, headers)
    assert status == 200, result
    for key in ("overlay_png", "heatmap_png", "input_png"):
        image = Image.open(io.BytesIO(base64.b64decode(result[key])))
        assert image.size == (96, 128)  # (width, height) of the model's 128x96 input


def test_hardening(server, tmp_path):
    big = b"\xff\xd8" + b"0" * (2 * 2**20)
    status, result = server.json("POST", "/predict", big, {"Content-Type": "image/jpeg"})
    assert status == 413 and "limit" in result["detail"]
    # a chunked upload without a length is cut off as soon as it passes the limit
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.putrequest("POST", "/predict")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    chunk = b"0" * 2**16
    try:
        for _ in range(64):  # 4 MB offered
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        connection.send(b"0\r\n\r\n")
    except OSError:
        pass  # the server may close the connection once it has answered
    assert connection.getresponse().status == 413
    connection.close()
    status, result = server.json("POST", "/predict", b"hello, not a picture", {})
    assert status == 415, result
    gif = io.BytesIO()
    Image.new("RGB", (64, 64)).save(gif, "GIF")
    assert server.json("POST", "/predict", gif.getvalue(), {})[0] == 415
    jpeg = io.BytesIO()
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(jpeg, "JPEG")
    status, result = server.json("POST", "/predict", jpeg.getvalue()[:400], {})
    assert status == 400 and "truncated" in result["detail"]
    bomb = io.BytesIO()
    Image.new("1", (10000, 9000)).save(bomb, "PNG")  # 90M pixels in a few kB
    status, result = server.json("POST", "/predict", bomb.getvalue(), {})
    assert status == 400 and "bomb" in result["detail"]
    assert server.json("POST", "/predict", b"", {})[0] == 400
    for path in ("/../../etc/passwd", "/static/../../etc/passwd", "/page.html", "/app.py"):
        assert server.request("GET", path)[0] == 404


def test_inflight_limit_answers_503(trained_run, photo):
    slow = Server(trained_run, "--max-inflight", "1", "--batch-wait-ms", "1500")
    try:
        data = photo.read_bytes()
        first: list = []
        worker = threading.Thread(
            target=lambda: first.append(slow.json("POST", "/predict", data, {})[0])
        )
        worker.start()
        time.sleep(0.5)  # the first image waits in the batch window
        status, result = slow.json("POST", "/predict", data, {})
        worker.join()
        assert status == 503 and "busy" in result["detail"]
        assert first == [200]
    finally:
        slow.stop()


def test_worker_processes_share_the_cores(server, photo):
    """--workers 2 --threads 1: both processes answer as the single server does, each model
    on one thread, and stopping the server stops them all."""
    data = photo.read_bytes()
    workers = Server(server.model, "--workers", "2", "--threads", "1")
    try:
        assert workers.json("GET", "/health")[1]["threads"] == 1
        expected = server.json("POST", "/predict", data, {})[1]["top"]
        for _ in range(6):
            top = workers.json("POST", "/predict", data, {})[1]["top"]
            assert [t["label"] for t in top] == [t["label"] for t in expected]
            for got, want in zip(top, expected, strict=True):  # one thread sums in another order
                assert got["prob"] == pytest.approx(want["prob"], abs=1e-5)
    finally:
        workers.stop()
    with pytest.raises(OSError):
        workers.request("GET", "/health")


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_binds_to_loopback_by_default(server):
    """The listening socket is 127.0.0.1's, as the kernel reports it (/proc/net/tcp)."""
    listening = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if state == "0A" and int(port, 16) == server.port:  # 0A: LISTEN
            listening.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    assert listening == ["127.0.0.1"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium: install Debian's chromium package (apt-get install chromium) "
    "to run the browser test; .ci/run does this",
)
def test_page_in_a_headless_browser(server, photo, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone screen
        page.goto(f"http://127.0.0.1:{server.port}/")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#result", state="visible", timeout=60_000)
        page.wait_for_function("document.getElementById('heat').naturalWidth > 0")
        diagnosis = page.inner_text("#diagnosis")
        assert diagnosis and len(page.query_selector_all(".bar")) == 3
        assert page.eval_on_selector("#heat", "img => img.naturalHeight") == 128
        page.fill("#opacity", "20")
        assert page.eval_on_selector("#heat", "img => img.style.opacity") == "0.2"
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_onnx_runtime_serves_the_same_diagnosis(server, trained_run, photo, tmp_path):
    from cropdoc.inference.export import export_onnx

    onnx_file = export_onnx(trained_run, tmp_path / "model.onnx")["onnx"]
    body, headers = _multipart(photo.read_bytes())
    onnx_server = Server(Path(onnx_file), "--runtime", "onnx")
    try:
        status, result = onnx_server.json("POST", "/predict", body, headers)
        assert status == 200 and result["runtime"] == "onnx"
        torch_result = server.json("POST", "/predict", body, headers)[1]
        assert [t["label"] for t in result["top"]] == [t["label"] for t in torch_result["top"]]
        for got, want in zip(result["top"], torch_result["top"], strict=True):
            assert got["prob"] == pytest.approx(want["prob"], abs=1e-4)
        status, refused = onnx_server.json("POST", "/predict?explain=1", body, headers)
        assert status == 400 and "torch runtime" in refused["detail"]
        assert onnx_server.json("GET", "/model")[1]["explain"] is False
    finally:
        onnx_server.stop()
