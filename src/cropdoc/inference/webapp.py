"""``export --format web``: a static web app that diagnoses offline, in the browser.

The folder holds ``index.html`` and ``app.js`` (the page), ``sw.js`` (a service worker that
caches every file of the app, so that once opened it works with the network off), a web
app manifest and icon, the model as ONNX (``model.onnx``, int8 with ``--int8``),
``app.json`` (classes, the bundle's preprocessing, calibration, confidence floor and the
photo-quality thresholds and advice) and onnxruntime-web's ES module and WebAssembly files
(``ort/``), taken from the npm package ``onnxruntime-web`` at the pinned version.
``files.json`` lists exactly the files the export wrote: the service worker caches those and
``serve`` publishes those, nothing else. The export writes only into a new or empty folder
or the folder of its own earlier export (whose files it replaces, removing those it no
longer writes); anything else there is refused before a file is written, so a user's own
files are never changed, published or deleted, and no link is followed. The page
does what ``onnx_runtime.py`` does in numpy (the same resampling, softmax with the
temperature, verdicts and quality checks), in JavaScript: WebGPU when the browser has it,
else WebAssembly; it says which ran.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from importlib import resources
from pathlib import Path

from cropdoc.contract import quality as checks
from cropdoc.contract.bundle import BundleMeta
from cropdoc.contract.kinds import kind_of
from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from cropdoc.core.progress import say
from cropdoc.inference.predictions import ADVICE as VERDICT_ADVICE

ORT_WEB_VERSION = "1.31.1"
ORT_WEB_SHA256 = "bdccdb9fbb9ab537247c0c734e9b1d2b1b338b4f2a09faa58f0dc1cfa27c312c"
# the WebGPU bundle runs the "webgpu" and "wasm" execution providers with one wasm build
ORT_FILES = (
    "ort.webgpu.min.mjs",
    "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
)
PAGE_FILES = ("index.html", "app.js", "sw.js", "manifest.webmanifest")
LISTING = "files.json"  # the files the export wrote (the service worker caches them)
PUBLIC = 0o644  # a web server reads the app's files


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
    ``MODEL/app``: a new or empty folder, or an earlier web export's); returns the ONNX
    parity check and the files written."""
    from cropdoc.inference.export import export_onnx
    from cropdoc.inference.onnx_runtime import load_session

    meta = BundleMeta.read(model_dir)
    kind_of(meta.tiles).refuse("webapp")
    out = Path(out) if out else Path(model_dir) / "app"
    before = earlier_export(out)  # refuses a folder that is not the export's own
    ort_dir = ort_web_dir(ort_web)
    out.mkdir(parents=True, exist_ok=True)
    onnx = export_onnx(model_dir, out / "model.onnx", int8=int8, calibrate=calibrate)
    _publish(out / "model.onnx")
    _, exported = load_session(out / "model.onnx")  # the metadata the ONNX file carries
    for name in ORT_FILES:
        atomic_write_bytes(out / "ort" / name, (ort_dir / name).read_bytes(), PUBLIC)
    version = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()[:16]
    atomic_write_json(out / "app.json", app_settings(exported, version), PUBLIC)
    page = resources.files("cropdoc.inference").joinpath("web")
    for name in PAGE_FILES:
        text = page.joinpath(name).read_text(encoding="utf-8")
        atomic_write_text(out / name, text.replace("__VERSION__", version), PUBLIC)
    atomic_write_bytes(out / "icon.png", _icon(), PUBLIC)
    files = sorted(["model.onnx", "app.json", "icon.png", *PAGE_FILES,
                    *(f"ort/{name}" for name in ORT_FILES)])  # fmt: skip
    for stale in sorted(set(before) - set(files)):  # an earlier export's, no longer written
        (out / stale).unlink(missing_ok=True)
    atomic_write_json(out / LISTING, {"version": version, "files": [".", *files]}, PUBLIC)
    size = sum((out / f).stat().st_size for f in files)
    say(f"web app: {out} ({len(files)} files, {size / 2**20:.1f} MB), open index.html over http")
    return {"app": str(out), "files": files, "bytes": size, **onnx}


def app_files(folder: Path) -> list[str] | None:
    """The files a web export wrote into ``folder`` (its ``files.json``, without ``.``), or
    None where there is none, or it is not one the export wrote."""
    listing = folder / LISTING
    try:
        if listing.is_symlink():
            return None
        data = json.loads(listing.read_text(encoding="utf-8"))
        files = data["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return [f for f in files if f != "." and _plain_name(f)]


def _plain_name(name: str) -> bool:
    """A relative path of plain names (no ``..``, no leading ``/``), as the export writes."""
    parts = name.split("/")
    return all(part not in ("", ".", "..") for part in parts) and "\\" not in name


def earlier_export(out: Path) -> list[str]:
    """The files an earlier web export wrote into ``out`` (none for a new or empty folder).
    A file, a link, or a folder holding anything the export did not write is refused in one
    line, before anything is written."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"--out {out} is a file or a link: give a folder for the web app")
    found = _entries(out) if out.is_dir() else []
    if not found:
        return []
    listed = app_files(out)
    own = set(listed or [])
    own |= {LISTING, *(str(Path(f).parent) for f in own if "/" in f)}
    foreign = [name for name, plain in found if name not in own or not plain]
    if listed is None or foreign:
        first = f" (such as {foreign[0]})" if foreign else ""
        raise UserError(
            f"--out {out} holds files that cropdoc export did not write{first}: give a new "
            "or empty folder, or the folder of an earlier web export"
        )
    return listed


def _entries(folder: Path, prefix: str = "") -> list[tuple[str, bool]]:
    """Every entry under ``folder`` as (relative name, whether it is a plain file or
    folder rather than a link or a device), links never followed."""
    found = []
    with os.scandir(folder) as scan:
        for entry in sorted(scan, key=lambda e: e.name):
            name = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                found.append((name, True))
                found += _entries(Path(entry.path), f"{name}/")
            else:
                found.append((name, entry.is_file(follow_symlinks=False)))
    return found


def _publish(path: Path) -> None:
    """Make a file the export wrote readable by a web server, never through a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, PUBLIC)
    finally:
        os.close(fd)


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
