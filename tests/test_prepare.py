"""``prepare``: bad files reported and skipped, good ones cached right, originals untouched,
only new or changed files redone, and a killed run completed by the next."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import digest, save_rgb
from PIL import Image

from cropdoc.data.cache import Cache, CacheError, prepare
from cropdoc.data.images import load_image

BAD = {
    "zero.jpg": "empty file",
    "truncated.jpg": "truncated",
    "text.jpg": "not an image",
    "tiny.png": "too small",
    "bomb.png": "decompression bomb",
}


def test_prepare_reports_bad_files_and_caches_good_ones(corpus, tmp_path):
    before = digest(corpus)
    result = prepare(corpus, cache=tmp_path / "cache", size=32, workers=2)
    assert digest(corpus) == before
    errors = {os.path.basename(p): reason for p, reason in result.errors}
    assert set(errors) == set(BAD)
    for name, reason in BAD.items():
        assert reason in errors[name]
    skipped = {p.name: r for p, r in result.dataset.skipped}
    assert skipped[".hidden.jpg"] == "hidden file" and "notes.txt" in skipped

    cache = Cache(tmp_path / "cache")
    assert cache.classes == ["healthy", "mildew", "rust"]
    by_name = {os.path.basename(e.path): i for i, e in enumerate(cache.images)}
    assert len(by_name) == len(cache) == 12 + 7
    for name, index in by_name.items():
        path = cache.images[index].path
        assert np.array_equal(cache.pixels(index), load_image(path, max_size=32)), name
        assert max(cache.pixels(index).shape[:2]) <= 32

    rotated = cache.pixels(by_name["rotated.jpg"])
    assert rotated.shape[0] > rotated.shape[1]  # upright: taller than wide
    assert rotated[2, rotated.shape[1] // 2, 0] > 180  # red on top
    assert rotated[-3, rotated.shape[1] // 2, 2] > 180  # blue below
    alpha = cache.pixels(by_name["alpha.png"])
    assert tuple(alpha[5, 2]) == (40, 160, 60) and tuple(alpha[5, -2]) == (255, 255, 255)
    assert np.abs(cache.pixels(by_name["cmyk.jpg"]).astype(int) - (40, 160, 60)).max() <= 6
    assert (cache.pixels(by_name["deep.png"]) == round(40000 / 257)).all()
    assert cache.images[by_name["feuille_malade_été_叶.jpg"]].label == "healthy"


def test_rerun_decodes_only_new_or_changed_files(corpus, tmp_path):
    first = prepare(corpus, cache=tmp_path / "c", size=32, workers=1)
    again = prepare(corpus, cache=tmp_path / "c", size=32, workers=1)
    assert again.decoded == 0 and again.reused == first.total
    changed = corpus / "mildew" / "mildew_0.jpg"
    save_rgb(changed, (0, 0, 250))
    save_rgb(corpus / "mildew" / "new.jpg", (0, 0, 250))
    (corpus / "rust" / "rust_3.jpg").unlink()
    third = prepare(corpus, cache=tmp_path / "c", size=32, workers=1)
    assert third.decoded == 2
    cache = Cache(tmp_path / "c")
    paths = [e.path for e in cache.images]
    assert len(paths) == len(set(paths)) == first.total - len(BAD)
    index = paths.index(str(changed))
    assert cache.pixels(index)[..., 2].mean() > 200


def test_default_cache_is_keyed_and_outside_the_dataset(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("CROPDOC_CACHE", str(tmp_path / "home-cache"))
    a = prepare(corpus, size=32, workers=1)
    b = prepare(corpus, size=24, workers=1)
    assert a.cache.parent == b.cache.parent == tmp_path / "home-cache"
    assert a.cache != b.cache
    with pytest.raises(CacheError, match="inside the dataset"):
        prepare(corpus, cache=corpus / "cache", workers=1)


def _photos(root, n):
    """``n`` 640x480 JPEGs in a two-class folder dataset."""
    rng = np.random.default_rng(1)
    for i in range(n):
        label = "blast" if i % 2 else "normal"
        tile = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(tile).resize((640, 480), Image.Resampling.NEAREST)
        (root / label).mkdir(parents=True, exist_ok=True)
        image.save(root / label / f"{i:05d}.jpg", quality=80)


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_prepare_is_completed_by_the_next_run(tmp_path, workers):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _photos(data, 700)
    command = [
        sys.executable,
        "-m",
        "cropdoc",
        "prepare",
        str(data),
        "--cache",
        str(cache),
        "--workers",
        str(workers),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(cache.glob("chunk-*.json")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # the workers end with their parent, quietly (the pipe closes once they are all gone)
    assert "Traceback" not in proc.stderr.read()
    assert not (cache / "manifest.json").exists(), "prepare finished before it was killed"
    done = sum(len(json.loads(p.read_text())["records"]) for p in cache.glob("chunk-*.json"))
    assert 0 < done < 700

    result = subprocess.run([*command, "--json"], capture_output=True, text=True, check=True)
    summary = json.loads(result.stdout)
    assert summary["reused"] == done and summary["decoded"] == 700 - done
    assert not list(cache.glob(".*.tmp"))
    cached = Cache(cache)
    paths = [e.path for e in cached.images]
    assert len(paths) == len(set(paths)) == 700
    for index in (0, 350, 699):
        assert np.array_equal(cached.pixels(index), load_image(paths[index], max_size=256))


def test_progress_lines_show_on_the_command_line_and_json_is_silent(corpus, tmp_path):
    def run(cache: str, *extra):  # a new cache each time: every image is decoded
        command = [sys.executable, "-m", "cropdoc", "prepare", str(corpus), "--workers", "1"]
        command += ["--cache", str(tmp_path / cache), *extra]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)

    shown = run("a")
    assert "prepare: 24/24 (100%)" in shown.stderr  # a plain line in a log, not a bar
    silent = run("b", "--json")
    assert silent.stderr == "" and json.loads(silent.stdout)["decoded"] == 24


def test_the_api_is_silent_unless_asked(corpus, tmp_path, capsys):
    from cropdoc.core.progress import show_output

    prepare(corpus, cache=tmp_path / "a", workers=1)
    assert capsys.readouterr().err == ""
    show_output()
    try:
        prepare(corpus, cache=tmp_path / "b", workers=1)
        assert "prepare: 24/24 (100%)" in capsys.readouterr().err
    finally:
        show_output(False)
