"""``predict``: bad files listed, Kaggle submissions, ensembles, and tampered bundles refused."""

from __future__ import annotations

import csv
import json

import cli_process
import numpy as np
import pytest
import torch
from conftest import save_rgb
from safetensors.torch import load_file, save_file

from cropdoc.core.errors import UserError
from cropdoc.data.images import load_image
from cropdoc.data.loader import make_canvas
from cropdoc.inference.predict import predict, submission, write_predictions
from cropdoc.model.archs import create_model
from cropdoc.model.build import load_bundle, save_bundle
from cropdoc.model.inputs import view_scores
from cropdoc.model.scoring import load_scoring_model

CLASSES = ["blast", "brown_spot", "normal"]
# the bytes of a pickle of {"a": 1}: what a renamed .pt/.pkl file would start with
PICKLE = b"\x80\x05\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s."


def _bundle(folder, seed: int, classes=CLASSES):
    torch.manual_seed(seed)
    model = create_model("test_resnet", len(classes), pretrained=False)
    meta = {
        "arch": "test_resnet",
        "classes": classes,
        "size": [64, 48],
        "item_size": [64, 48],
        "resize": "squish",
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "cache_size": 96,
    }
    return save_bundle(folder, model.eval(), meta)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    for i, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200), (90, 90, 90)]):
        save_rgb(folder / f"leaf{i}.jpg", colour, size=(120, 160))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    (folder / "empty.png").write_bytes(b"")
    return folder


def test_folder_with_bad_files(tmp_path, photos):
    result = predict([_bundle(tmp_path / "m", 0)], [photos])
    assert [p.split("/")[-1] for p in result.paths] == [f"leaf{i}.jpg" for i in range(4)]
    assert {p.split("/")[-1] for p, _ in result.errors} == {"broken.jpg", "empty.png"}
    assert np.allclose(result.probs.sum(1), 1) and result.probs.shape == (4, 3)
    out = write_predictions(result, tmp_path / "preds.csv", k=2)
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 6 and rows[0]["label"] in CLASSES and rows[-1]["error"]
    data = json.loads(write_predictions(result, tmp_path / "p.json", k=3).read_text())
    assert len(data["predictions"][0]["top"]) == 3 and len(data["errors"]) == 2


def test_ensemble_is_the_weighted_mean(tmp_path, photos):
    a, b = _bundle(tmp_path / "a", 1), _bundle(tmp_path / "b", 2)
    pa = predict([a], [photos]).probs
    pb = predict([b], [photos]).probs
    assert not np.allclose(pa, pb)
    both = predict([a, b], [photos]).probs
    assert np.allclose(both, (pa + pb) / 2, atol=1e-6)
    weighted = predict([a, b], [photos], weights=[2, 1]).probs
    assert np.allclose(weighted, (2 * pa + pb) / 3, atol=1e-6)
    other = _bundle(tmp_path / "c", 3, classes=["blast", "hispa", "normal"])
    with pytest.raises(UserError, match=r"only in the first: \['brown_spot'\]"):
        predict([a, other], [photos])


def test_tta_is_the_mean_of_the_views(tmp_path, photos):
    folder = _bundle(tmp_path / "m", 0)
    plain = predict([folder], [photos])
    tta = predict([folder], [photos], tta=True).probs
    model, meta = load_scoring_model(folder)
    pixels = [load_image(p, max_size=96) for p in plain.paths]
    canvas, sizes = make_canvas(pixels)
    views = view_scores(model, meta, canvas, sizes, tta=True)[0]
    assert views.shape == (4, 4, 3)
    assert np.allclose(views[0], plain.probs, atol=1e-6)
    assert np.allclose(tta, views.mean(0), atol=1e-6)
    # the mirror view is the plain view of the mirrored photo
    mirrored, _ = make_canvas([np.ascontiguousarray(p[:, ::-1]) for p in pixels])
    assert np.allclose(views[1], view_scores(model, meta, mirrored, sizes, False)[0][0], atol=1e-5)
    assert not np.allclose(tta, plain.probs)
    # an image's TTA answer does not depend on the batch it shares
    alone = predict([folder], [plain.paths[2]], tta=True).probs
    assert np.allclose(alone[0], tta[2], atol=1e-6)


def test_submission_follows_the_sample(tmp_path, photos):
    model = _bundle(tmp_path / "m", 0)
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("image_id,label\nleaf2.jpg,\nleaf0.jpg,\nleaf3.jpg,\n")
    out = submission([model], sample, photos, tmp_path / "sub.csv")
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["image_id"] for r in rows] == ["leaf2.jpg", "leaf0.jpg", "leaf3.jpg"]
    assert all(r["label"] in CLASSES for r in rows)
    sample.write_text("image_id,label\nleaf0.jpg,\nnot_there.jpg,\n")
    with pytest.raises(UserError, match="not_there.jpg"):
        submission([model], sample, photos, tmp_path / "sub2.csv")
    assert not (tmp_path / "sub2.csv").exists()


def test_tampered_bundles_are_refused(tmp_path):
    good = _bundle(tmp_path / "good", 0)
    load_bundle(good)
    state = load_file(good / "model.safetensors")

    shape = _bundle(tmp_path / "shape", 0)
    key = next(k for k in state if k.endswith("weight") and state[k].ndim == 4)
    changed = dict(state, **{key: torch.zeros(1, *state[key].shape[1:])})
    save_file(changed, shape / "model.safetensors")
    # one line naming the tensor, its shape and the expected one
    with pytest.raises(
        UserError, match=rf"does not fit test_resnet with 3 classes: tensor {key} has shape 1x"
    ):
        load_bundle(shape)

    missing = _bundle(tmp_path / "missing", 0)
    save_file({k: v for k, v in state.items() if k != key}, missing / "model.safetensors")
    with pytest.raises(UserError, match=f"tensor {key} is missing"):
        load_bundle(missing)

    truncated = _bundle(tmp_path / "truncated", 0)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot read"):
        load_bundle(truncated)

    pickled = _bundle(tmp_path / "pickled", 0)
    (pickled / "model.safetensors").write_bytes(PICKLE)
    with pytest.raises(UserError, match="cannot read"):
        load_bundle(pickled)

    meta = _bundle(tmp_path / "meta", 0)
    (meta / "model.json").write_text('{"arch": "test_resnet"}')
    with pytest.raises(UserError, match="lacks classes"):
        load_bundle(meta)


@pytest.mark.slow
def test_cli_predict_and_submission(tmp_path, photos):
    model = _bundle(tmp_path / "m", 0)
    out = cli_process.run(
        "predict", model, photos, "--out", tmp_path / "p.csv", "--json", check=True
    )
    result = json.loads(out.stdout)
    assert len(result["predictions"]) == 4 and len(result["errors"]) == 2
    assert (tmp_path / "p.csv").exists()
    sample = tmp_path / "sample.csv"
    sample.write_text("image_id,label\nleaf1.jpg,\nleaf0.jpg,\n")
    sub = cli_process.run(
        "predict", model, "--submission", sample, "--images", photos, "--out",
        tmp_path / "s.csv", "--json", check=True,
    )  # fmt: skip
    assert json.loads(sub.stdout)["submission"] == str(tmp_path / "s.csv")
    assert (tmp_path / "s.csv").read_text().splitlines()[1].startswith("leaf1.jpg,")
    bad = cli_process.run("predict", photos)
    assert bad.returncode == 2 and "start with at least one model" in bad.stderr
    assert "Traceback" not in bad.stderr
