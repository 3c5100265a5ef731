"""``prepare``: decode every image once, shrink it, and keep its uint8 pixels in a cache.

A cache folder holds

- ``chunk-NNNNNN.bin``: the raw RGB pixels of up to a few hundred images, back to back;
- ``chunk-NNNNNN.json``: for each file of that chunk its size, mtime, original size and
  pixel offset and shape (or the reason it could not be decoded);
- ``manifest.json``: the dataset as last prepared (classes, and per image its label, split,
  metadata and where its pixels are), written when a run completes.

Every file is written to a temporary name and renamed, the ``.bin`` before its ``.json``,
so a run killed at any moment leaves only whole chunks; the next run reuses them and
decodes only the files that are new, changed or not yet done.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write, atomic_write_json, remove_temporaries
from cropdoc.core.progress import Progress, say
from cropdoc.data.images import ImageError, read_image
from cropdoc.data.layouts import Dataset, DatasetError, discover
from cropdoc.data.workers import fork_pool

CACHE_VERSION = 1
CHUNK_IMAGES = 128
FULL_CHUNK_IMAGES = 4  # full-resolution photos per chunk (a 12 MP photo is 36 MB)


class CacheError(UserError, ValueError):
    """A cache that cannot be created or read; the message says what to do."""


def default_cache_root() -> Path:
    """``$CROPDOC_CACHE`` or ``~/.cache/cropdoc``."""
    env = os.environ.get("CROPDOC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cropdoc"


def cache_dir_for(root: str | os.PathLike, size: int, cache: str | os.PathLike | None) -> Path:
    """The cache folder for a dataset: ``cache`` itself, or a keyed folder under the root."""
    if cache is not None:
        return Path(cache).expanduser()
    source = Path(root).expanduser().resolve()
    key = hashlib.sha1(f"{source}|{size}|v{CACHE_VERSION}".encode()).hexdigest()[:12]
    return default_cache_root() / f"{source.stem or 'data'}-{size}-{key}"


@dataclass(frozen=True)
class CachedImage:
    """One entry of a prepared cache."""

    path: str
    label: str | None
    split: str | None
    meta: dict
    orig_size: tuple[int, int]  # (width, height) of the original file
    shape: tuple[int, int]  # (height, width) of the cached pixels
    chunk: int
    offset: int


class Cache:
    """A prepared cache opened for reading: entries plus memory-mapped pixels."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        manifest = self.folder / "manifest.json"
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CacheError(
                f"{self.folder} is not a prepared cache: run cropdoc prepare"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CacheError(f"{manifest} is damaged: delete the folder, prepare again") from None
        if data.get("version") != CACHE_VERSION:
            raise CacheError(f"{self.folder} was made by another cropdoc version: prepare again")
        self.root = Path(data["root"])
        self.size: int = data["size"]
        self.layout: str = data["layout"]
        self.classes: list[str] = data["classes"]
        self.errors: list[dict] = data["errors"]
        self.images = [
            CachedImage(
                e["path"],
                e["label"],
                e["split"],
                e["meta"],
                tuple(e["orig_size"]),
                tuple(e["shape"]),
                e["chunk"],
                e["offset"],
            )
            for e in data["images"]
        ]
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.images)

    def pixels(self, index: int) -> np.ndarray:
        """The ``(H, W, 3)`` uint8 pixels of image ``index`` (a read-only memory map)."""
        entry = self.images[index]
        data = self._maps.get(entry.chunk)
        if data is None:
            data = np.memmap(self.folder / _chunk_name(entry.chunk, ".bin"), np.uint8, mode="r")
            self._maps[entry.chunk] = data
        h, w = entry.shape
        return data[entry.offset : entry.offset + h * w * 3].reshape(h, w, 3)


@dataclass
class PrepareResult:
    """What a ``prepare`` run did."""

    cache: Path
    dataset: Dataset
    total: int
    decoded: int
    reused: int
    errors: list[tuple[str, str]]
    seconds: float

    def summary(self) -> dict:
        ok = self.total - len(self.errors)
        return {
            "cache": str(self.cache),
            "images": self.total,
            "cached": ok,
            "decoded": self.decoded,
            "reused": self.reused,
            "errors": [{"path": p, "reason": r} for p, r in self.errors],
            "skipped": [{"path": str(p), "reason": r} for p, r in self.dataset.skipped],
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.decoded / self.seconds, 1) if self.seconds else 0.0,
        }


def prepare(
    data: str | os.PathLike | Dataset,
    cache: str | os.PathLike | None = None,
    size: int = 256,
    workers: int | None = None,
) -> PrepareResult:
    """Decode, shrink (longer side ``size``) and cache every image of a dataset.

    Args:
        data: a dataset folder or CSV manifest, or a ``Dataset`` from ``discover``.
        cache: the cache folder; by default one keyed by dataset path and size under
            ``$CROPDOC_CACHE`` or ``~/.cache/cropdoc``.
        size: the longer side of the cached images, in pixels; 0 keeps full resolution
            (for ``train --tile``), after saying how much disk that takes.
        workers: decoding processes (default: all cores).
    """
    start = time.perf_counter()
    dataset = data if isinstance(data, Dataset) else discover(data)
    if size < 0 or 0 < size < 16:
        raise CacheError(f"--size {size}: use at least 16 pixels, or 0 for full resolution")
    folder = cache_dir_for(dataset.root, size, cache)
    _refuse_inside(folder, dataset.root)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        remove_temporaries(folder)
        done = _read_chunks(folder, size)
        todo, reused = [], 0
        stats: dict[str, tuple[int, int]] = {}
        for item in dataset.items:
            key = str(item.path)
            st = item.path.stat()
            stats[key] = (st.st_size, st.st_mtime_ns)
            old = done.get(key)
            if old and (old["file_size"], old["mtime_ns"]) == stats[key]:
                reused += 1
            else:
                todo.append(key)
        if size == 0 and todo:
            _check_disk(folder, todo)
        next_chunk = max((r["chunk"] for r in done.values()), default=-1) + 1
        for record in _decode_all(todo, stats, size, workers, folder, next_chunk):
            done[record["path"]] = record
        errors = _write_manifest(folder, dataset, size, done)
    return PrepareResult(
        folder, dataset, len(dataset.items), len(todo), reused, errors, time.perf_counter() - start
    )


def open_cache(
    data: str | os.PathLike,
    cache: str | os.PathLike | None = None,
    size: int = 256,
    workers: int | None = None,
) -> Cache:
    """The prepared cache of ``data`` at ``size`` (preparing it first when needed); the
    images left out (unreadable, bombs, too small) are said in one line."""
    result = prepare(data, cache=cache, size=size, workers=workers)
    if result.errors:
        path, why = result.errors[0]
        say(
            f"left out {len(result.errors)} image(s) that cannot be used (first: {path}: "
            f"{why}); cropdoc prepare lists them all"
        )
    return Cache(result.cache)


def _refuse_inside(folder: Path, root: Path) -> None:
    data_dir = root.resolve() if root.is_dir() else root.resolve().parent
    target = folder.expanduser().resolve()
    if target == data_dir or data_dir in target.parents:
        raise CacheError(
            f"the cache {folder} would be inside the dataset folder {data_dir}: "
            "choose a --cache outside it"
        )


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CacheError(f"another cropdoc prepare is writing {folder}: wait for it") from None
        yield


def _chunk_name(chunk: int, suffix: str) -> str:
    return f"chunk-{chunk:06d}{suffix}"


def _read_chunks(folder: Path, size: int) -> dict[str, dict]:
    """The records of every complete chunk, later chunks overriding earlier ones."""
    done: dict[str, dict] = {}
    for meta in sorted(folder.glob("chunk-*.json")):
        try:
            chunk = json.loads(meta.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # not ours, or damaged by hand: its images are decoded again
        if chunk.get("version") != CACHE_VERSION or chunk.get("size") != size:
            continue
        pixels = meta.with_suffix(".bin")
        expected = sum(3 * r["shape"][0] * r["shape"][1] for r in chunk["records"] if "shape" in r)
        if not pixels.exists() or pixels.stat().st_size != expected:
            continue  # pixels lost (a power cut before they reached the disk): decode again
        for record in chunk["records"]:
            done[record["path"]] = record
    return done


def _check_disk(folder: Path, todo: list[str]) -> None:
    """Say how much disk the full-resolution pixels of ``todo`` take, before decoding them;
    refuse when the disk lacks it."""
    from PIL import Image

    need = 0
    for path in todo:
        try:
            with Image.open(path) as im:  # reads the header only
                need += 3 * im.size[0] * im.size[1]
        except Exception:  # noqa: S112 - an unreadable file is reported by the decoder
            continue
    free = shutil.disk_usage(folder).free
    say(
        f"prepare: {len(todo)} images at full resolution take about {need / 1e9:.1f} GB "
        f"in {folder} ({free / 1e9:.1f} GB free)"
    )
    if need > free:
        raise CacheError(
            f"full-resolution pixels need {need / 1e9:.1f} GB but {folder} has "
            f"{free / 1e9:.1f} GB free: free some disk or choose a --cache elsewhere"
        )


def _decode(path: str, size: int) -> tuple[np.ndarray | None, tuple[int, int], str | None]:
    try:
        pixels, orig = read_image(path, max_size=size or None)
        return pixels, orig, None
    except ImageError as exc:
        return None, (0, 0), str(exc)
    except Exception as exc:  # a bad file must never stop a run
        return None, (0, 0), f"unreadable ({type(exc).__name__}: {exc})"


def _prepare_chunk(task: tuple[Path, int, int, list[tuple[str, int, int]]]) -> list[dict]:
    """Decode one chunk's files and write its ``.bin`` then its ``.json`` (in a worker)."""
    folder, chunk, size, files = task
    records, arrays, offset = [], [], 0
    for path, file_size, mtime_ns in files:
        pixels, orig, error = _decode(path, size)
        record = {
            "path": path,
            "file_size": file_size,
            "mtime_ns": mtime_ns,
            "chunk": chunk,
            "orig_size": list(orig),
            "error": error,
        }
        if pixels is not None:
            record.update(offset=offset, shape=list(pixels.shape[:2]))
            arrays.append(pixels)
            offset += pixels.nbytes
        records.append(record)

    def write_pixels(f) -> None:
        for pixels in arrays:
            f.write(memoryview(np.ascontiguousarray(pixels)).cast("B"))

    # pixels can be decoded again, so they skip the slow fsync; _read_chunks checks their size
    atomic_write(folder / _chunk_name(chunk, ".bin"), write_pixels, durable=False)
    atomic_write_json(
        folder / _chunk_name(chunk, ".json"),
        {"version": CACHE_VERSION, "size": size, "records": records},
    )
    return records


def _decode_all(
    todo: list[str],
    stats: dict[str, tuple[int, int]],
    size: int,
    workers: int | None,
    folder: Path,
    first_chunk: int,
) -> Iterator[dict]:
    """Decode ``todo`` in parallel; each worker writes whole chunks of its own."""
    if not todo:
        return
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    per_chunk = max(8, min(CHUNK_IMAGES, len(todo) // (16 * workers)))  # small tail
    if size == 0:
        per_chunk = FULL_CHUNK_IMAGES  # a worker holds its chunk's pixels until written
    tasks = [
        (folder, first_chunk + n, size, [(p, *stats[p]) for p in todo[i : i + per_chunk]])
        for n, i in enumerate(range(0, len(todo), per_chunk))
    ]
    pool = fork_pool(workers) if workers > 1 else None
    results = pool.imap(_prepare_chunk, tasks) if pool else map(_prepare_chunk, tasks)
    try:
        with Progress(len(todo), "prepare") as progress:
            for records in results:
                progress.update(len(records))
                yield from records
    finally:
        if pool:
            pool.terminate()


def _write_manifest(folder: Path, dataset: Dataset, size: int, done: dict[str, dict]):
    """Write ``manifest.json`` for the dataset's current items; drop chunks none of them use."""
    images, errors, used = [], [], set()
    for item in dataset.items:
        record = done[str(item.path)]
        used.add(record["chunk"])
        if record["error"]:
            errors.append((str(item.path), record["error"]))
            continue
        images.append(
            {
                "path": str(item.path),
                "label": item.label,
                "split": item.split,
                "meta": item.meta,
                "orig_size": record["orig_size"],
                "shape": record["shape"],
                "chunk": record["chunk"],
                "offset": record["offset"],
                "file_size": record["file_size"],
                "mtime_ns": record["mtime_ns"],
            }
        )
    classes = dataset.classes
    atomic_write_json(
        folder / "manifest.json",
        {
            "version": CACHE_VERSION,
            "root": str(dataset.root),
            "layout": dataset.layout,
            "size": size,
            "classes": classes,
            "images": images,
            "errors": [{"path": p, "reason": r} for p, r in errors],
        },
    )
    for meta in folder.glob("chunk-*.json"):
        number = int(meta.stem.split("-")[1])
        if number not in used:
            meta.unlink()
            (folder / _chunk_name(number, ".bin")).unlink(missing_ok=True)
    if not images:
        raise DatasetError(f"none of the images in {dataset.root} could be decoded")
    return errors
