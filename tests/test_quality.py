"""Photo-quality checks on real pixels: a demo photo passes; the same photo blurred, darkened,
overexposed or shrunk, and a photo of sky, are sent back with the reason, in predict (torch
and ONNX Runtime alike) and in the CSV/JSON output."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cropdoc.contract.quality import ADVICE, check, measure
from cropdoc.data.images import read_image


def _leaf(demo_data) -> Image.Image:
    return Image.open(sorted((demo_data / "train_images").rglob("*.jpg"))[5]).convert("RGB")


def _faults(leaf: Image.Image) -> dict[str, Image.Image]:
    pixels = np.asarray(leaf).astype(np.float64)
    y = np.linspace(0, 1, leaf.height)[:, None, None]
    sky = np.array([70, 120, 200]) + np.array([90, 80, 40]) * y + np.zeros(pixels.shape)
    return {
        "blurred": leaf.filter(ImageFilter.GaussianBlur(2.5)),
        "too_dark": Image.fromarray((pixels * 0.2).astype(np.uint8)),
        "overexposed": Image.fromarray(np.clip(pixels * 5, 0, 255).astype(np.uint8)),
        "too_small": leaf.resize((72, 96)),
        "not_a_leaf": Image.fromarray(sky.astype(np.uint8)),
    }


def test_each_fault_is_found_for_its_own_reason(demo_data, tmp_path):
    leaf = _leaf(demo_data)
    assert check(np.asarray(leaf)).problem == ""
    for problem, image in _faults(leaf).items():
        path = tmp_path / f"{problem}.jpg"
        image.save(path, quality=90)
        found = check(*read_image(path, max_size=256))  # as predict decodes it
        assert found.problem == problem, (problem, found.measures)
        assert found.advice == ADVICE[problem]
        assert found.advice.startswith(problem.replace("_", " ").replace("a leaf", "a leaf:"))
    # the size is the photo's as taken, not the decoded copy's
    big = tmp_path / "big.jpg"
    leaf.resize((960, 1280)).save(big, quality=90)
    pixels, original = read_image(big, max_size=256)
    assert max(pixels.shape) == 256 and measure(pixels, original)["side"] == 960


@pytest.mark.slow
def test_predict_sends_back_the_faulty_photos_in_both_runtimes(trained_run, demo_data, tmp_path):
    from cropdoc.inference.export import export_onnx
    from cropdoc.inference.onnx_runtime import predict_onnx
    from cropdoc.inference.predict import predict
    from cropdoc.inference.predictions import write_predictions

    leaf = _leaf(demo_data)
    photos = tmp_path / "photos"
    photos.mkdir()
    leaf.save(photos / "a-good.jpg", quality=90)
    for problem, image in _faults(leaf).items():
        image.save(photos / f"{problem}.jpg", quality=90)
    found = predict([trained_run], [photos])
    verdicts = dict(zip([p.split("/")[-1] for p in found.paths], found.verdicts(), strict=True))
    assert verdicts["a-good.jpg"] != "retake"
    assert all(verdicts[f"{p}.jpg"] == "retake" for p in _faults(leaf))
    rows = {r["path"].split("/")[-1]: r for r in found.top(3)}
    assert rows["blurred.jpg"]["advice"].startswith("blurred: hold the phone still")
    assert rows["blurred.jpg"]["top"]  # the model's answer is still there to see
    export_onnx(trained_run, tmp_path / "m.onnx")
    assert predict_onnx(tmp_path / "m.onnx", [photos]).verdicts() == found.verdicts()
    write_predictions(found, tmp_path / "preds.csv", 2)
    with open(tmp_path / "preds.csv") as f:
        written = {r["path"].split("/")[-1]: r for r in csv.DictReader(f)}
    assert written["too_dark.jpg"]["verdict"] == "retake"
    assert written["too_dark.jpg"]["quality"] == "too_dark"
    assert written["a-good.jpg"]["quality"] == ""
    unchecked = predict([trained_run], [photos], quality=False)
    assert "retake" not in unchecked.verdicts()
