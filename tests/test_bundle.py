"""model.json is checked once, field by field, by every command that reads a bundle."""

from __future__ import annotations

import json

import cli_process
import pytest
import torch
from conftest import save_rgb

from cropdoc.adaptation.norms import adapt_norms
from cropdoc.adaptation.site import adapt
from cropdoc.contract.bundle import BundleMeta
from cropdoc.core.errors import UserError
from cropdoc.evaluation.evaluate import evaluate
from cropdoc.inference.explain import explain
from cropdoc.inference.export import export_onnx
from cropdoc.inference.predict import predict
from cropdoc.model.archs import create_model
from cropdoc.model.build import save_bundle
from cropdoc.serve.app import Settings, create_app

CLASSES = [f"c{i}" for i in range(3)]
GOOD = {
    "arch": "test_resnet",
    "classes": CLASSES,
    "size": [64, 48],
    "item_size": [64, 48],
    "resize": "squish",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "cache_size": 96,
}
NAN = float("nan")

# (field, bad value, what the one line says); field None: the whole file
BAD = [
    ("size", [-5, -5], "size must be 16 to 8192 pixels a side"),
    ("size", [100000, 100000], "size must be 16 to 8192 pixels a side"),
    ("size", [1, 2, 3], "size must be [height, width]"),
    ("size", "big", "size must be [height, width]"),
    ("item_size", [64.5, 48], "item_size must be [height, width] in whole pixels"),
    ("mean", "x", "mean must be three finite numbers"),
    ("mean", [0.5, 0.5], "mean must be three finite numbers"),
    ("std", [0, 0, 0], "std must be three finite numbers above 0"),
    ("std", [NAN, 1, 1], "std must be three finite numbers above 0"),
    ("arch", 123, "arch must be a timm architecture name"),
    ("arch", "resnet_nonsense", "unknown architecture 'resnet_nonsense'"),
    (None, "a string", "holds str, not a JSON object"),
    (None, None, "holds NoneType, not a JSON object"),
    ("cache_size", -1, "cache_size must be a whole number of pixels from 16"),
    ("classes", "abcdefghij", "classes must be a list of class names"),
    ("classes", ["a", "b", "a"], "classes names a class twice"),
    ("classes", ["only"], "classes must name 2 to"),
    ("resize", "explode", "resize must be one of squish, crop, pad"),
    ("metrics", [1, 2], "metrics must be an object"),
    ("global_pool", "median", "global_pool must be one of avg, max, avgmax, catavgmax"),
]


@pytest.fixture(scope="module")
def bundle_and_photo(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    save_bundle(root / "good", create_model("test_resnet", 3, pretrained=False), GOOD)
    photo = save_rgb(root / "data" / "c0" / "leaf.jpg", (40, 160, 60), size=(80, 60))
    save_rgb(root / "data" / "c1" / "leaf.jpg", (160, 60, 60), size=(80, 60))
    return root / "good", photo


def _spoil(folder, field, value):
    data = json.loads((folder / "model.json").read_text())
    spoiled = value if field is None else {**data, field: value}
    (folder / "model.json").write_text(json.dumps(spoiled))


COMMANDS = {
    "predict": lambda m, photo: predict([m], [photo]),
    "evaluate": lambda m, photo: evaluate(m, photo.parent.parent, out=m / "eval"),
    "explain": lambda m, photo: explain(m, [photo]),
    "export": lambda m, photo: export_onnx(m),
    "serve": lambda m, photo: create_app(Settings(model=str(m))),
    "adapt": lambda m, photo: adapt(m, photo.parent.parent, m / "adapted"),
    "adapt-norms": lambda m, photo: adapt_norms(m, photo.parent, m / "norms"),
}


@pytest.mark.parametrize(("field", "value", "says"), BAD)
def test_every_command_refuses_a_bad_field_in_one_line(
    bundle_and_photo, tmp_path, field, value, says
):
    good, photo = bundle_and_photo
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("model.json", "model.safetensors"):
        (folder / name).write_bytes((good / name).read_bytes())
    _spoil(folder, field, value)
    for command, run in COMMANDS.items():
        with pytest.raises(UserError) as caught:
            run(folder, photo)
        message = str(caught.value)
        assert says in message and "\n" not in message, (command, message)
    assert not (folder / "model.onnx").exists()
    assert not (folder / "adapted").exists() and not (folder / "norms").exists()


def test_the_command_line_says_it_in_one_line(bundle_and_photo, tmp_path):
    good, photo = bundle_and_photo
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("model.json", "model.safetensors"):
        (folder / name).write_bytes((good / name).read_bytes())
    _spoil(folder, "std", [0, 0, 0])
    for args in (["predict", folder, photo], ["serve", folder], ["export", folder]):
        done = cli_process.run(*args, timeout=120)
        assert done.returncode == 2 and "std must be three finite numbers" in done.stderr
        assert done.stderr.count("\n") == 1, done.stderr


def test_a_good_bundle_round_trips_and_old_fields_default(bundle_and_photo, tmp_path):
    good, _ = bundle_and_photo
    meta = BundleMeta.read(good)
    assert meta.classes == tuple(CLASSES) and meta.size == (64, 48)
    assert meta.extra["format"] == "cropdoc-bundle-1"
    old = {k: v for k, v in GOOD.items() if k not in ("item_size", "resize", "cache_size")}
    read = BundleMeta.from_dict(old, "old model.json")
    assert read.item_size == read.size and read.resize == "squish" and read.cache_size == 256
    save_bundle(tmp_path / "again", torch.nn.Linear(2, 3), meta)
    assert BundleMeta.read(tmp_path / "again").to_dict()["classes"] == CLASSES


def test_export_into_an_existing_folder(bundle_and_photo, tmp_path):
    good, _ = bundle_and_photo
    folder = tmp_path / "exports"
    folder.mkdir()
    result = export_onnx(good, out=folder)
    assert result["onnx"] == str(folder / "model.onnx") and (folder / "model.onnx").exists()
    done = cli_process.run("export", good, "--out", folder, "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["onnx"] == str(folder / "model.onnx")


@pytest.mark.parametrize(
    ("blocked", "command", "extra"),
    [
        ("onnx", ["export"], "onnx"),
        ("fastapi", ["serve"], "serve"),
        ("pytorch_grad_cam", ["explain", "PHOTO"], "explain"),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(bundle_and_photo, blocked, command, extra):
    good, photo = bundle_and_photo
    args = [command[0], str(good), *[str(photo) for a in command[1:] if a == "PHOTO"]]
    done = cli_process.run(*args, blocked=(blocked,))
    assert done.returncode == 2, done.stderr
    assert f"pip install 'cropdoc[{extra}]'" in done.stderr and done.stderr.count("\n") == 1
