"""Tiles: the grid, MIL pooling, full-resolution caches, and a tiled run through training,
resume, prediction (torch and ONNX), explanation and serving."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import cli_process
import numpy as np
import pytest
import torch
from conftest import kill_after_epoch
from PIL import Image

from cropdoc.config import TrainConfig
from cropdoc.contract.bundle import BundleMeta
from cropdoc.contract.grid import cut, grid, random_corners, starts
from cropdoc.core.errors import UserError
from cropdoc.data.cache import Cache, CacheError, prepare
from cropdoc.inference.predictions import VERDICTS
from cropdoc.model.mil import MILModel

FIELD = (384, 512)  # (height, width) of the test's field photos
TILE = 128


@pytest.mark.parametrize("length", [50, 128, 129, 300, 512, 1000])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_tiles_cover_the_photo_with_the_asked_overlap(length, overlap):
    positions = starts(length, TILE, overlap)
    covered = np.zeros(max(length, TILE), bool)
    for start in positions:
        assert start >= 0 and (start + TILE <= length or length <= TILE)
        covered[start : start + TILE] = True
    assert covered[:length].all()
    for a, b in zip(positions, positions[1:], strict=False):
        assert a + TILE - b >= overlap * TILE - 1e-9  # neighbours share at least the overlap
    corners = grid(300, 1000, TILE, overlap)
    assert len(corners) == len(starts(300, TILE, overlap)) * len(starts(1000, TILE, overlap))


def test_cut_and_random_corners_stay_inside_real_pixels():
    pixels = np.arange(100 * 150 * 3, dtype=np.uint32).reshape(100, 150, 3).astype(np.uint8)
    tile = cut(pixels, (40, 60), 32)
    assert np.array_equal(tile, pixels[40:72, 60:92])
    small = cut(pixels, (0, 0), 128)  # a photo smaller than the tile: zero padding
    assert np.array_equal(small[:100, :128], pixels[:, :128]) and not small[100:].any()
    corners = random_corners(100, 150, 32, 500, np.random.default_rng(0))
    assert corners[:, 0].max() <= 68 and corners[:, 1].max() <= 118 and corners.min() >= 0


def _mil(pooling: str) -> MILModel:
    from cropdoc.model.timm_import import timm

    return MILModel(timm.create_model("test_resnet", num_classes=2), pooling).eval()


def test_max_pooling_gives_the_photo_the_label_of_its_one_diseased_tile():
    model = _mil("max")
    healthy, diseased = [3.0, 0.0], [0.5, 4.0]
    logits = torch.tensor([[healthy, healthy, diseased, healthy]])
    features = torch.randn(1, 4, 96)
    pooled, pooled_features, weights = model.pool(features, logits, torch.zeros(1, 4))
    assert pooled.argmax(1).item() == 1  # diseased, though three tiles of four say healthy
    assert weights.argmax(1).item() == 2 and weights.sum().item() == pytest.approx(1)
    assert torch.allclose(pooled_features, (weights[..., None] * features).sum(1))


def test_attention_pooling_reads_the_tiles_it_attends_to():
    model = _mil("attention")
    classifier = model.get_classifier()
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.zero_()
        classifier.weight[1, 0] = 10.0  # feature 0 means "diseased"
        classifier.bias[0] = 1.0  # "healthy" unless it shows
    features = torch.zeros(1, 3, 96)
    features[0, 1, 0] = 1.0  # only tile 1 shows the lesion
    scores = torch.tensor([[-5.0, 5.0, -5.0]])  # and the attention picks it
    pooled, _, weights = model.pool(features, torch.zeros(1, 3, 2), scores)
    assert pooled.argmax(1).item() == 1 and weights[0, 1] > 0.99
    pooled, _, _ = model.pool(features, torch.zeros(1, 3, 2), -scores)  # looks elsewhere
    assert pooled.argmax(1).item() == 0
    bags = torch.randn(2, 3, 3, 64, 64)  # forward: (photos, tiles, ...) -> photo logits
    assert model(bags).shape == (2, 2)


def test_attention_pooling_is_new_like_the_head_when_fine_tuning():
    """Fine-tuning trains the head alone first, then the body at 1/100 of its rate: the
    attention pooling starts random like the head, so it trains with the head."""
    from cropdoc.model.archs import head_parameters

    model = _mil("attention")
    head = head_parameters(model)
    assert all(id(p) in head for p in model.attention.parameters())
    assert all(id(p) in head for p in model.get_classifier().parameters())
    assert not any(id(p) in head for p in model.body.conv1.parameters())


@pytest.fixture(scope="module")
def field_data(tmp_path_factory) -> Path:
    from cropdoc.data.demo import make_demo_data

    out = tmp_path_factory.mktemp("field") / "data"
    make_demo_data(out, per_class=4, size=FIELD, classes=["normal", "blast", "hispa"], workers=2)
    return out


def test_field_photos_are_large_with_lesions_of_a_few_pixels(field_data):
    photo = next((field_data / "train_images" / "blast").iterdir())
    assert Image.open(photo).size == (FIELD[1], FIELD[0])
    mask = np.asarray(Image.open(field_data / "masks" / "blast" / f"{photo.stem}.png")) > 0
    assert 0 < mask.mean() < 0.05  # lesions of a few pixels on a few leaves
    rows = (field_data / "train.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 4 and {r.split(",")[1] for r in rows[1:]} == {
        "normal",
        "blast",
        "hispa",
    }


def test_full_resolution_cache_says_its_disk_first_and_keeps_every_pixel(field_data, tmp_path):
    done = _cropdoc("prepare", field_data, "--size", 0, "--cache", tmp_path / "full", check=True)
    said = re.search(r"(\d+) images at full resolution take about ([\d.]+) GB", done.stderr)
    assert said and int(said.group(1)) == 4 * 3 + 3  # every photo, test photos included
    assert float(said.group(2)) == pytest.approx(15 * 3 * FIELD[0] * FIELD[1] / 1e9, abs=0.05)
    assert done.stderr.index("take about") < done.stderr.index("prepare: 15/15")  # first
    cache = Cache(tmp_path / "full")
    assert cache.size == 0 and all(e.shape == FIELD for e in cache.images)
    original = np.asarray(Image.open(cache.images[0].path).convert("RGB"))
    assert np.array_equal(cache.pixels(0), original)


def test_full_resolution_cache_refuses_a_disk_too_small(field_data, tmp_path, monkeypatch):
    import cropdoc.data.cache as cache_module

    class Usage:
        free = 1000

    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: Usage)
    with pytest.raises(CacheError, match="free some disk"):
        prepare(field_data, cache=tmp_path / "full", size=0, workers=1)
    assert not list((tmp_path / "full").glob("chunk-*"))


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"tile": 8}, "--tile must be"),
        ({"tile": 128, "mil": "mean"}, "--mil must be"),
        ({"tile": 128, "progressive": "64,128"}, "--progressive does not apply"),
        ({"tile": 128, "overlap": 0.95}, "--overlap"),
    ],
)
def test_bad_tile_settings_are_one_line(settings, says):
    with pytest.raises(UserError, match=says):
        TrainConfig(data="x", **settings).checked()


def _train_args(data: Path, cache: Path, *extra) -> list[str]:
    common = "--arch test_resnet --no-pretrained --from-scratch --workers 1 --lr 0.01"
    return ["train", str(data), *common.split(), "--cache", str(cache), *map(str, extra)]


def _cropdoc(*args, **kw):
    return cli_process.run(*args, **kw)


@pytest.fixture(scope="module")
def tiled_run(field_data, tmp_path_factory) -> Path:
    """test_resnet on tiles of 128 px with attention pooling, 2 epochs."""
    root = tmp_path_factory.mktemp("tiled")
    args = _train_args(field_data, root / "cache", "--tile", TILE, "--mil", "attention")
    args += ["--tiles-per-image", 4, "--bs", 4, "--epochs", 2, "--out", root / "run"]
    _cropdoc(*args, check=True)
    return root / "run"


def test_tiled_bundle_records_its_tiles_and_predicts_the_same_in_torch_and_onnx(
    tiled_run, field_data, tmp_path
):
    meta = BundleMeta.read(tiled_run)
    assert (meta.tiles.tile, meta.tiles.pooling, meta.tiles.per_image) == (TILE, "attention", 4)
    assert meta.cache_size == 0 and meta.size == (TILE, TILE) and meta.trust.fitted
    exported = json.loads(_cropdoc("export", tiled_run, "--json", check=True).stdout)
    for check in exported["parity"]:
        assert check["max_abs_diff"] < 1e-4 and check["top1_agreement"] == 1.0
    assert (tiled_run / "model.bag.onnx").is_file()
    photos = field_data / "test_images"
    torch_csv, onnx_csv = tmp_path / "torch.csv", tmp_path / "onnx.csv"
    _cropdoc("predict", tiled_run, photos, "--out", torch_csv, check=True)
    _cropdoc("predict", tiled_run, photos, "--runtime", "onnx", "--out", onnx_csv, check=True)
    a, b = (list(csv.DictReader(p.open())) for p in (torch_csv, onnx_csv))
    assert len(a) == len(list(photos.iterdir())) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["label"] == y["label"] and x["top_tile"] == y["top_tile"]
        assert float(x["prob"]) == pytest.approx(float(y["prob"]), abs=1e-4)
        assert float(x["ood_score"]) == pytest.approx(float(y["ood_score"]), rel=1e-3, abs=1e-3)
        x0, y0, w, h = map(int, x["top_tile"].split())
        assert (w, h) == (TILE, TILE) and x0 + w <= FIELD[1] and y0 + h <= FIELD[0]
    rows = json.loads(_cropdoc("predict", tiled_run, photos, "--json", check=True).stdout)
    tiles = rows["predictions"][0]["tiles"]
    assert len(tiles) == 3 and tiles[0]["weight"] >= tiles[1]["weight"] >= tiles[2]["weight"]
    refused = _cropdoc("predict", tiled_run, photos, "--tta")
    assert refused.returncode != 0 and "--tta does not apply" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_explain_stitches_a_map_over_the_whole_photo(tiled_run, field_data, tmp_path):
    from cropdoc.inference.explain import Explainer

    photo = next((field_data / "train_images" / "blast").iterdir())
    item = Explainer(tiled_run)(photo)
    assert item.heatmap.shape == FIELD and item.image.shape == (*FIELD, 3)
    assert 0 < item.heatmap.max() <= 1 and (item.heatmap == 0).mean() > 0  # the hot tiles only
    out = tmp_path / "explained"
    _cropdoc("explain", tiled_run, photo, "--out", out, check=True)
    assert Image.open(next(out.glob("0000-*.png"))).size[0] > 500
    scored = _cropdoc("explain", tiled_run, "--score", field_data / "masks", "--json", check=True)
    result = json.loads(scored.stdout)
    assert result["images"] >= 1 and 0 <= result["pointing_game"] <= 1


_PEAK = """
import re, sys
from cropdoc import predict
result = predict([sys.argv[1]], [sys.argv[2]], device="cpu")
assert not result.errors, result.errors
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_tiled_prediction_memory_does_not_grow_with_the_photo(tiled_run, tmp_path):
    peaks = {}
    for height, width in [(750, 1000), (3000, 4000)]:
        photo = tmp_path / f"{width}.jpg"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(photo)
        out = subprocess.run(
            [sys.executable, "-c", _PEAK, str(tiled_run), str(photo)],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[width] = int(out.stdout.split()[-1])
    pixels = 3000 * 4000 * 3
    # decoding holds the photo twice (Pillow's image and its array); tiles add nothing
    assert peaks[4000] - peaks[1000] < 3 * pixels, peaks


@pytest.mark.slow
def test_killed_tiled_run_resumes_to_the_same_result(field_data, tmp_path):
    args = _train_args(field_data, tmp_path / "cache", "--tile", TILE, "--tiles-per-image", 2)
    args += ["--mil", "max", "--bs", 2, "--epochs", 3]  # the other tests train attention
    whole = _cropdoc(*args, "--out", tmp_path / "whole", "--json", check=True)
    assert json.loads(whole.stdout)["epochs"] == 3
    run = tmp_path / "killed"
    assert 1 <= kill_after_epoch(args, run) < 3, "finished before it was killed"
    resumed = _cropdoc("train", "--resume", run, "--json", check=True)
    assert json.loads(resumed.stdout)["epochs"] == 3
    a, b = (list(csv.DictReader((r / "metrics.csv").open())) for r in (tmp_path / "whole", run))
    assert [r["epoch"] for r in b] == ["0", "1", "2"]
    for x, y in zip(a, b, strict=True):
        assert float(x["valid_loss"]) == pytest.approx(float(y["valid_loss"]), abs=1e-3)
    assert re.search(r'"tile": 128', (run / "model.json").read_text())


@pytest.mark.slow
def test_serve_answers_a_large_upload_with_its_tiles(tiled_run, tmp_path):
    from test_serve import Server, _multipart

    photo = tmp_path / "field.jpg"  # 12 megapixels, smooth, so the JPEG is a phone's few MB
    coarse = np.random.default_rng(1).integers(0, 256, (30, 40, 3), np.uint8)
    Image.fromarray(coarse).resize((4000, 3000), Image.Resampling.BICUBIC).save(photo)
    server = Server(tiled_run)
    try:
        body, headers = _multipart(photo.read_bytes())
        status, answer = server.json("POST", "/predict", body, headers)
        assert status == 200, answer
        assert answer["verdict"] in VERDICTS  # smooth: the quality check may send it back
        x, y, w, h = answer["tiles"][0]["box"]
        assert (w, h) == (TILE, TILE) and x + w <= 4000 and y + h <= 3000
        status, explained = server.json("POST", "/predict?explain=1", body, headers)
        assert status == 200 and explained["tiles"] == answer["tiles"]
        overlay = Image.open(io.BytesIO(base64.b64decode(explained["overlay_png"])))
        assert max(overlay.size) <= 1024  # the full photo's map, shrunk for the page
    finally:
        server.stop()


def test_evaluate_reads_whole_photos_as_validation_did(tiled_run, tmp_path):
    result = json.loads(
        _cropdoc("evaluate", tiled_run, "--out", tmp_path / "eval", "--json", check=True).stdout
    )
    metrics = BundleMeta.read(tiled_run).metrics
    assert result["images"] == 2 and result["error_rate"] == pytest.approx(metrics["error_rate"])
    refused = _cropdoc("evaluate", tiled_run, "--tta")
    assert refused.returncode != 0 and "--tta does not apply" in refused.stderr


def test_what_a_tiled_model_cannot_do_is_one_line_and_writes_nothing(tiled_run, tmp_path):
    """The tiled kind's refusals (``contract.kinds``) through the functions users call: the
    OpenVINO, tflite and web exports, adapt, and an ensemble, each one line, no file."""
    from cropdoc.adaptation.lineage import parent_bundle
    from cropdoc.inference.mobile import export_openvino, export_tflite
    from cropdoc.inference.predict import torch_scorer
    from cropdoc.inference.webapp import export_web

    before = sorted(p.name for p in tiled_run.iterdir())
    calls = {
        "OpenVINO export is not built": lambda: export_openvino(tiled_run, tmp_path / "ov"),
        "tflite export is not built": lambda: export_tflite(tiled_run, tmp_path / "lite"),
        "web app is not built": lambda: export_web(tiled_run, tmp_path / "app"),
        "reads photos tile by tile": lambda: parent_bundle(tiled_run),
        "predicts alone": lambda: torch_scorer([tiled_run, tiled_run]),
    }
    for says, call in calls.items():
        with pytest.raises(UserError, match=says) as refused:
            call()
        assert "\n" not in str(refused.value)
    assert str(tiled_run) in str(pytest.raises(UserError, parent_bundle, tiled_run).value)
    assert sorted(p.name for p in tiled_run.iterdir()) == before
    assert list(tmp_path.iterdir()) == []
