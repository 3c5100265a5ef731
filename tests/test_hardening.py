"""Issue #38, each defect reproduced with the command that found it, then shown fixed: the web
export and score touch only their own files, inputs are expanded once, group-by accounts for
every photo, decoding is bounded in bytes, a fused form leaves out a bad part, the in-flight
bound counts photos, NaN never fails open, and bad input is one line (exit 2)."""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path

import cli_process
import numpy as np
import pytest
import torch
from conftest import digest
from PIL import Image

from cropdoc.model.archs import create_model
from cropdoc.model.build import save_bundle

CLASSES = ["blight", "healthy", "rust"]


def cropdoc(*args, cwd=None) -> subprocess.CompletedProcess:
    return cli_process.run(*args, cwd=cwd)


def one_line_refusal(done: subprocess.CompletedProcess, says: str) -> None:
    """Exit 2, the error in one line (the last on stderr) saying ``says``, no traceback."""
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("cropdoc: error:")]
    assert done.returncode == 2, done.stderr
    assert errors == lines[-1:] and says in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def leaf(path: Path, seed: int, size=(160, 140)) -> Path:
    """A leaf-green photo with brown spots, big enough for the quality checks."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((size[1], size[0], 3), np.uint8) + np.array([50, 140, 60], np.uint8)
    for _ in range(6):
        x, y = rng.integers(10, size[0] - 10), rng.integers(10, size[1] - 10)
        pixels[y - 6 : y + 6, x - 6 : x + 6] = (120, 70, 30)
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """test_resnet with random weights, 3 classes at 64 px."""
    torch.manual_seed(0)
    net = create_model("test_resnet", len(CLASSES), pretrained=False).eval()
    meta = dict(arch="test_resnet", classes=CLASSES, size=[64, 64], item_size=[64, 64],
                resize="squish", mean=[0.5] * 3, std=[0.25] * 3, cache_size=128)  # fmt: skip
    return save_bundle(tmp_path_factory.mktemp("hard") / "model", net, meta)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for n in range(6):
        leaf(root / f"plant-{n // 2}" / f"{n}.jpg", n)
    return root


@pytest.fixture(scope="module")
def onnx_model(bundle, tmp_path_factory) -> Path:
    from cropdoc.inference.export import export_onnx

    return Path(export_onnx(bundle, tmp_path_factory.mktemp("onnx") / "model.onnx")["onnx"])


def modes_and_bytes(folder: Path) -> dict:
    """Every entry under ``folder`` (links not followed): its mode and, for files, sha256."""
    found = {}
    for path in sorted(folder.rglob("*")):
        info = os.lstat(path)
        found[str(path.relative_to(folder))] = (info.st_mode, digest(path.parent).get(path.name))
    return found


# 1. export --format web writes, changes and publishes only its own files ----------------


@pytest.fixture(scope="module")
def ort_web(tmp_path_factory) -> Path:
    """Stand-ins for onnxruntime-web's dist files: the export only copies them."""
    from cropdoc.inference.webapp import ORT_FILES

    folder = tmp_path_factory.mktemp("ort")
    for name in ORT_FILES:
        (folder / name).write_text(f"// {name}\n")
    return folder


@pytest.mark.slow
def test_web_export_refuses_a_users_folder_and_changes_nothing(bundle, ort_web, tmp_path):
    user = tmp_path / "site"
    user.mkdir()
    (user / "index.html").write_text("<h1>my own page</h1>")
    key = user / "private.key"
    key.write_text("secret")
    key.chmod(0o600)
    outside = tmp_path / "outside.key"
    outside.write_text("also secret")
    outside.chmod(0o600)
    (user / "link.key").symlink_to(outside)
    before, outside_mode = modes_and_bytes(user), os.lstat(outside).st_mode
    done = cropdoc("export", bundle, "--format", "web", "--out", user, "--ort-web", ort_web)
    one_line_refusal(done, "holds files that cropdoc export did not write")
    assert modes_and_bytes(user) == before and os.lstat(outside).st_mode == outside_mode
    assert not (user / "model.onnx").exists()

    a_file = tmp_path / "app.txt"
    a_file.write_text("x")
    one_line_refusal(
        cropdoc("export", bundle, "--format", "web", "--out", a_file, "--ort-web", ort_web),
        "is a file",
    )
    squatted = tmp_path / "squatted"
    squatted.mkdir()
    (squatted / "ort").write_text("a file where the export wants a folder")
    one_line_refusal(
        cropdoc("export", bundle, "--format", "web", "--out", squatted, "--ort-web", ort_web),
        "did not write (such as ort)",
    )
    assert sorted(p.name for p in squatted.iterdir()) == ["ort"]


@pytest.mark.slow
def test_web_export_lists_and_publishes_exactly_its_files(bundle, ort_web, tmp_path):
    from test_serve import Server

    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.json", "model.safetensors"):
        (run / name).write_bytes((bundle / name).read_bytes())
    server = Server(run)  # started before the app exists: it is served once exported
    try:
        assert server.request("GET", "/app/")[0] == 404
        done = cropdoc("export", run, "--format", "web", "--ort-web", ort_web)
        assert done.returncode == 0, done.stderr
        app = run / "app"
        listed = json.loads((app / "files.json").read_text())["files"]
        on_disk = sorted(str(p.relative_to(app)) for p in app.rglob("*") if p.is_file())
        assert sorted([*listed[1:], "files.json"]) == on_disk and listed[0] == "."
        assert all(stat.S_IMODE((app / f).stat().st_mode) == 0o644 for f in on_disk)
        status, body, kind = server.request("GET", "/app/")
        assert status == 200 and b"<html" in body.lower()
        status, _, kind = server.request("GET", "/app/ort/ort.webgpu.min.mjs")
        assert status == 200 and kind.startswith("text/javascript")
        headers = _headers(server.port, "/app/app.json")
        assert headers["x-content-type-options"] == "nosniff" and "cache-control" in headers
        # a file put there later, and a link out of the folder, are not the app's
        (app / "private.key").write_text("secret")
        (tmp_path / "outside.key").write_text("also secret")
        (app / "icon.png").unlink()
        (app / "icon.png").symlink_to(tmp_path / "outside.key")
        for path in ("/app/private.key", "/app/icon.png", "/app/../model.json"):
            assert server.request("GET", path)[0] == 404, path
        # its own earlier output is exported again, but not while a file of someone else's
        # or a link sits in it
        done = cropdoc("export", run, "--format", "web", "--ort-web", ort_web)
        one_line_refusal(done, "did not write (such as icon.png)")
        assert (tmp_path / "outside.key").read_text() == "also secret"
        (app / "private.key").unlink()
        (app / "icon.png").unlink()
        again = cropdoc("export", run, "--format", "web", "--ort-web", ort_web)
        assert again.returncode == 0, again.stderr
        assert (app / "icon.png").is_file() and not (app / "icon.png").is_symlink()
    finally:
        server.stop()


def _headers(port: int, path: str) -> dict:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return {k.lower(): v for k, v in response.getheaders()}


# 2. score --out touches only its own files ----------------------------------------------


def test_score_refuses_a_folder_it_did_not_write(bundle, photos, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / ".notes.tmp").write_text("a draft of mine")
    (folder / "_summary.json").write_text('{"mine": true}')
    before = digest(folder)
    done = cropdoc("score", bundle, photos, "--out", folder, "--workers", 1)
    one_line_refusal(done, "holds files that cropdoc score did not write")
    assert digest(folder) == before


# 3. score expands its inputs once, into predict's rows ----------------------------------


def _loopy_inputs(photos: Path, tmp_path: Path) -> Path:
    """A CSV naming a photo twice, a folder, another CSV, a missing path without an image
    extension, and a folder holding a link back to itself."""
    (tmp_path / "other.csv").write_text(f"path\n{photos / 'plant-0' / '0.jpg'}\n")
    loop = tmp_path / "looped"
    loop.mkdir()
    leaf(loop / "x.jpg", 9)
    (loop / "again").symlink_to(loop, target_is_directory=True)
    first, second = photos / "plant-0" / "0.jpg", photos / "plant-1" / "2.jpg"
    rows = [first, second, first, photos / "plant-2", tmp_path / "other.csv"]
    rows.append(tmp_path / "no-such-file")
    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + "".join(f"{p}\n" for p in rows))
    return listing


def test_score_scores_each_listed_photo_once_as_predict_does(bundle, photos, tmp_path):
    import pyarrow.parquet as pq

    listing = _loopy_inputs(photos, tmp_path)
    loop = tmp_path / "looped"
    done = cropdoc("score", bundle, listing, loop, "--out", tmp_path / "out", "--workers", 1,
                   "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    table = pq.read_table(tmp_path / "out" / "part-000000.parquet").to_pydict()
    distinct = 2 + 3 + 1  # two photos, a folder row, a CSV row, a missing row; x.jpg once
    assert len(table["path"]) == summary["photos"] == distinct and summary["duplicates"] == 1
    errors = dict(zip(table["path"], table["error"], strict=True))
    assert errors[str(photos / "plant-2")] == "a folder, not an image file"
    assert "not an image" in errors[str(tmp_path / "other.csv")]
    assert errors[str(tmp_path / "no-such-file")] == "file not found"
    predicted = json.loads(cropdoc("predict", bundle, listing, loop, "--json").stdout)
    rows = [r["path"] for r in predicted["predictions"]] + [e["path"] for e in predicted["errors"]]
    assert sorted(rows) == sorted(table["path"])


# 4. predict --group-by accounts for every listed photo ----------------------------------


def test_group_by_keeps_both_plants_of_a_shared_photo_and_every_photo(bundle, photos, tmp_path):
    shared, other = photos / "plant-0" / "0.jpg", photos / "plant-0" / "1.jpg"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    rows = [(shared, "A"), (other, "A"), (shared, "B"), (broken, "B"), (broken, "C"),
            (tmp_path / "gone.jpg", "C")]  # fmt: skip
    listing = tmp_path / "plants.csv"
    listing.write_text("path,plant\n" + "".join(f"{p},{g}\n" for p, g in rows))
    out = tmp_path / "plants-out.csv"
    done = cropdoc("predict", bundle, listing, "--group-by", "plant", "--out", out, "--json")
    assert done.returncode == 0, done.stderr
    groups = {g["group"]: g for g in json.loads(done.stdout)["groups"]}
    assert list(groups) == ["A", "B", "C"]
    for name, group in groups.items():
        listed = {str(p) for p, g in rows if g == name}
        accounted = set(group["used"]) | {x["path"] for x in group["left_out"]}
        assert accounted == listed and group["photos"] == len(listed), name
    assert str(shared) in groups["A"]["used"] and str(shared) in groups["B"]["used"]
    assert groups["B"]["left_out"][0]["why"].startswith("unreadable: not an image")
    assert groups["C"]["verdict"] == "retake" and groups["C"]["used"] == []
    with open(out, newline="") as f:
        assert [r["group"] for r in csv.DictReader(f)] == ["A", "B", "C"]


# 5. decoding is bounded in bytes --------------------------------------------------------


def png_rgba16(path: Path, width: int, height: int) -> Path:
    """A 16-bit RGBA PNG written a row at a time (a few hundred kB for 4000x4000)."""
    row = b"\x00" + b"\x40\x00\x80\x00\x20\x00\xff\xff" * width
    packer = zlib.compressobj(6)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


def _peak_rss_mb(path: Path, budget_mb: int) -> tuple[str, float]:
    """What decoding ``path`` within ``budget_mb`` says, and the memory it added (MB): the
    peak resident memory of a fresh process (VmHWM, which, unlike ``ru_maxrss``, does not
    carry the parent's peak across exec), after its imports and after the decode."""
    code = f"""
import re
from pathlib import Path
from cropdoc.data.images import ImageError, read_image
def peak():
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1]) / 1024
start = peak()
try:
    read_image({str(path)!r}, max_bytes={budget_mb} * 2**20)
    said = "decoded"
except ImageError as exc:
    said = str(exc)
print(said)
print(peak() - start)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    said, added = done.stdout.strip().splitlines()
    return said, float(added)


def test_a_decode_over_budget_is_refused_before_its_memory_is_spent(tmp_path):
    big = png_rgba16(tmp_path / "big.png", 4000, 4000)  # under the pixel cap, 61 MB decoded
    assert big.stat().st_size < 400_000
    said, added = _peak_rss_mb(big, 16)
    assert said.startswith("too large to decode: 4000x4000 RGBA") and "16 MB" in said
    assert added < 30, added
    said, added = _peak_rss_mb(big, 512)  # what the budget saved
    assert said == "decoded" and added > 150, added


# 6-8. serve: a fused form's bad part, the in-flight bound in photos, NaN ------------------


def form(parts: list[tuple[str, bytes]]) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in parts
    )
    return body + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"
    }


@pytest.mark.slow
def test_serve_fuses_around_a_bad_part_and_bounds_photos_in_flight(bundle, photos, tmp_path):
    from test_serve import Server

    good = [(p.name, p.read_bytes()) for p in sorted((photos / "plant-0").glob("*.jpg"))]
    big = png_rgba16(tmp_path / "big.png", 4000, 4000).read_bytes()
    server = Server(bundle, "--max-inflight", "3", "--batch-wait-ms", "1500",
                    "--max-decode-mb", "16")  # fmt: skip
    try:
        body, headers = form([*good, ("broken.jpg", b"not a photo")])
        status, answer = server.json("POST", "/predict?fuse=1", body, headers)
        assert status == 200, answer
        assert answer["used"] == [name for name, _ in good]
        assert answer["left_out"] == [
            {"photo": "broken.jpg", "why": answer["left_out"][0]["why"]}
        ] and answer["left_out"][0]["why"].startswith("unreadable: unsupported image")
        status, answer = server.json("POST", "/predict", big, {})
        assert status == 413 and "16 MB" in answer["detail"]
        four, four_headers = form(good * 2)
        status, answer = server.json("POST", "/predict?fuse=1", four, four_headers)
        assert status == 400 and "at most 3 photos" in answer["detail"]
        # two photos wait in the batch window: two more are over the bound of 3, one is not
        two, two_headers = form(good)
        first: list = []
        waiting = threading.Thread(
            target=lambda: first.append(server.json("POST", "/predict?fuse=1", two, two_headers))
        )
        waiting.start()
        time.sleep(0.5)
        later = server.json("POST", "/predict?fuse=1", two, two_headers)
        one = server.json("POST", "/predict", good[0][1], {})
        waiting.join()
        assert first[0][0] == 200 and later[0] == 503 and one[0] == 200
    finally:
        server.stop()


def _nan_weights(bundle: Path, out: Path) -> Path:
    from safetensors.torch import load_file, save_file

    out.mkdir()
    (out / "model.json").write_bytes((bundle / "model.json").read_bytes())
    state = load_file(bundle / "model.safetensors")
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, out / "model.safetensors")
    return out


def _nan_onnx(onnx_model: Path, out: Path) -> Path:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_model))
    weight = proto.graph.initializer[0]
    values = numpy_helper.to_array(weight).copy()
    values[...] = np.nan
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(proto, str(out))
    return out


def test_nan_never_fails_open(bundle, onnx_model, photos, tmp_path):
    nan_bundle = _nan_weights(bundle, tmp_path / "nan")
    one_line_refusal(cropdoc("predict", nan_bundle, photos), "holds NaN or infinite weights")
    nan_onnx = _nan_onnx(onnx_model, tmp_path / "nan.onnx")
    done = cropdoc("predict", nan_onnx, photos, "--runtime", "onnx", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # valid JSON: no bare NaN
    assert result["predictions"] == []
    assert len(result["errors"]) == 6 and all("no finite answer" in e["reason"]
                                               for e in result["errors"])  # fmt: skip
    from cropdoc.inference.fusion import fuse_predictions, read_groups
    from cropdoc.inference.onnx_runtime import predict_onnx

    found = predict_onnx(nan_onnx, [photos])
    rows = fuse_predictions(found, read_groups([photos], "folder"))
    assert {r["verdict"] for r in rows} == {"retake"}  # never a diagnosis


@pytest.mark.slow
def test_serve_never_diagnoses_a_nan(bundle, onnx_model, photos, tmp_path):
    from test_serve import Server

    nan_onnx = _nan_onnx(onnx_model, tmp_path / "nan.onnx")
    server = Server(nan_onnx, "--runtime", "onnx")
    try:
        data = (photos / "plant-0" / "0.jpg").read_bytes()
        status, answer = server.json("POST", "/predict", data, {})
        assert status == 500 and "no finite answer" in answer["detail"]
        body, headers = form([("a.jpg", data), ("b.jpg", data)])
        assert server.json("POST", "/predict?fuse=1", body, headers)[0] == 500
    finally:
        server.stop()
    from cropdoc.testing import free_port

    done = cropdoc("serve", _nan_weights(bundle, tmp_path / "nan"), "--port", free_port())
    one_line_refusal(done, "holds NaN or infinite weights")


# 9. every bad input is one line and exit 2 ----------------------------------------------


def test_csv_encodings_and_malformed_rows(bundle, photos, tmp_path):
    photo = photos / "plant-0" / "0.jpg"
    utf16 = tmp_path / "utf16.csv"
    utf16.write_text(f"path,plant\n{photo},p\n", encoding="utf-16")
    done = cropdoc("predict", bundle, utf16, "--group-by", "plant", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["groups"][0]["photos"] == 1
    latin = tmp_path / "latin.csv"
    latin.write_bytes(f"path,plant\n{photo},é\n".encode("latin-1"))
    huge = tmp_path / "huge.csv"
    huge.write_text(f"path,note\n{photo},{'x' * 140_000}\n")
    short = tmp_path / "short.csv"
    short.write_text(f"path,plant\n{photo},a\n{photo}\n")
    for args, says in [
        (("predict", bundle, latin), "is not UTF-8 text"),
        (("score", bundle, latin, "--out", tmp_path / "s1"), "is not UTF-8 text"),
        (("predict", bundle, latin, "--group-by", "plant"), "is not UTF-8 text"),
        (("predict", bundle, huge), "not a readable CSV row"),
        (("score", bundle, huge, "--out", tmp_path / "s2"), "not a readable CSV row"),
        (("predict", bundle, short, "--group-by", "plant"), "line 3 has 1 cell(s)"),
    ]:
        one_line_refusal(cropdoc(*args), says)


def test_bad_flags_are_one_line(bundle, photos, tmp_path):
    for args, says in [
        (("score", bundle, photos, "--out", tmp_path / "a", "--threads", 0), "--threads must"),
        (("score", bundle, photos, "--out", tmp_path / "b", "--workers", -1), "--workers must"),
        (("score", bundle, photos, "--out", tmp_path / "c", "--bs", 0), "--bs must"),
        (("predict", bundle, photos, "--bs", 0), "--bs must be at least 1"),
        (("predict", bundle, photos, "--top-k", 0), "--top-k must be at least 1"),
        (("predict", bundle, photos, "--top-k", -1), "--top-k must be at least 1, not -1"),
    ]:
        one_line_refusal(cropdoc(*args), says)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_killed_score_worker_is_one_line(bundle, photos, tmp_path):
    many = tmp_path / "many"
    for n in range(600):
        leaf(many / f"{n:04d}.jpg", n, size=(140, 130))
    err = tmp_path / "stderr"
    options = ("--workers", 1, "--shard-size", 10, "--bs", 2)
    process = cli_process.start(
        "score", bundle, many, "--out", tmp_path / "out", *options, out=os.devnull, err=err
    )
    deadline, worker = time.monotonic() + 120, None
    while worker is None and time.monotonic() < deadline:
        if list((tmp_path / "out").glob("part-*.parquet")):
            worker = _child(process.pid)
        time.sleep(0.05)
    assert worker is not None, "the worker never finished a shard"
    os.kill(worker, signal.SIGKILL)
    assert process.wait(timeout=120) == 2 and "Traceback" not in err.read_text()
    assert (
        err.read_text()
        .strip()
        .splitlines()[-1]
        .endswith("run the same command again to score the rest")
    )


def _child(pid: int) -> int | None:
    """A worker process of ``pid``'s: a child of the forkserver it started (not the server
    itself, not the resource tracker)."""
    processes = cli_process.parents()
    servers = [p for p, (up, command) in processes.items() if up == pid and "forkserver" in command]
    workers = [p for p, (up, _) in processes.items() if up in servers]
    return workers[0] if workers else None


def test_exported_models_whose_classes_do_not_fit_are_refused(onnx_model, photos, tmp_path):
    import onnx

    for classes in (CLASSES[:2], [*CLASSES, "extra"]):
        proto = onnx.load(str(onnx_model))
        entry = next(e for e in proto.metadata_props if e.key == "cropdoc")
        entry.value = json.dumps({**json.loads(entry.value), "classes": classes})
        damaged = tmp_path / f"classes-{len(classes)}.onnx"
        onnx.save(proto, str(damaged))
        done = cropdoc("predict", damaged, photos, "--runtime", "onnx")
        one_line_refusal(done, f"outputs 3 values for 'logits' where its metadata names "
                               f"{len(classes)} classes")  # fmt: skip


def test_a_damaged_openvino_model_is_one_line(tmp_path, photos):
    pytest.importorskip("openvino")
    model = tmp_path / "model.xml"
    model.write_text('<?xml version="1.0"?>\n<net name="x" version="11">\n<layers>\n')
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    one_line_refusal(cropdoc("predict", model, photos, "--runtime", "openvino"), str(model))


# 10. the smaller ones ---------------------------------------------------------------------


def test_formulas_after_spaces_and_in_full_width_are_neutralised():
    from cropdoc.core.files import csv_row, csv_unescape

    cells = [" =cmd|' /C calc'!A0", "\u3000=1+1", '＝HYPERLINK("x")', "＠SUM(A1)", "-5", " 7"]
    escaped = csv_row(cells)
    assert escaped[:4] == [f"'{c}" for c in cells[:4]] and escaped[4:] == cells[4:]
    assert [csv_unescape(c) for c in escaped] == cells


@pytest.mark.slow
def test_a_host_with_a_user_part_is_refused(bundle):
    from test_serve import Server

    server = Server(bundle)
    try:
        status, answer = server.json("GET", "/model", None,
                                     {"Host": f"evil.com@127.0.0.1:{server.port}"})  # fmt: skip
        assert status == 403 and "is not this server's name" in answer["detail"]
        assert server.json("GET", "/model", None, {"Host": f"127.0.0.1:{server.port}"})[0] == 200
    finally:
        server.stop()
