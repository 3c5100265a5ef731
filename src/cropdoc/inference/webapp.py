"""``export --format web``: a static web app that diagnoses offline, in the browser.

The folder holds ``index.html`` and ``app.js`` (the page), ``sw.js`` (a service worker that
caches every file of the app, so that once opened it works with the network off), a web
app manifest and icon, the model as ONNX (``model.onnx``, int8 with ``--int8``),
``app.json`` (classes, the bundle's preprocessing, calibration, confidence floor and the
photo-quality thresholds and advice) and onnxruntime-web's ES module and WebAssembly files
(``ort/``), taken from the npm package ``onnxruntime-web`` at the pinned version. The page
does what ``onnx_runtime.py`` does in numpy (the same resampling, softmax with the
temperature, verdicts and quality checks), in JavaScript: WebGPU when the browser has it,
else WebAssembly; it says which ran.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from importlib import resources
from pathlib import Path

from cropdoc.bundle import BundleMeta
from cropdoc.errors import UserError
from cropdoc.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from cropdoc.inference.predictions import ADVICE as VERDICT_ADVICE
from cropdoc.progress import say
from cropdoc.quality import checks

ORT_WEB_VERSION = "1.31.1"
ORT_WEB_SHA256 = "bdccdb9fbb9ab537247c0c734e9b1d2b1b338b4f2a09faa58f0dc1cfa27c312c"
# the WebGPU bundle runs the "webgpu" and "wasm" execution providers with one wasm build
ORT_FILES = (
    "ort.webgpu.min.mjs",
    "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
)
PAGE_FILES = ("index.html", "app.js", "sw.js", "manifest.webmanifest")


def ort_web_dir(given: str | os.PathLike | None = None) -> Path:
    """A folder holding ``ORT_FILES``: ``given``, else the cache (filled once from npm:
    ``npm pack onnxruntime-web@VERSION``, its sha256 checked)."""
    if given is not None:
        folder = Path(given)
        missing = [f for f in ORT_FILES if not (folder / f).is_file()]
        if missing:
            raise UserError(f"{folder} lacks {', '.join(missing)} (onnxruntime-web's dist files)")
        return folder
    cache = Path(os.environ.get("CROPDOC_CACHE", Path.home() / ".cache" / "cropdoc"))
    folder = cache / f"onnxruntime-web-{ORT_WEB_VERSION}"
    if all((folder / f).is_file() for f in ORT_FILES):
        return folder
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(
            f"the web app needs onnxruntime-web {ORT_WEB_VERSION} from npm, and npm is not "
            "installed: install Node.js, or pass --ort-web DIR holding its dist/ files"
        )
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [npm, "pack", f"onnxruntime-web@{ORT_WEB_VERSION}", "--pack-destination", tmp],
            capture_output=True,
            text=True,
            timeout=600,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(
                f"npm could not fetch onnxruntime-web {ORT_WEB_VERSION} ({last[:120]}): "
                "offline? pass --ort-web DIR holding its dist/ files"
            )
        digest = hashlib.sha256(tarballs[0].read_bytes()).hexdigest()
        if digest != ORT_WEB_SHA256:
            raise UserError(
                f"onnxruntime-web {ORT_WEB_VERSION} from npm has sha256 {digest[:16]}..., "
                f"not the pinned {ORT_WEB_SHA256[:16]}...: refusing it"
            )
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache))  # beside the folder: the rename is atomic
        with tarfile.open(tarballs[0]) as archive:
            for name in ORT_FILES:
                member = archive.getmember(f"package/dist/{name}")
                source = archive.extractfile(member)
                (staging / name).write_bytes(source.read())
    shutil.rmtree(folder, ignore_errors=True)
    staging.replace(folder)
    return folder


def app_settings(meta: BundleMeta, version: str) -> dict:
    """``app.json``: what the page needs to do what ``predict`` does."""
    return {
        "arch": meta.arch,
        "classes": list(meta.classes),
        "size": list(meta.size),
        "item_size": list(meta.item_size),
        "resize": meta.resize,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "cache_size": meta.cache_size,
        "temperature": meta.trust.temperature,
        "min_confidence": meta.trust.min_confidence,
        "advice": VERDICT_ADVICE,
        "quality": {
            "work_side": checks.WORK_SIDE,
            "thresholds": dataclasses.asdict(checks.THRESHOLDS),
            "advice": checks.ADVICE,
        },
        "version": version,
    }


def export_web(
    model_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    int8: bool = False,
    calibrate: list | None = None,
    ort_web: str | os.PathLike | None = None,
) -> dict:
    """Write the web app of the run or bundle ``model_dir`` into ``out`` (default
    ``MODEL/app``); returns the ONNX parity check and the files written."""
    from cropdoc.inference.export import export_onnx
    from cropdoc.inference.onnx_runtime import load_session

    meta = BundleMeta.read(model_dir)
    if meta.tiles.tile:
        raise UserError(
            "a tiled model's web app is not built yet: export a whole-photo model, or serve "
            "the tiled one with cropdoc serve"
        )
    ort_dir = ort_web_dir(ort_web)
    out = Path(out) if out else Path(model_dir) / "app"
    out.mkdir(parents=True, exist_ok=True)
    onnx = export_onnx(model_dir, out / "model.onnx", int8=int8, calibrate=calibrate)
    _, exported = load_session(out / "model.onnx")  # the metadata the ONNX file carries
    (out / "ort").mkdir(exist_ok=True)
    for name in ORT_FILES:
        shutil.copyfile(ort_dir / name, out / "ort" / name)
    version = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()[:16]
    atomic_write_json(out / "app.json", app_settings(exported, version))
    page = resources.files("cropdoc.inference").joinpath("web")
    for name in PAGE_FILES:
        text = page.joinpath(name).read_text(encoding="utf-8")
        atomic_write_text(out / name, text.replace("__VERSION__", version))
    atomic_write_bytes(out / "icon.png", _icon())
    files = sorted(
        str(p.relative_to(out)).replace(os.sep, "/") for p in out.rglob("*") if p.is_file()
    )
    atomic_write_json(out / "files.json", {"version": version, "files": [".", *files]})
    for name in [*files, "files.json"]:
        (out / name).chmod(0o644)  # a web server reads them
    size = sum((out / f).stat().st_size for f in files)
    say(f"web app: {out} ({len(files)} files, {size / 2**20:.1f} MB), open index.html over http")
    return {"app": str(out), "files": files, "bytes": size, **onnx}


def _icon() -> bytes:
    """A 192 px icon: a green leaf shape on white, drawn here."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (192, 192), (244, 247, 242))
    draw = ImageDraw.Draw(image)
    draw.ellipse((36, 20, 156, 172), fill=(47, 125, 58))
    draw.line((96, 24, 96, 176), fill=(244, 247, 242), width=6)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
