"""The demo dataset, ``show`` and ``fetch``."""

from __future__ import annotations

import json
import sys
import zipfile

import cli_process
import numpy as np
import pytest
from conftest import digest, save_rgb
from PIL import Image

from cropdoc.core.errors import UserError
from cropdoc.data.demo import CLASSES, make_demo_data
from cropdoc.data.fetch import fetch
from cropdoc.data.show import show_samples


def test_demo_data_layout_masks_and_small_lesions(demo_data):
    rows = (demo_data / "train.csv").read_text().splitlines()
    assert rows[0] == "image_id,label,variety,age" and len(rows) == 1 + 3 * len(CLASSES)
    for label in CLASSES:
        for image in sorted((demo_data / "train_images" / label).iterdir()):
            assert Image.open(image).size == (480, 640)
            mask = np.asarray(Image.open(demo_data / "masks" / label / f"{image.stem}.png"))
            share = (mask > 0).mean()
            if label == "normal":
                assert share == 0
            else:
                assert 0.0003 < share < 0.02, (label, share)  # a few small lesions
    submission = (demo_data / "sample_submission.csv").read_text().splitlines()
    assert len(submission) == 1 + len(list((demo_data / "test_images").iterdir()))


@pytest.mark.slow
def test_demo_data_is_deterministic_and_refuses_other_folders(tmp_path):
    a = make_demo_data(tmp_path / "a", per_class=2, seed=7, workers=2)
    make_demo_data(tmp_path / "b", per_class=2, seed=7, workers=1)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") and a["train_images"] == 20
    c = make_demo_data(tmp_path / "c", per_class=2, seed=8, workers=1)
    assert digest(tmp_path / "c") != digest(tmp_path / "a") and c["test_images"] == 10
    user = tmp_path / "mine"
    save_rgb(user / "photo.jpg", (1, 2, 3))
    before = digest(user)
    with pytest.raises(UserError, match="not empty"):
        make_demo_data(user, per_class=2)
    assert digest(user) == before


def test_show_draws_a_row_per_label(demo_data, tmp_path):
    result = show_samples(demo_data, out=tmp_path / "grid.png", per_label=2)
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size[1] >= 10 * 192 and result["shown"] == {c: 2 for c in CLASSES}
    pixels = np.asarray(grid.convert("RGB"))
    assert pixels[:, 260:].std() > 10  # photos, not a blank page


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_fetch_unpacks_a_local_zip(tmp_path):
    archive = _zip(
        tmp_path / "paddy.zip", {"train.csv": "image_id,label\n", "train_images/blast/1.jpg": b"x"}
    )
    result = fetch(str(archive), tmp_path / "data")
    assert (
        result["files"] == 2 and (tmp_path / "data" / "train_images" / "blast" / "1.jpg").exists()
    )
    with pytest.raises(UserError, match="not empty"):
        fetch(str(archive), tmp_path / "data")


def test_fetch_refuses_unsafe_zips_and_leaves_nothing(tmp_path):
    archive = _zip(tmp_path / "evil.zip", {"ok.txt": "fine", "../escape.txt": "bad"})
    with pytest.raises(UserError, match="unsafe path"):
        fetch(str(archive), tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out").exists()
    (tmp_path / "broken.zip").write_bytes(b"PK not really")
    with pytest.raises(UserError, match="not a valid zip"):
        fetch(str(tmp_path / "broken.zip"), tmp_path / "out")


def test_fetch_without_kaggle_client_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kaggle", None)
    with pytest.raises(UserError, match=r"pip install 'cropdoc\[kaggle\]'"):
        fetch("kaggle:paddy-disease-classification", tmp_path / "d")


def test_cli_demo_data_prepare_show_json(tmp_path):
    def cropdoc(*args):
        out = cli_process.run(*args, "--json", check=True)
        return json.loads(out.stdout)

    data = cropdoc("demo-data", tmp_path / "d", "--per-class", 2)
    assert data["train_images"] == 20
    scan = cropdoc("scan", tmp_path / "d")
    assert scan["layout"] == "kaggle" and scan["unlabelled_test"] == 10
    prepared = cropdoc("prepare", tmp_path / "d", "--cache", tmp_path / "c", "--size", 128)
    assert prepared["cached"] == 30 and prepared["errors"] == []
    shown = cropdoc("show", tmp_path / "d", "--out", tmp_path / "s.png", "--per-label", 1)
    assert (tmp_path / "s.png").exists() and len(shown["shown"]) == 10


def test_a_demo_run_is_reused_only_when_whole_and_newer_than_its_data(demo_data, tmp_path):
    import os

    from cropdoc.data.demo import MARKER
    from cropdoc.demo import DEMO_TRAINING, finished

    run = tmp_path / "run"
    run.mkdir()
    epochs = DEMO_TRAINING["epochs"]
    rows = "".join(f"{n},train,1.0,1.0,0.5,0.5,100,1.0,1.0\n" for n in range(epochs))
    (run / "metrics.csv").write_text("epoch,phase,a,b,c,d,e,f,g\n" + rows)
    (run / "model.json").write_text("{}")
    assert finished(run, demo_data)
    marker = (demo_data / MARKER).stat().st_mtime
    os.utime(run / "model.json", (marker - 60, marker - 60))  # trained before the data
    assert not finished(run, demo_data)
    os.utime(run / "model.json", (marker + 60, marker + 60))
    (run / "metrics.csv").write_text("epoch,phase\n" + rows.splitlines(keepends=True)[0])
    assert not finished(run, demo_data)  # killed after its first epoch
    assert not finished(tmp_path / "none", demo_data)
