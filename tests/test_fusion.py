"""Several photos of one plant, one answer: the fusion by hand, demo plants drawn in several
views, and predict --group-by (a CSV column, or the folder) on real pixels."""

from __future__ import annotations

import csv
import json

import cli_process
import numpy as np
import pytest
from PIL import Image, ImageFilter

from cropdoc.core.errors import UserError
from cropdoc.data.demo import make_demo_data
from cropdoc.inference.fusion import combine, fuse
from cropdoc.inference.predictions import ANSWER_KEYS


def test_fusion_by_hand_and_what_is_left_out():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert np.allclose(combine(probs), [0.55, 0.45])  # the mean, by default
    geometric = np.sqrt([0.18, 0.08])
    assert np.allclose(combine(probs, "logmean"), geometric / geometric.sum())  # [0.6, 0.4]
    paths = ["a.jpg", "b.jpg", "c.jpg"]
    three = np.array([[0.7, 0.3], [0.1, 0.9], [0.6, 0.4]])
    found = fuse(paths, three, np.array([0.5, 3.0, 0.2]), ["", "", "blurred"], 0.5)
    assert found.used == ["a.jpg"] and found.verdict == "diagnosis"
    assert found.left_out[0] == ("b.jpg", "out of scope")
    assert found.left_out[1][0] == "c.jpg" and found.left_out[1][1].startswith("retake: blurred")
    nothing = fuse(paths[:1], three[:1], np.array([0.1]), ["too_dark"], 0.5)
    assert nothing.verdict == "retake" and nothing.used == []
    with pytest.raises(UserError, match="--fuse must be one of"):
        combine(probs, "median")


def test_demo_plants_in_several_views(tmp_path):
    one = make_demo_data(tmp_path / "one", per_class=2, classes=["blast", "normal"], workers=1)
    views = make_demo_data(tmp_path / "three", per_class=2, classes=["blast", "normal"],
                           views=3, workers=1)  # fmt: skip
    assert views["train_images"] == 3 * one["train_images"]
    with open(tmp_path / "three" / "train.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {r["plant"] for r in rows} == {
        "103000",
        "103001",
        "108000",
        "108001",
    }
    folder = tmp_path / "three" / "train_images" / "blast"
    first, other = (np.asarray(Image.open(folder / f"103000-{v}.jpg")) for v in (0, 1))
    assert first.shape == other.shape and np.abs(first.astype(int) - other).mean() > 5
    # the first view is the single-view photo itself
    same = (tmp_path / "one" / "train_images" / "blast" / "103000.jpg").read_bytes()
    assert (folder / "103000-0.jpg").read_bytes() == same
    assert (tmp_path / "three" / "masks" / "blast" / "103000-2.png").exists()


@pytest.mark.slow
def test_predict_group_by_fuses_each_plant(trained_run, tmp_path):
    from cropdoc.inference.predict import predict

    data = make_demo_data(tmp_path / "plants", per_class=2, classes=["blast", "normal"],
                          views=3, seed=5, workers=1)["root"]  # fmt: skip
    with open(f"{data}/train.csv") as f:
        rows = list(csv.DictReader(f))
    photo = f"{data}/train_images/blast/{rows[0]['image_id']}"
    Image.open(photo).filter(ImageFilter.GaussianBlur(3)).save(tmp_path / "shaky.jpg")
    lines = ["path,plant"]
    lines += [f"{data}/train_images/{r['label']}/{r['image_id']},{r['plant']}" for r in rows]
    lines.append(f"{tmp_path / 'shaky.jpg'},{rows[0]['plant']}")
    (tmp_path / "plants.csv").write_text("\n".join(lines) + "\n")
    command = ["predict", trained_run]
    done = cli_process.run(*command, tmp_path / "plants.csv", "--group-by", "plant", "--json")
    assert done.returncode == 0, done.stderr
    groups = {g["group"]: g for g in json.loads(done.stdout)["groups"]}
    assert set(groups) == {r["plant"] for r in rows}
    first = groups[rows[0]["plant"]]
    assert first["photos"] == 4 and len(first["used"]) == 3
    assert set(ANSWER_KEYS) <= set(first)  # a group's answer is a photo's, and more
    assert first["left_out"][0]["path"].endswith("shaky.jpg")
    assert first["left_out"][0]["why"].startswith("retake: blurred")
    singles = predict([trained_run], first["used"])
    by_hand = combine(singles.probs)
    assert first["top"][0]["prob"] == pytest.approx(float(by_hand.max()), abs=1e-5)
    assert first["top"][0]["label"] == singles.classes[int(by_hand.argmax())]
    # --group-by folder: the photos of a folder are one plant
    folders = cli_process.run(*command, f"{data}/train_images", "--group-by", "folder",
                              "--fuse", "logmean", "--out", tmp_path / "g.csv")  # fmt: skip
    assert folders.returncode == 0, folders.stderr
    with open(tmp_path / "g.csv") as f:
        written = list(csv.DictReader(f))
    assert sorted(r["group"].split("/")[-1] for r in written) == ["blast", "normal"]
    assert all(r["photos"] == "6" for r in written)
    wrong = cli_process.run(*command, f"{data}/train_images", "--group-by", "plant")
    assert wrong.returncode == 2 and "reads a CSV column" in wrong.stderr
    assert "Traceback" not in wrong.stderr


@pytest.mark.slow
def test_serve_fuses_the_photos_of_one_form(trained_run, tmp_path):
    import uuid

    from test_serve import Server

    from cropdoc.inference.predict import predict

    data = make_demo_data(tmp_path / "plants", per_class=2, classes=["blast", "normal"],
                          views=3, seed=5, workers=1)["root"]  # fmt: skip
    views = [tmp_path / "plants" / "train_images" / "blast" / f"103000-{v}.jpg" for v in range(3)]
    Image.open(views[0]).filter(ImageFilter.GaussianBlur(3)).save(tmp_path / "shaky.jpg")
    photos = [*views, tmp_path / "shaky.jpg"]
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{p.name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode()
            + p.read_bytes()
            + b"\r\n"
            for p in photos
        )
        + f"--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    server = Server(trained_run)
    try:
        status, answer = server.json("POST", "/predict?fuse=1", body, headers)
    finally:
        server.stop()
    assert status == 200, answer
    assert set(ANSWER_KEYS) <= set(answer)
    assert answer["used"] == [p.name for p in views] and len(answer["photos"]) == 4
    assert answer["left_out"][0]["photo"] == "shaky.jpg"
    assert answer["left_out"][0]["why"].startswith("retake: blurred")
    assert answer["photos"][3]["verdict"] == "retake"
    by_hand = combine(predict([trained_run], views).probs)
    assert answer["top"][0]["prob"] == pytest.approx(float(by_hand.max()), abs=1e-4)
    assert data
