"""Shared fixtures: small datasets of real image files, good and bad."""

from __future__ import annotations

import collections
import hashlib
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# few tests each, but long runs of one process after another (about 150 s and 80 s)
FIRST = ("test_recipe.py", "test_examples.py")


def pytest_collection_modifyitems(items: list) -> None:
    """Each file's tests together, the files with most tests first (pytest-xdist's own
    order, which make test keeps with --no-loadscope-reorder), but FIRST before them all:
    started last, each kept the other worker idle for its last minutes."""
    counts = collections.Counter(item.path.name for item in items)
    items.sort(key=lambda item: (item.path.name not in FIRST, -counts[item.path.name]))


COLOURS = {"healthy": (40, 160, 60), "rust": (170, 90, 30), "mildew": (220, 220, 200)}


def save_rgb(path: Path, colour, size=(64, 48), fmt="JPEG", **kw) -> Path:
    """A solid-colour image of ``size`` (width, height) with a little noise."""
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))  # the same in every process
    pixels = np.clip(np.array(colour) + rng.normal(0, 3, (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, fmt, **kw)
    return path


def png16(path: Path, pixels: np.ndarray) -> Path:
    """Write a 16-bit grayscale PNG by hand (values 0..65535)."""
    h, w = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def exif_rotated(path: Path) -> Path:
    """A 60x30 JPEG stored with red left / blue right, EXIF orientation 6 (rotate 90 CW)."""
    pixels = np.zeros((30, 60, 3), np.uint8)
    pixels[:, :30] = (230, 20, 20)
    pixels[:, 30:] = (20, 20, 230)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, "JPEG", exif=exif.tobytes(), quality=95)
    return path


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(autouse=True)
def _private_cache_root(monkeypatch, tmp_path_factory):
    """Caches made without --cache go under the test session's temp folder, not home."""
    monkeypatch.setenv("CROPDOC_CACHE", str(tmp_path_factory.getbasetemp() / "cache-root"))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A class-folder dataset with every kind of awkward file the issue lists."""
    root = tmp_path / "data"
    for label, colour in COLOURS.items():
        for i in range(4):
            save_rgb(root / label / f"{label}_{i}.jpg", colour)
    bad = root / "rust"
    (bad / "zero.jpg").write_bytes(b"")
    good = (bad / "rust_0.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (bad / "text.jpg").write_text("this is not a picture\n")
    Image.new("RGB", (1, 1), (1, 2, 3)).save(bad / "tiny.png")
    Image.new("1", (10000, 9000)).save(bad / "bomb.png")  # 90M pixels, a few kB on disk
    odd = root / "healthy"
    Image.new("RGB", (40, 30), (40, 160, 60)).convert("CMYK").save(odd / "cmyk.jpg", quality=95)
    png16(odd / "deep.png", np.full((32, 48), 40000, np.uint16))
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., :3] = (40, 160, 60)
    rgba[:, :20, 3] = 255  # left half opaque green, right half transparent
    Image.fromarray(rgba, "RGBA").save(odd / "alpha.png")
    Image.new("RGB", (40, 30), (40, 160, 60)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        odd / "palette.png"
    )
    Image.new("L", (40, 30), 128).save(odd / "gray.jpg")
    exif_rotated(odd / "rotated.jpg")
    save_rgb(odd / "feuille_malade_été_叶.jpg", COLOURS["healthy"])
    (odd / ".hidden.jpg").write_bytes(good)
    (odd / "notes.txt").write_text("field notes\n")
    (root / "empty_class").mkdir()
    return root


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small demo dataset (3 training images per class), made once per test session."""
    from cropdoc.data.demo import make_demo_data

    out = tmp_path_factory.mktemp("demo") / "data"
    make_demo_data(out, per_class=3, workers=2)
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, worker_id) -> Path:
    """test_resnet trained from scratch on 12 demo photos per class at 128x96 (a model that
    has learned something), made once per test run: under pytest-xdist the first worker to
    ask trains it in the folder the workers share, the others wait for it. Tests read it;
    one that changes a run changes a copy."""
    import fcntl

    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent  # the workers' temporary folders are made in one folder
    root = shared / "trained"
    with open(shared / "trained.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (root / "run" / "model.safetensors").exists():
            shutil.rmtree(root, ignore_errors=True)
            _train_demo_run(root)
    return root / "run"


def _train_demo_run(root: Path) -> None:
    from cropdoc.config import TrainConfig
    from cropdoc.data.demo import make_demo_data
    from cropdoc.engine.trainer import train

    make_demo_data(root / "data", per_class=12, workers=2)
    config = TrainConfig(
        data=str(root / "data"),
        cache=str(root / "cache"),
        arch="test_resnet",
        pretrained=False,
        from_scratch=True,
        epochs=25,
        bs=8,
        lr=0.01,
        item_size="128x96",
        size="128x96",
        cache_size=128,
        workers=2,
        out=str(root / "run"),
    )
    train(config)


@pytest.fixture
def tiny_config(demo_data, tmp_path):
    """A function making the training settings of test_resnet on the small demo data at
    64 px (one epoch frozen, one not), with any setting overridden."""
    from cropdoc.config import TrainConfig
    from cropdoc.testing import TINY_TRAINING

    def make(**settings) -> TrainConfig:
        values = dict(
            TINY_TRAINING,
            data=str(demo_data),
            cache=str(tmp_path / "cache"),
            out=str(tmp_path / "run"),
        )
        return TrainConfig(**{**values, **settings})

    return make


def kill_after_epoch(args: list, run: Path, epoch: int = 1, state: Path | None = None) -> int:
    """Run ``cropdoc *args --out run`` in a child process, SIGKILL it once its checkpoint (or
    the ``state`` file named) holds ``epoch`` finished epochs (waiting at most 120 s), and
    return the epochs it holds."""
    import json
    import os
    import signal
    import time

    import cli_process

    proc = cli_process.start(*args, "--out", run, out=os.devnull)
    state = state or run / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text())["epoch"] >= epoch:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return json.loads(state.read_text())["epoch"]
