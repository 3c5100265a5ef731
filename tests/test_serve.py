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
import tempfile
import threading
import time
import uuid
from pathlib import Path

import cli_process
import numpy as np
import pytest
from PIL import Image, ImageFilter

from cropdoc.testing import free_port

pytestmark = pytest.mark.slow  # trains or serves a model in other processes


class Server:
    """``cropdoc serve`` in a child process, stopped at the end; ``fresh``: started as
    ``python -m cropdoc``, for servers whose workers are interpreters of their own."""

    def __init__(self, model: Path, *options: str, log: Path | None = None, fresh=False):
        self.model, self.port = model, free_port()
        self.log = log or Path(tempfile.mkstemp(suffix=".log")[1])
        command = ("serve", model, "--port", self.port, *options)
        if fresh:
            argv = [sys.executable, "-m", "cropdoc", *map(str, command)]
            with self.log.open("w") as out:
                self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        else:
            self.process = cli_process.start(*command, out=self.log)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("server exited: " + self.log.read_text())
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
    assert result["verdict"] in ("diagnosis", "uncertain", "out_of_scope")
    assert result["confidence"] == result["top"][0]["prob"] and result["ood_score"] >= 0
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
    # no Swagger page (its assets come from a CDN, which fails offline); the schema stays
    assert server.request("GET", "/docs")[0] == 404
    status, schema = server.json("GET", "/openapi.json")
    assert status == 200 and "/predict" in schema["paths"]
    assert server.request("HEAD", "/health")[0] == 200
    # a blurred photo is sent back with the reason, as predict does
    blurred = io.BytesIO()
    Image.open(photo).filter(ImageFilter.GaussianBlur(3)).save(blurred, "JPEG", quality=90)
    status, retake = server.json("POST", "/predict", *_multipart(blurred.getvalue()))
    assert status == 200 and retake["verdict"] == "retake" and retake["quality"] == "blurred"
    assert retake["advice"].startswith("blurred: hold the phone still") and retake["top"]
    assert result["quality"] == ""


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
        connection = http.client.HTTPConnection("127.0.0.1", slow.port, timeout=60)
        worker = threading.Thread(target=lambda: slow.json("POST", "/predict", data, {}))
        worker.start()
        time.sleep(0.5)
        connection.request("POST", "/predict", body=data)
        assert connection.getresponse().getheader("Retry-After") == "1"
        worker.join()
    finally:
        slow.stop()


def test_worker_processes_share_the_cores(server, photo):
    """--workers 2 --threads 1: both processes answer as the single server does, each model
    on one thread, and stopping the server stops them all."""
    data = photo.read_bytes()
    workers = Server(server.model, "--workers", "2", "--threads", "1", fresh=True)
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


def _slow_client(port: int, declared: int = 5_000_000) -> socket.socket:
    """A client that declares a large body, sends 100 bytes of it and stalls."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        + f"Content-Length: {declared}\r\n\r\n".encode()
        + b"\xff" * 100
    )
    return s


def test_slow_uploads_hold_no_slot_and_time_out(trained_run, photo):
    """More stalled uploads than in-flight slots: honest requests still get through, and a
    stalled body is answered 408 once the body timeout has passed."""
    guarded = Server(trained_run, "--max-inflight", "4", "--body-timeout", "3")
    slow = [_slow_client(guarded.port) for _ in range(12)]
    try:
        time.sleep(0.5)
        data = photo.read_bytes()
        for _ in range(5):
            assert guarded.json("POST", "/predict", data, {})[0] == 200
        assert guarded.json("GET", "/health")[1]["inflight"] == 0  # stalled bodies hold none
        answer = b""
        while chunk := slow[0].recv(4096):  # waits for the timeout; the server then closes
            answer += chunk
        answer = answer.decode()
        assert answer.startswith("HTTP/1.1 408") and "took over 3 s" in answer
    finally:
        for s in slow:
            s.close()
        guarded.stop()


def test_crafted_multipart_bodies_are_refused_cheaply(server):
    boundary = "xyz"
    field = f'--{boundary}\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n'.encode()
    many = field * 15_000 + f"--{boundary}--\r\n".encode()  # 800 kB of tiny fields
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, result = server.json("POST", "/predict", many, headers)
    assert status == 400 and "more than 16 parts" in result["detail"]
    body, nested = b"x", ""
    for level in range(2000):  # every part is itself multipart, 2,000 levels deep
        nested = f"b{level}"
        kind = f"multipart/mixed; boundary=b{level - 1}" if level else "text/plain"
        body = f"--{nested}\r\nContent-Type: {kind}\r\n\r\n".encode() + body
        body += f"\r\n--{nested}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={nested}"}
    status, result = server.json("POST", "/predict", body, headers)
    assert status == 400 and "no file" in result["detail"]
    status, result = server.json(
        "POST", "/predict", b"junk", {"Content-Type": "multipart/form-data"}
    )
    assert status == 400 and "boundary" in result["detail"]


def test_a_client_leaving_mid_upload_costs_one_log_line(server):
    before = server.log.read_text()
    for _ in range(3):
        with _slow_client(server.port, declared=100_000) as s:
            s.sendall(b"\xff" * 20_000)
            time.sleep(0.2)
    time.sleep(1)
    new = server.log.read_text()[len(before) :]
    assert new.count("a client left before its upload arrived") == 3
    assert len(new.splitlines()) == 3 and "Traceback" not in new


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--port", "99999"], "--port must be from 1 to 65535"),
        (["--max-upload-mb", "-1"], "--max-upload-mb must be from"),
        (["--max-inflight", "0"], "--max-inflight must be from 1"),
        (["--max-batch", "0"], "--max-batch must be from 1"),
        (["--batch-wait-ms", "-5"], "--batch-wait-ms must be from 0"),
        (["--threads", "0"], "--threads must be from 1"),
        (["--workers", "0"], "--workers must be from 1"),
        (["--runtime", "tpu"], "--runtime must be torch, onnx, openvino or tflite"),
    ],
)
def test_bad_serve_flags_are_one_line_before_serving(trained_run, flags, says):
    done = cli_process.run("serve", trained_run, *flags, timeout=120)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "serving" not in done.stderr


def test_a_port_in_use_is_one_line(server, trained_run):
    done = cli_process.run("serve", trained_run, "--port", server.port, timeout=120)
    assert done.returncode == 2 and f"cannot serve on 127.0.0.1:{server.port}" in done.stderr
    assert done.stderr.count("\n") == 1


def test_other_sites_and_rebinding_names_are_refused(server, photo):
    """A page on another site (foreign Origin) cannot make the server diagnose, and a name
    that resolves to 127.0.0.1 (DNS rebinding: a foreign Host) cannot read it; the page's
    own requests and plain clients (no Origin) still work."""
    body, headers = _multipart(photo.read_bytes())
    status, answer = server.json(
        "POST", "/predict", body, {**headers, "Origin": "http://evil.example"}
    )
    assert status == 403 and "other sites" in answer["detail"]
    for name in ("evil.example", f"evil.example:{server.port}"):
        status, answer = server.json("GET", "/model", headers={"Host": name})
        assert status == 403 and "not this server's name" in answer["detail"]
    same = {**headers, "Origin": f"http://127.0.0.1:{server.port}"}
    assert server.json("POST", "/predict", body, same)[0] == 200
    assert server.json("GET", "/model", headers={"Host": f"localhost:{server.port}"})[0] == 200
    # another port of this machine is another site too
    other = {**headers, "Origin": f"http://127.0.0.1:{server.port + 1}"}
    assert server.json("POST", "/predict", body, other)[0] == 403


def test_openapi_has_no_duplicate_operation_warning(server):
    status, schema = server.json("GET", "/openapi.json")
    assert status == 200 and "/health" in schema["paths"]
    assert "Duplicate Operation ID" not in server.log.read_text()
