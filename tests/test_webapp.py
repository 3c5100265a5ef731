"""export --format web: the offline web app built from a tiny run, served from 127.0.0.1,
loaded in headless Chromium, then reloaded with the server stopped and the network off: it
still diagnoses, with ONNX Runtime's probabilities, and asks no other host for anything."""

from __future__ import annotations

import functools
import http.server
import io
import json
import shutil
import threading

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cropdoc.core.errors import UserError

pytestmark = pytest.mark.slow  # exports a model and drives a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
         ".webmanifest": "application/manifest+json"}  # fmt: skip


@pytest.fixture(scope="module")
def ort_web():
    from cropdoc.inference.webapp import ort_web_dir

    try:
        return ort_web_dir()
    except UserError as exc:  # no npm, or npm's registry out of reach
        pytest.skip(f"onnxruntime-web is not available here: {exc}")


@pytest.fixture(scope="module")
def app(trained_run, ort_web, tmp_path_factory):
    """The web app of a copy of the trained run (its bundle), two photos small enough to be
    decoded as they are (no shrinking, so the browser's pixels are Pillow's) and a large,
    blurred one."""
    from cropdoc.inference.webapp import export_web

    root = tmp_path_factory.mktemp("webapp")
    for name in ("model.json", "model.safetensors", "trust.safetensors"):
        shutil.copyfile(trained_run / name, root / name)
    result = export_web(root, ort_web=ort_web)
    leaf = sorted((trained_run.parent / "data" / "train_images" / "blast").glob("*.jpg"))[0]
    # 128 px a side: the cache size (decoded as it is) and the quality checks' smallest side
    small = Image.open(leaf).convert("RGB").resize((128, 128))
    photos = root / "photos"
    photos.mkdir()
    small.save(photos / "leaf.png")
    small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "mirrored.png")
    big = Image.open(leaf).convert("RGB")  # 480x640: the quality checks need a real photo
    big.filter(ImageFilter.GaussianBlur(3)).save(photos / "blurred.png")
    return root, result, photos


def _static_server(folder):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium")
def test_the_app_diagnoses_offline_as_onnx_runtime_does(app):
    from playwright.sync_api import sync_playwright

    from cropdoc.inference.onnx_runtime import predict_onnx

    root, result, photos = app
    assert {"index.html", "sw.js", "app.json", "model.onnx", "manifest.webmanifest"} <= set(
        result["files"]
    )
    settings = json.loads((root / "app" / "app.json").read_text())
    assert settings["classes"] and settings["temperature"] > 0
    server = _static_server(root / "app")
    origin = f"127.0.0.1:{server.server_port}"
    hosts, answers = set(), {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context()
        page = context.new_page()
        page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
        page.goto(f"http://{origin}/")
        page.wait_for_selector("body[data-ready='1']", timeout=90_000)
        page.evaluate("navigator.serviceWorker.ready.then(() => true)")
        server.shutdown()  # from here on nothing answers: the page lives on its cache
        server.server_close()
        context.set_offline(True)
        page.reload()
        page.wait_for_selector("body[data-ready='1']", timeout=90_000)
        backend = page.evaluate("window.cropdoc.backend")
        for name in ("leaf.png", "blurred.png"):
            page.evaluate("window.cropdocLast = undefined")
            page.set_input_files("#file", str(photos / name))
            page.wait_for_function("window.cropdocLast !== undefined", timeout=60_000)
            answers[name] = page.evaluate("window.cropdocLast")
        shown = page.inner_text("#diagnosis")
        page.evaluate("window.cropdocLast = undefined")  # three photos of one plant
        three = [str(photos / n) for n in ("leaf.png", "mirrored.png", "blurred.png")]
        page.set_input_files("#file", three)
        page.wait_for_function("window.cropdocLast !== undefined", timeout=60_000)
        fused = page.evaluate("window.cropdocLast")
        browser.close()
    assert hosts == {origin}  # the app asked its own host only
    assert backend in ("WebAssembly", "WebGPU")
    names = ("leaf.png", "blurred.png")
    expected = predict_onnx(root / "app" / "model.onnx", [photos / name for name in names])
    rows = expected.top(3)
    # decoded as it is, the photo gives the browser Pillow's pixels: the same probabilities;
    # a photo shrunk to the model's cache size is shrunk by the page as Pillow's BOX filter
    # does (not by the browser's own resampling, which changes with its version): the same
    for n, (name, within) in enumerate(zip(names, (1e-4, 1e-4), strict=True)):
        got = answers[name]
        assert np.abs(np.array(got["probs"]) - expected.probs[n]).max() < within, name
        assert abs(got["ood_score"] - expected.ood[n]) < 50 * within
        assert got["verdict"] == rows[n]["verdict"] and got["advice"] == rows[n]["advice"]
        assert got["quality"] == rows[n]["quality"]
    assert answers["blurred.png"]["verdict"] == "retake" and shown.startswith("blurred:")
    assert answers["leaf.png"]["verdict"] != "retake"
    # the page fuses several photos as cropdoc.inference.fusion does
    from cropdoc.inference.fusion import fuse

    group = predict_onnx(root / "app" / "model.onnx", three)
    names = [p.split("/")[-1] for p in group.paths]
    expected = fuse(names, group.probs, group.ood, group.problems, group.min_confidence)
    assert fused["used"] == expected.used == ["leaf.png", "mirrored.png"]
    assert [x["photo"] for x in fused["left_out"]] == ["blurred.png"]
    assert np.abs(np.array(fused["probs"]) - expected.probs).max() < 1e-4
    assert fused["verdict"] == expected.verdict
    # the page's answers carry every field of predict's and serve's (ANSWER_KEYS)
    from cropdoc.inference.predictions import ANSWER_KEYS

    for got in (*answers.values(), fused):
        assert set(ANSWER_KEYS) <= set(got), sorted(set(ANSWER_KEYS) - set(got))


def test_serve_serves_the_app_at_app(app):
    from test_serve import Server

    root, _, _ = app
    server = Server(root)
    try:
        status, page, kind = server.request("GET", "/app/")
        assert status == 200 and kind.startswith("text/html") and b"app.js" in page
        status, _, kind = server.request("GET", "/app/ort/ort.webgpu.min.mjs")
        assert status == 200 and kind.startswith("text/javascript")
        status, _, kind = server.request("GET", "/app/ort/ort-wasm-simd-threaded.asyncify.wasm")
        assert status == 200 and kind == "application/wasm"
    finally:
        server.stop()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium")
def test_the_app_keeps_what_it_did_not_know_offline_for_a_server_that_keeps(app, tmp_path):
    """Served by ``serve --keep-uploads``, the app keeps on the device a photo it answered
    uncertain or out of scope while offline, and sends it once the network is back; the
    server keeps it by its own answer."""
    from playwright.sync_api import sync_playwright
    from test_adapt import odd_photo
    from test_serve import Server

    root, _, _ = app
    queue = tmp_path / "queue"
    Image.open(io.BytesIO(odd_photo(3))).save(tmp_path / "odd.png")  # decoded alike
    server = Server(root, "--keep-uploads", str(queue), "--keep-sample", "0")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            context = browser.new_context()
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{server.port}/app/")
            page.wait_for_selector("body[data-ready='1']", timeout=90_000)
            context.set_offline(True)
            page.set_input_files("#file", str(tmp_path / "odd.png"))
            page.wait_for_function("window.cropdocLast !== undefined", timeout=60_000)
            answer = page.evaluate("window.cropdocLast")
            assert answer["verdict"] in ("uncertain", "out_of_scope")
            assert page.evaluate("window.cropdoc.pending()") == 1
            assert not list(queue.glob("*.jpg"))  # nothing reached the server yet
            context.set_offline(False)
            page.wait_for_function("window.cropdoc.pending().then(n => n === 0)", timeout=60_000)
            browser.close()
        kept = [json.loads(p.read_text()) for p in queue.glob("*.json") if p.name != "queue.json"]
        assert len(kept) == 1 and kept[0]["reason"] == answer["verdict"]
        assert kept[0]["answer"]["ood_score"] == pytest.approx(answer["ood_score"], rel=0.01)
    finally:
        server.stop()
