"""cropdoc score: parquet shards on worker processes and on real local Ray clusters, the
same bytes from both, resumed after SIGKILL with every photo scored once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cli_process
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from cropdoc.core.errors import UserError
from cropdoc.inference.predict import predict
from cropdoc.model.archs import create_model
from cropdoc.model.build import save_bundle
from cropdoc.scale.engines import Job
from cropdoc.scale.score import score

CLASSES = [f"c{i}" for i in range(6)]
PHOTOS = 1000


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """test_resnet with random weights at 64x48, decoding photos to 96 px."""
    torch.manual_seed(0)
    net = create_model("test_resnet", len(CLASSES), pretrained=False).eval()
    meta = {"arch": "test_resnet", "classes": CLASSES, "size": [48, 64], "item_size": [48, 64],
            "resize": "squish", "mean": [0.5] * 3, "std": [0.25] * 3, "cache_size": 96}  # fmt: skip
    return save_bundle(tmp_path_factory.mktemp("score") / "model", net, meta)


@pytest.fixture(scope="module")
def photos(demo_data, tmp_path_factory) -> Path:
    """1,000 small JPEGs (176x132: above the quality checks' smallest side) in 20 folders,
    crops of the demo photos shifted and mirrored, and three files that are not photos."""
    root = tmp_path_factory.mktemp("bulk")
    sources = sorted((demo_data / "train_images").rglob("*.jpg"))
    images = [Image.open(p).convert("RGB").resize((216, 162)) for p in sources]
    rng = np.random.default_rng(0)
    for n in range(PHOTOS):
        x, y = rng.integers(0, 40), rng.integers(0, 30)
        crop = images[n % len(images)].crop((x, y, x + 176, y + 132))
        if n % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        folder = root / f"site-{n % 20:02d}"
        folder.mkdir(exist_ok=True)
        crop.save(folder / f"{n:05d}.jpg", quality=85)
    for name in ("broken-1.jpg", "broken-2.png", "empty.jpg"):
        (root / "site-03" / name).write_bytes(b"" if name == "empty.jpg" else b"not a photo")
    return root


def _shards(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*.parquet"))}


HEAD = """
import sys, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes it
ray.shutdown()
"""


@pytest.mark.slow
def test_ray_engine_writes_the_same_shards_as_the_local_one(model, photos, tmp_path):
    """1,003 files scored by two local worker processes, by two actors of a local Ray
    cluster (2 CPUs, started and stopped by the run) and by two actors of a Ray cluster
    already running here (started by another process, joined by ``cropdoc score --engine
    ray --address ADDRESS``): the same shard files byte for byte, one row per file, the
    unreadable ones with their reason, and the answers are predict's."""
    job = Job((str(model),), "torch", threads=1, top_k=3, bs=32)
    local = score(job, [photos], tmp_path / "local", "local", workers=2, shard_size=300)
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        address = head.stdout.readline().strip()
        assert address, "the head process did not start a cluster"
        command = ["score", model, photos, "--out", tmp_path / "joined", "--engine", "ray",
                   "--address", address, "--workers", 2, "--shard-size", 300, "--json"]  # fmt: skip
        token = {**os.environ, "RAY_AUTH_MODE": "token"}  # as Ray asks of a joining driver
        joined = cli_process.run(*command, env=token, timeout=300)
        assert joined.returncode == 0, joined.stderr
        assert json.loads(joined.stdout)["photos"] == PHOTOS + 3
        # without --address a run starts a cluster of its own beside the running one
        ray = score(job, [photos], tmp_path / "ray", "ray", workers=2, shard_size=300)
    finally:
        head.stdin.close()
        head.wait(timeout=60)
    assert local["photos"] == ray["photos"] == PHOTOS + 3
    assert local["scored"] == ray["scored"] == PHOTOS + 3
    assert local["verdicts"] == ray["verdicts"] and sum(local["verdicts"].values()) == PHOTOS
    assert sorted(u["path"] for u in local["unreadable"]) == [
        str(photos / "site-03" / n) for n in ("broken-1.jpg", "broken-2.png", "empty.jpg")
    ]
    written = _shards(tmp_path / "local")
    assert len(written) == 4  # 1,003 files in shards of 300
    assert written == _shards(tmp_path / "ray") == _shards(tmp_path / "joined")
    table = pq.read_table(tmp_path / "local").to_pydict()  # the folder as one dataset
    assert len(table["path"]) == PHOTOS + 3 and len(set(table["path"])) == PHOTOS + 3
    some = sorted((photos / "site-07").glob("*.jpg"))[:20]
    expected = predict([model], some)
    rows = {p: n for n, p in enumerate(table["path"])}
    for path, probs, verdict, problem in zip(expected.paths, expected.probs, expected.verdicts(),
                                             expected.problems, strict=True):  # fmt: skip
        n = rows[path]
        assert table["label"][n] == CLASSES[int(probs.argmax())]
        assert table["prob"][n] == pytest.approx(float(probs.max()), abs=1e-6)
        assert table["verdict"][n] == verdict and table["error"][n] is None
        assert table["quality"][n] == (problem or None)
    summary = json.loads((tmp_path / "ray" / "_summary.json").read_text())
    assert summary["engine"] == "ray" and summary["photos"] == PHOTOS + 3


@pytest.mark.slow
def test_a_killed_score_resumes_and_scores_every_photo_once(model, photos, tmp_path):
    """SIGKILL to the whole process group of a running ``cropdoc score`` once a few shards
    are written; the rerun keeps those files as they were, scores the rest, and every
    photo is in exactly one row."""
    out, err = tmp_path / "out", tmp_path / "stderr"
    command = ["score", model, photos, "--out", out, "--shard-size", 100, "--workers", 2,
               "--bs", 16]  # fmt: skip
    run = cli_process.start(*command, out=os.devnull, err=err, session=True)
    deadline = time.monotonic() + 240
    while len(list(out.glob("part-*.parquet"))) < 3 and time.monotonic() < deadline:
        assert run.poll() is None, err.read_text()
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    before = _shards(out)
    shards = -(-(PHOTOS + 3) // 100)
    assert 3 <= len(before) < shards, "killed too late to test a resume"
    again = cli_process.run(*command, "--json", timeout=400)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["photos"] == PHOTOS + 3 and result["scored"] <= PHOTOS + 3 - 100 * len(before)
    after = _shards(out)
    assert len(after) == shards and all(after[name] == data for name, data in before.items())
    paths = pq.read_table(out, columns=["path"]).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == PHOTOS + 3
    assert not list(out.glob(".*.tmp"))


def test_other_settings_or_changed_inputs_are_refused_in_one_line(model, photos, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted((photos / "site-01").glob("*.jpg"))[:6]:
        (few / path.name).write_bytes(path.read_bytes())
    job = Job((str(model),), "torch", threads=1, top_k=2, bs=8)
    first = score(job, [few], tmp_path / "out", workers=1, shard_size=4)
    assert first["photos"] == 6 and len(list((tmp_path / "out").glob("part-*"))) == 2
    with pytest.raises(UserError, match=r"other settings \(top_k\)"):
        score(Job((str(model),), top_k=3), [few], tmp_path / "out", workers=1, shard_size=4)
    (few / "000.jpg").write_bytes((few / sorted(os.listdir(few))[0]).read_bytes())
    with pytest.raises(UserError, match="holds other photos than shard 0"):
        score(job, [few], tmp_path / "out", workers=1, shard_size=4)
    with pytest.raises(UserError, match="--engine must be local or ray"):
        score(job, [few], tmp_path / "new", "spark")
