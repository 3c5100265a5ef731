"""Adapting a model to a new site: from a few labelled photos (its classes kept, its parent
recorded) and from unlabelled photos (batch-norm statistics only)."""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import shutil
import time
from pathlib import Path

import cli_process
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from cropdoc.core.errors import UserError
from cropdoc.testing import free_port

JPEG = {"Content-Type": "image/jpeg"}


def site_photos(demo_data: Path, out: Path, classes: list[str], labelled: bool = True) -> Path:
    """The demo photos of ``classes`` as another site takes them: warmer light, darker.
    Labelled: ``out/<class>/``; else loose in ``out``."""
    for label in classes:
        for path in sorted((demo_data / "train_images" / label).glob("*.jpg")):
            pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
            pixels = np.clip(pixels * [1.0, 0.8, 0.55], 0, 255).astype(np.uint8)
            folder = out / label if labelled else out
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{label}-{path.name}", quality=90)
    return out


@pytest.fixture(scope="module")
def parent(demo_data, tmp_path_factory) -> Path:
    """A test_resnet run on the demo photos (the run folder, bundle and training photos),
    made once for this file; no test changes it."""
    from cropdoc.config import TrainConfig
    from cropdoc.engine.trainer import train
    from cropdoc.testing import TINY_TRAINING

    root = tmp_path_factory.mktemp("parent")
    settings = dict(cache=str(root / "cache"), out=str(root / "run"))
    train(TrainConfig(**TINY_TRAINING, data=str(demo_data), **settings))
    return root / "run"


def test_adapting_keeps_the_classes_trains_on_and_records_the_parent(parent, demo_data, tmp_path):
    from cropdoc import BundleMeta, adapt, predict

    classes = list(BundleMeta.read(parent).classes)
    site = site_photos(demo_data, tmp_path / "site", classes[:2])
    result = adapt(parent, site, tmp_path / "adapted", epochs=2, mix=1.0, seed=3)

    meta = BundleMeta.read(tmp_path / "adapted")
    assert list(meta.classes) == classes  # the classes the site lacks are kept
    adapted = meta.extra["adapted"]
    parent_weights = (parent / "model.safetensors").read_bytes()
    assert adapted["parent_sha256"] == hashlib.sha256(parent_weights).hexdigest()
    assert adapted["kind"] == "labelled"
    # 3 photos a class: 1 validated on, 2 trained on; as many of the parent's mixed in
    assert adapted["photos"] == {"train": 4, "valid": 2, "parent_mixed": 4}
    rows = list(csv.DictReader((tmp_path / "adapted" / "adapt.csv").open()))
    assert len(rows) == 10
    mixed = [r for r in rows if not Path(r["path"]).is_relative_to(site)]
    assert len(mixed) == 4 and {r["split"] for r in mixed} == {"train"}
    assert {r["label"] for r in rows if r not in mixed} == set(classes[:2])
    assert result["epochs"] == 2 and result["train_images"] == 8

    # the weights moved from the parent's, and the model answers with the parent's classes
    before = load_file(parent / "model.safetensors")
    after = load_file(tmp_path / "adapted" / "model.safetensors")
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert meta.trust.fitted and meta.trust.ood_method
    photo = next((site / classes[0]).glob("*.jpg"))
    found = predict([tmp_path / "adapted"], [photo])
    assert found.classes == classes and found.probs.shape == (1, len(classes))


def test_adapting_refuses_a_class_the_model_does_not_know(parent, demo_data, tmp_path):
    from cropdoc import BundleMeta, adapt

    classes = list(BundleMeta.read(parent).classes)
    site = site_photos(demo_data, tmp_path / "site", classes[:1])
    (site / classes[0]).rename(site / "rust")
    with pytest.raises(UserError, match="classes the model does not know: rust"):
        adapt(parent, site, tmp_path / "adapted", epochs=1)
    (site / "rust").rename(site / classes[0])
    with pytest.raises(UserError, match=f"photos of one class \\({classes[0]}\\): give --mix"):
        adapt(parent, site, tmp_path / "adapted", epochs=1)
    assert not (tmp_path / "adapted").exists()


def test_mixing_needs_the_parents_run(parent, demo_data, tmp_path):
    from cropdoc import BundleMeta, adapt

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name in ("model.json", "model.safetensors"):
        (bundle / name).write_bytes((parent / name).read_bytes())
    classes = list(BundleMeta.read(parent).classes)
    site = site_photos(demo_data, tmp_path / "site", classes[:2])
    with pytest.raises(UserError, match="--mix needs the parent's training photos"):
        adapt(bundle, site, tmp_path / "adapted", epochs=1, mix=0.5)


def test_norm_adaptation_changes_only_the_norm_statistics(parent, demo_data, tmp_path):
    site = site_photos(demo_data, tmp_path / "site", ["blast", "normal", "tungro"], False)
    out = tmp_path / "norms"
    done = cli_process.run("adapt-norms", parent, site, "--out", out, "--json", check=True)
    result = json.loads(done.stdout)
    assert result["adapted"]["kind"] == "norms"
    assert result["adapted"]["photos"] == {"unlabelled": 9}

    before = load_file(parent / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    statistics = {k for k in before if k.endswith(("running_mean", "running_var"))}
    assert statistics, "test_resnet has batch-norm layers"
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed - {k for k in before if k.endswith("num_batches_tracked")} == statistics

    parent_trust = json.loads((parent / "model.json").read_text())["trust"]
    trust = json.loads((out / "model.json").read_text())["trust"]
    assert trust["temperature"] == parent_trust["temperature"]
    assert trust["ood_threshold"] != parent_trust["ood_threshold"]


def test_norm_adaptation_refuses_an_existing_bundle(parent, demo_data, tmp_path):
    from cropdoc import adapt_norms

    site = site_photos(demo_data, tmp_path / "site", ["blast"], False)
    before = (parent / "model.json").read_bytes()
    with pytest.raises(UserError, match="already holds a bundle: choose another --out"):
        adapt_norms(parent, site, parent)
    assert (parent / "model.json").read_bytes() == before


# -- the loop from the field: serve keeps what it did not know, a page labels it ----------


def odd_photo(seed: int) -> bytes:
    """A photo of no leaf (coloured blocks): out of scope or uncertain for any leaf model."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((25, 25, 1), np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def start(command: list[str], port: int, log: Path, cwd: Path | None = None):
    """A cropdoc server in a child process, once ``/health`` answers."""
    server = cli_process.start(*command, "--port", port, out=log, cwd=cwd)
    deadline = time.time() + 120
    while True:
        assert server.poll() is None, log.read_text()
        try:
            if request(port, "GET", "/health")[0] == 200:
                return server
        except OSError:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.2)


def request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_serve_keeps_nothing_without_the_option(parent, tmp_path):
    before = folder_digest(parent)
    port = free_port()
    server = start(["serve", str(parent)], port, tmp_path / "serve.log", cwd=tmp_path)
    try:
        for seed in range(3):
            status, _ = request(port, "POST", "/predict", odd_photo(seed), JPEG)
            assert status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert [p.name for p in tmp_path.iterdir()] == ["serve.log"]
    assert folder_digest(parent) == before


@pytest.mark.slow
def test_serve_keeps_what_it_did_not_know_and_the_labelling_page_saves_each_click(parent, tmp_path):
    from cropdoc import BundleMeta, adapt
    from cropdoc.adaptation.queue import KEPT_VERDICTS

    queue, port = tmp_path / "queue", free_port()
    options = ["--keep-uploads", str(queue), "--keep-sample", "0", "--queue-mb", "0.05"]
    server = start(["serve", str(parent), *options], port, tmp_path / "serve.log")
    try:
        answers = []
        for seed in range(5):
            status, body = request(port, "POST", "/predict", odd_photo(seed), JPEG)
            assert status == 200
            answers.append(json.loads(body))
        assert {a["verdict"] for a in answers} <= set(KEPT_VERDICTS)
        # the same photo again, and a bad upload: nothing more is kept
        assert request(port, "POST", "/predict", odd_photo(0), JPEG)[0] == 200
        assert request(port, "POST", "/predict", b"not an image", JPEG)[0] == 415
        records = sorted(queue.glob("*.json"))
        records = [json.loads(p.read_text()) for p in records if p.name != "queue.json"]
        assert len(records) == 5 and len(list(queue.glob("*.jpg"))) == 5
        kept = {r["answer"]["ood_score"]: r for r in records}
        for answer in answers:  # each kept with the answer it got
            record = kept[answer["ood_score"]]
            assert record["reason"] == answer["verdict"]
            assert record["answer"] == {k: answer[k] for k in record["answer"]}
            assert Image.open(queue / record["photo"]).size == (96, 72)  # as the model read it

        # full: earlier photos (the user's own file too) stay as they are, nothing is kept
        (queue / "earlier.bin").write_bytes(b"x" * 40_000)
        before = folder_digest(queue)
        assert request(port, "POST", "/predict", odd_photo(9), JPEG)[0] == 200
        assert folder_digest(queue) == before
        assert "is full" in (tmp_path / "serve.log").read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)

    port = free_port()
    page = start(["label", str(queue)], port, tmp_path / "label.log")
    try:
        html = request(port, "GET", "/")[1].decode()
        token = {"X-Cropdoc-Token": html.split('name="cropdoc-token" content="')[1].split('"')[0]}
        as_json = {"Content-Type": "application/json", **token}
        listing = json.loads(request(port, "GET", "/photos")[1])
        assert len(listing["photos"]) == 5 and listing["classes"] == list(
            BundleMeta.read(parent).classes
        )
        first, second = listing["classes"][:2]
        click = json.dumps({"photo": 0, "decision": "relabel", "label": first}).encode()
        status, _ = request(port, "POST", "/decision", click, {**as_json, "Origin": "http://e.x"})
        assert status == 403 and not (queue / "decisions.csv").exists()
        decisions = [("relabel", first), ("relabel", first), ("relabel", second)]
        decisions += [("keep", ""), ("drop", "")]
        for n, (decision, label) in enumerate(decisions):
            click = json.dumps({"photo": n, "decision": decision, "label": label}).encode()
            status, body = request(port, "POST", "/decision", click, as_json)
            assert status == 200, body
            assert json.loads(body)["saved"] == n + 1  # saved at once
            assert len((queue / "decisions.csv").read_text().splitlines()) == n + 2
    finally:
        page.terminate()
        page.wait(timeout=30)
    rows = list(csv.DictReader((queue / "labels.csv").open()))
    names = [p["name"] for p in listing["photos"]]
    expected = {names[0]: first, names[1]: first, names[2]: second}
    expected[names[3]] = listing["photos"][3]["top"][0]["label"]  # keep: the model's answer
    assert {r["path"]: r["label"] for r in rows} == expected
    # the manifest is a dataset adapt reads (one photo of each class of two validated on)
    result = adapt(parent, queue / "labels.csv", tmp_path / "adapted", epochs=1, mix=1.0)
    assert result["adapted"]["photos"]["train"] + result["adapted"]["photos"]["valid"] == 4


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium: install Debian's chromium package (apt-get install chromium) "
    "to run the browser test; .ci/run does this",
)
def test_labelling_page_round_trip_in_a_headless_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    from cropdoc.adaptation.queue import Queue

    classes = ["blast", "brown_spot", "normal"]
    queue = Queue.open(tmp_path / "queue", 10, 0.0, {"arch": "test_resnet", "classes": classes})
    for seed in range(3):
        pixels = np.asarray(Image.open(io.BytesIO(odd_photo(seed))))
        top = [{"label": classes[seed], "prob": 0.5}, {"label": classes[seed - 1], "prob": 0.3}]
        assert queue.keep(pixels, {"verdict": "uncertain", "top": top}, "uncertain")
    port = free_port()
    server = start(["label", str(tmp_path / "queue")], port, tmp_path / "label.log")
    try:
        listing = json.loads(request(port, "GET", "/photos")[1])
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector(".photo")
            page.wait_for_function(
                "[...document.images].every(i => i.complete && i.naturalWidth > 0)"
            )
            assert len(page.query_selector_all(".photo")) == 3
            page.click('.photo[data-photo="0"] button[data-decision="keep"]')
            page.select_option('.photo[data-photo="1"] select', "normal")
            page.click('.photo[data-photo="1"] button[data-decision="relabel"]')
            page.click('.photo[data-photo="2"] button[data-decision="drop"]')
            page.wait_for_function(
                "document.getElementById('status').textContent.startsWith('3 decision')"
            )
            assert page.inner_text('.photo[data-photo="1"] .state') == "labelled normal"
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    names = [photo["name"] for photo in listing["photos"]]
    expected = {names[0]: listing["photos"][0]["top"][0]["label"], names[1]: "normal"}
    rows = csv.DictReader((tmp_path / "queue" / "labels.csv").open())
    assert {row["path"]: row["label"] for row in rows} == expected
