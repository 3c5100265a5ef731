"""Issue #38's probes (round three): the web export, score, group-by, decoding, fused forms,
the in-flight bound, NaN and one-line errors, each run through the CLI or a real server in
another process. ``src`` picks the cropdoc whose CLI runs (its ``src`` folder), so the same
probes measure the code before and after a change side by side:

    python benchmarks/security.py --round3 [--src ../before/src] [--json]

Each probe returns what a user would see: exit codes, whether a traceback was printed,
whether files were changed, statuses, rows, and the server's peak memory.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path

from cropdoc.testing import free_port


class Cli:
    """``python -m cropdoc`` from the checkout ``src`` (None: the installed one)."""

    def __init__(self, src: Path | None):
        self.env = dict(os.environ)
        if src is not None:
            self.env["PYTHONPATH"] = str(src.resolve())

    def run(self, *args) -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "cropdoc", *map(str, args)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        lines = done.stderr.strip().splitlines()
        # the error's lines: its one line, or a traceback's from the first
        starts = ("Traceback", "cropdoc: error")
        first = next((n for n, line in enumerate(lines) if line.startswith(starts)), len(lines))
        return {
            "exit": done.returncode,
            "traceback": "Traceback" in done.stderr,
            "error_lines": len(lines) - first,
            "last": lines[-1][:160] if lines else "",
            "stdout": done.stdout,
        }

    def serve(self, model: Path, *options) -> tuple[subprocess.Popen, int]:
        port = free_port()
        command = [sys.executable, "-m", "cropdoc", "serve", str(model), "--port", str(port)]
        process = subprocess.Popen(
            [*command, *map(str, options)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if http(port, "GET", "/health")[0] == 200:
                    return process, port
            except OSError:
                time.sleep(0.2)
        process.kill()
        raise RuntimeError("the server did not start")


def http(port: int, method: str, path: str, body: bytes = b"", headers=None):
    """(status, body, headers) of one request."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


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


def materials(root: Path) -> dict:
    """A random test_resnet bundle, its ONNX export, 6 leaf-coloured photos in 3 folders,
    stand-ins for onnxruntime-web's files, and a 9400x9400 16-bit RGBA PNG (under the pixel
    cap; about 1 MB on disk)."""
    import numpy as np
    import torch
    from PIL import Image

    from cropdoc.inference.export import export_onnx
    from cropdoc.inference.webapp import ORT_FILES
    from cropdoc.model.archs import create_model
    from cropdoc.model.build import save_bundle

    torch.manual_seed(0)
    net = create_model("test_resnet", 3, pretrained=False).eval()
    meta = dict(
        arch="test_resnet",
        classes=["blight", "healthy", "rust"],
        size=[64, 64],
        item_size=[64, 64],
        resize="squish",
        mean=[0.5] * 3,
        std=[0.25] * 3,
        cache_size=128,
    )
    bundle = save_bundle(root / "model", net, meta)
    onnx = Path(export_onnx(bundle, root / "model.onnx")["onnx"])
    rng = np.random.default_rng(0)
    for n in range(6):
        pixels = np.clip(np.array([50, 140, 60]) + rng.normal(0, 14, (140, 160, 3)), 0, 255)
        folder = root / "photos" / f"plant-{n // 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{n}.jpg")
    ort = root / "ort"
    ort.mkdir()
    for name in ORT_FILES:
        (ort / name).write_text(f"// {name}\n")
    return {
        "bundle": bundle,
        "onnx": onnx,
        "photos": root / "photos",
        "ort": ort,
        "big": png_rgba16(root / "big.png", 9400, 9400),
    }


def png_rgba16(path: Path, width: int, height: int) -> Path:
    """A 16-bit RGBA PNG of one colour, written a row at a time."""
    row = b"\x00" + b"\x40\x00\x80\x00\x20\x00\xff\xff" * width
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path


def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): os.lstat(p).st_mode for p in sorted(folder.rglob("*"))}


def web_export(cli: Cli, m: dict, root: Path) -> dict:
    """1. A web export into a user's folder: a 0600 key, a link to a 0600 file outside, the
    user's own index.html; then serve's /app/private.key."""
    run = root / "web-run"
    run.mkdir()
    for name in ("model.json", "model.safetensors"):
        (run / name).write_bytes((m["bundle"] / name).read_bytes())
    app = run / "app"
    app.mkdir()
    (app / "index.html").write_text("<h1>mine</h1>")
    (app / "private.key").write_text("secret")
    (app / "private.key").chmod(0o600)
    outside = root / "outside.key"
    outside.write_text("also secret")
    outside.chmod(0o600)
    (app / "link.key").symlink_to(outside)
    before = modes(app)
    done = cli.run("export", run, "--format", "web", "--ort-web", m["ort"])
    after = modes(app)
    result = {
        "exit": done["exit"],
        "last": done["last"],
        "modes_changed": sorted(k for k in before if after.get(k) != before[k]),
        "outside_mode": oct(stat.S_IMODE(os.lstat(outside).st_mode)),
        "own_index_kept": (app / "index.html").read_text() == "<h1>mine</h1>",
    }
    listing = app / "files.json"
    result["listed_private"] = listing.exists() and "private.key" in listing.read_text()
    server, port = cli.serve(run)
    try:
        result["get_private_key"] = http(port, "GET", "/app/private.key")[0]
    finally:
        server.terminate()
        server.wait(30)
    file_out = root / "a-file"
    file_out.write_text("x")
    result["out_is_a_file"] = _brief(
        cli.run("export", run, "--format", "web", "--out", file_out, "--ort-web", m["ort"])
    )
    return result


def _brief(done: dict) -> dict:
    return {"exit": done["exit"], "traceback": done["traceback"], "last": done["last"][:100]}


def score_folder(cli: Cli, m: dict, root: Path) -> dict:
    """2. ``score --out`` a folder holding a user's ``.draft.tmp`` and ``_summary.json``."""
    folder = root / "users-folder"
    folder.mkdir()
    (folder / ".draft.tmp").write_text("mine")
    (folder / "_summary.json").write_text('{"mine": 1}')
    done = cli.run("score", m["bundle"], m["photos"], "--out", folder, "--workers", 1)
    return {
        **_brief(done),
        "draft_kept": (folder / ".draft.tmp").exists(),
        "summary_kept": (folder / "_summary.json").read_text() == '{"mine": 1}',
    }


def score_inputs(cli: Cli, m: dict, root: Path) -> dict:
    """3. A CSV naming a photo, a folder of 2 photos, another CSV, a missing path without an
    image extension; and a folder holding a link to itself."""
    photos = m["photos"]
    (root / "other.csv").write_text(f"path\n{photos / 'plant-0' / '0.jpg'}\n")
    listing = root / "list.csv"
    listing.write_text(
        f"path\n{photos / 'plant-0' / '0.jpg'}\n{photos / 'plant-1'}\n{root / 'other.csv'}\n"
    )
    result = {"csv_rows_listed": 3}
    done = cli.run("score", m["bundle"], listing, "--out", root / "s1", "--workers", 1, "--json")
    if done["exit"] == 0:
        import pyarrow.parquet as pq

        summary = json.loads(done["stdout"])
        result["shard_rows"] = pq.read_table(root / "s1").num_rows
        result["summary_photos"] = summary["photos"]
        result["summary_verdicts_and_unreadable"] = sum(summary["verdicts"].values()) + len(
            summary["unreadable"]
        )
    missing = root / "list2.csv"
    missing.write_text(f"path\n{photos / 'plant-0' / '0.jpg'}\n{root / 'no-such-file'}\n")
    done = cli.run("score", m["bundle"], missing, "--out", root / "s2", "--workers", 1)
    result["missing_path"] = _brief(done)
    loop = root / "loop"
    loop.mkdir()
    (loop / "x.jpg").write_bytes((photos / "plant-0" / "0.jpg").read_bytes())
    (loop / "again").symlink_to(loop, target_is_directory=True)
    result["link_loop"] = _brief(
        cli.run("score", m["bundle"], loop, "--out", root / "s3", "--workers", 1)
    )
    return result


def group_by(cli: Cli, m: dict, root: Path) -> dict:
    """4. A photo under two plants, an unreadable photo, a plant of unreadable photos."""
    photos = m["photos"]
    broken = root / "broken.jpg"
    broken.write_bytes(b"not a photo")
    shared = photos / "plant-0" / "0.jpg"
    rows = [
        (shared, "A"),
        (photos / "plant-0" / "1.jpg", "A"),
        (shared, "B"),
        (broken, "B"),
        (broken, "C"),
    ]
    listing = root / "plants.csv"
    listing.write_text("path,plant\n" + "".join(f"{p},{g}\n" for p, g in rows))
    done = cli.run("predict", m["bundle"], listing, "--group-by", "plant", "--json")
    if done["exit"] != 0:
        return _brief(done)
    groups = json.loads(done["stdout"])["groups"]
    accounted = sum(len(g["used"]) + len(g["left_out"]) for g in groups)
    return {
        "plants_listed": 3,
        "plants_answered": len(groups),
        "photos_listed": len(rows),
        "photos_accounted": accounted,
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def decode_memory(cli: Cli, m: dict) -> dict:
    """5. Two posts at once of the 1 MB PNG of 9400x9400 16-bit RGBA pixels: statuses,
    seconds and the server's peak memory."""
    server, port = cli.serve(m["bundle"])
    data = m["big"].read_bytes()
    try:
        idle = peak_rss_mb(server.pid)
        started, statuses = time.perf_counter(), []
        threads = [
            threading.Thread(
                target=lambda: statuses.append(http(port, "POST", "/predict", data)[0])
            )
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {
            "file_kb": round(len(data) / 1024),
            "statuses": sorted(statuses),
            "seconds": round(time.perf_counter() - started, 2),
            "server_mb_before": round(idle),
            "server_peak_mb": round(peak_rss_mb(server.pid)),
        }
    finally:
        server.terminate()
        server.wait(30)


def fused_and_inflight(cli: Cli, m: dict) -> dict:
    """6 and 7. Under ``--max-inflight 3`` (photos the model waits for 1 s in its batch
    window): a fused form of 2 photos and an unreadable part; two fused forms of 2 photos
    at once; a fused form of 16 photos."""
    good = [(p.name, p.read_bytes()) for p in sorted(m["photos"].rglob("*.jpg"))]
    server, port = cli.serve(m["bundle"], "--max-inflight", 3, "--batch-wait-ms", 1000)
    try:
        body, headers = form([*good[:2], ("broken.jpg", b"not a photo")])
        status, answer, _ = http(port, "POST", "/predict?fuse=1", body, headers)
        left = json.loads(answer).get("left_out", []) if status == 200 else []
        result = {
            "bad_part_status": status,
            "bad_part_named": any(x["photo"] == "broken.jpg" for x in left),
        }
        two, two_headers = form(good[:2])
        statuses: list[int] = []

        def post() -> None:
            statuses.append(http(port, "POST", "/predict?fuse=1", two, two_headers)[0])

        threads = [threading.Thread(target=post) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.3)  # the first form's photos wait in the batch window
        for t in threads:
            t.join()
        result["two_forms_of_2_statuses"] = sorted(statuses)
        result["photos_in_flight_at_most"] = 2 * statuses.count(200)
        sixteen, sixteen_headers = form((good * 3)[:16])
        status, answer, _ = http(port, "POST", "/predict?fuse=1", sixteen, sixteen_headers)
        result["form_of_16_status"] = status
        return result
    finally:
        server.terminate()
        server.wait(30)


def nan(cli: Cli, m: dict, root: Path) -> dict:
    """8. A bundle with NaN weights; an ONNX model with NaN weights (predict --json, serve)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from safetensors.torch import load_file, save_file

    folder = root / "nan-bundle"
    folder.mkdir()
    (folder / "model.json").write_bytes((m["bundle"] / "model.json").read_bytes())
    state = load_file(m["bundle"] / "model.safetensors")
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] * float("nan")
    save_file(state, folder / "model.safetensors")
    result = {"bundle": _brief(cli.run("predict", folder, m["photos"], "--json"))}
    done = cli.run("predict", folder, m["photos"], "--json")
    result["bundle"]["verdicts"] = _verdicts(done)
    proto = onnx.load(str(m["onnx"]))
    weight = proto.graph.initializer[0]
    values = numpy_helper.to_array(weight) * np.nan
    weight.CopyFrom(numpy_helper.from_array(values.astype(np.float32), weight.name))
    damaged = root / "nan.onnx"
    onnx.save(proto, str(damaged))
    done = cli.run("predict", damaged, m["photos"], "--runtime", "onnx", "--json")
    result["onnx"] = {"exit": done["exit"], "verdicts": _verdicts(done)}
    server, port = cli.serve(damaged, "--runtime", "onnx")
    try:
        photo = next(m["photos"].rglob("*.jpg")).read_bytes()
        status, body, _ = http(port, "POST", "/predict", photo)
        answer = json.loads(body)
        result["serve"] = {
            "status": status,
            "verdict": answer.get("verdict"),
            "confidence": answer.get("confidence", "-"),
        }
    finally:
        server.terminate()
        server.wait(30)
    return result


def _verdicts(done: dict) -> str:
    """The verdicts of ``predict --json``, or why its output is not JSON."""
    try:
        result = json.loads(done["stdout"])
    except ValueError:
        return "not valid JSON" if done["stdout"].strip() else "no output"
    counts: dict[str, int] = {}
    for row in result.get("predictions", []):
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    counts["errors"] = len(result.get("errors", []))
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def one_liners(cli: Cli, m: dict, root: Path) -> dict:
    """9. Each input the issue lists: exit code and lines on stderr."""
    photo = next(m["photos"].rglob("*.jpg"))
    (root / "latin.csv").write_bytes(f"path\n{photo}\nfeuille_été.jpg\n".encode("latin-1"))
    (root / "utf16.csv").write_text(f"path\n{photo}\n", encoding="utf-16")
    (root / "huge.csv").write_text(f"path,note\n{photo},{'x' * 140_000}\n")
    (root / "short.csv").write_text(f"path,plant\n{photo},a\n{photo}\n")
    import onnx

    proto = onnx.load(str(m["onnx"]))
    entry = next(e for e in proto.metadata_props if e.key == "cropdoc")
    entry.value = json.dumps({**json.loads(entry.value), "classes": ["blight", "healthy"]})
    onnx.save(proto, str(root / "two-classes.onnx"))
    (root / "bad.xml").write_text('<?xml version="1.0"?>\n<net name="x" version="11">\n')
    (root / "bad.bin").write_bytes(b"\0" * 16)
    b, p = m["bundle"], m["photos"]
    cases = {
        "predict latin-1 CSV": ("predict", b, root / "latin.csv"),
        "predict UTF-16 CSV": ("predict", b, root / "utf16.csv"),
        "predict field of 140,000 characters": ("predict", b, root / "huge.csv"),
        "group-by short row": ("predict", b, root / "short.csv", "--group-by", "plant"),
        "score latin-1 CSV": ("score", b, root / "latin.csv", "--out", root / "o1"),
        "score --threads 0": ("score", b, p, "--out", root / "o2", "--threads", 0),
        "score --workers -1": ("score", b, p, "--out", root / "o3", "--workers", -1),
        "score --bs 0": ("score", b, p, "--out", root / "o4", "--bs", 0),
        "predict --bs 0": ("predict", b, p, "--bs", 0),
        "predict --top-k 0": ("predict", b, p, "--top-k", 0),
        "predict --top-k -1": ("predict", b, p, "--top-k", -1, "--json"),
        "onnx listing 2 classes of 3": (
            "predict",
            root / "two-classes.onnx",
            p,
            "--runtime",
            "onnx",
        ),
        "damaged OpenVINO model": ("predict", root / "bad.xml", p, "--runtime", "openvino"),
    }
    result = {}
    for name, args in cases.items():
        done = cli.run(*args)
        said = {
            "exit": done["exit"],
            "traceback": done["traceback"],
            "error_lines": done["error_lines"],
        }
        if name == "predict --top-k -1" and done["exit"] == 0:
            rows = json.loads(done["stdout"])["predictions"]
            said["classes_printed"] = len(rows[0]["top"])
        result[name] = said
    return result


def smaller(cli: Cli, m: dict, root: Path) -> dict:
    """10. Formula cells, a Host with a user part, /app's headers, an app exported after
    serve started."""
    code = "from cropdoc.core.files import csv_row; print(csv_row([' =1+1', '\\uff1d1+1', '=1+1']))"
    cells = subprocess.run(
        [sys.executable, "-c", code], env=cli.env, capture_output=True, text=True
    ).stdout.strip()
    run = root / "late-run"
    run.mkdir()
    for name in ("model.json", "model.safetensors"):
        (run / name).write_bytes((m["bundle"] / name).read_bytes())
    server, port = cli.serve(run)
    try:
        host = http(port, "GET", "/model", headers={"Host": f"evil.com@127.0.0.1:{port}"})[0]
        cli.run("export", run, "--format", "web", "--ort-web", m["ort"])
        status, _, headers = http(port, "GET", "/app/app.json")
    finally:
        server.terminate()
        server.wait(30)
    return {
        "csv_cells": cells,
        "host_with_user_part": host,
        "app_exported_later": status,
        "nosniff": headers.get("x-content-type-options", "-"),
        "cache_control": headers.get("cache-control", "-"),
    }


def probe_all(src: Path | None, root: Path) -> dict:
    """Every probe above, with the cropdoc of ``src``."""
    cli = Cli(src)
    m = materials(root)
    return {
        "1 web export into a user's folder": web_export(cli, m, root),
        "2 score into a user's folder": score_folder(cli, m, root),
        "3 score's inputs": score_inputs(cli, m, root),
        "4 predict --group-by": group_by(cli, m, root),
        "5 two 9400x9400 16-bit PNGs at serve": decode_memory(cli, m),
        "6-7 fused forms": fused_and_inflight(cli, m),
        "8 NaN weights": nan(cli, m, root),
        "9 bad inputs": one_liners(cli, m, root),
        "10 smaller": smaller(cli, m, root),
    }
