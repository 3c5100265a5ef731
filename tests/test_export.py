"""ONNX export: parity with PyTorch, the preprocessing contract, and the torch-free runtime."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys

import cli_process
import numpy as np
import onnx
import pytest
import torch

from cropdoc.contract.bundle import BundleMeta
from cropdoc.contract.preprocess import preprocess
from cropdoc.core.errors import UserError
from cropdoc.data.augment import Augment, transform_batch
from cropdoc.data.images import load_image
from cropdoc.data.loader import make_canvas
from cropdoc.inference.export import export_onnx
from cropdoc.inference.onnx_runtime import predict_onnx
from cropdoc.inference.predict import predict
from cropdoc.model.archs import create_model
from cropdoc.model.build import save_bundle

CLASSES = [f"c{i}" for i in range(10)]


def _bundle(folder, arch: str, size=(64, 48), resize="squish"):
    torch.manual_seed(0)
    model = create_model(arch, len(CLASSES), pretrained=False).eval()
    meta = {
        "arch": arch,
        "classes": CLASSES,
        "size": list(size),
        "item_size": list(size),
        "resize": resize,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "cache_size": 128,
    }
    return save_bundle(folder, model, meta)


@pytest.mark.parametrize("arch", ["test_resnet", "test_convnext"])
def test_fp32_parity_at_two_sizes_and_metadata(tmp_path, arch):
    result = export_onnx(_bundle(tmp_path / "m", arch), tmp_path / "m.onnx")
    assert result["dynamic_hw"] and len(result["parity"]) == 2
    for check in result["parity"]:
        assert check["max_abs_diff"] < 1e-4 and check["top1_agreement"] == 1.0
    proto = onnx.load(str(tmp_path / "m.onnx"))
    contract = json.loads({p.key: p.value for p in proto.metadata_props}["cropdoc"])
    assert contract["classes"] == CLASSES and contract["size"] == [64, 48]
    assert contract["resize"] == "squish" and contract["mean"][0] == pytest.approx(0.485)
    batch = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in batch] == ["batch", "", "height", "width"]


@pytest.mark.parametrize("arch", ["test_resnet", "test_convnext"])
def test_int8_export_quantises_quietly(tmp_path, arch, caplog):
    caplog.set_level(logging.DEBUG)
    result = export_onnx(_bundle(tmp_path / "m", arch), tmp_path / "q.onnx", int8=True)
    assert result["int8"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 3  # the weights really are int8 now
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) >= 3
    for check in result["parity"]:  # int8 logits differ from PyTorch's, but only a little
        assert 1e-6 < check["max_abs_diff"] < 0.1 and check["top1_agreement"] >= 2 / 3


@pytest.mark.parametrize(
    ("resize", "size"),
    [("squish", (40, 40)), ("crop", (30, 50)), ("pad", (48, 48)), ("squish", (200, 150))],
)
def test_numpy_preprocessing_matches_the_torch_path(demo_data, resize, size):
    meta = BundleMeta.from_dict(
        {
            "arch": "test_resnet",
            "classes": ["a", "b"],
            "size": list(size),
            "item_size": list(size),
            "resize": resize,
            "mean": [0.5, 0.4, 0.3],
            "std": [0.2, 0.25, 0.3],
        },
        "test",
    )
    image = next((demo_data / "train_images" / "blast").iterdir())
    pixels = load_image(image, max_size=160)
    canvas, sizes = make_canvas([pixels])
    expected = transform_batch(
        canvas,
        sizes,
        Augment(size=size, item_size=size, resize=resize),
        False,
        torch.tensor(meta.mean),
        torch.tensor(meta.std),
    )[0].numpy()
    assert np.abs(preprocess(pixels, meta) - expected).max() < 1e-4


def test_onnx_runtime_gives_the_torch_top1_without_importing_torch(demo_data, tmp_path):
    model = _bundle(tmp_path / "m", "test_resnet", size=(96, 72))
    export_onnx(model)
    images = sorted((demo_data / "train_images").rglob("*.jpg"))
    torch_preds = predict([model], images)
    onnx_preds = predict_onnx(model, images)
    assert onnx_preds.paths == torch_preds.paths and len(onnx_preds.paths) == 30
    assert (onnx_preds.probs.argmax(1) == torch_preds.probs.argmax(1)).all()
    assert np.abs(onnx_preds.probs - torch_preds.probs).max() < 1e-4
    script = (
        "import sys; from cropdoc.inference.onnx_runtime import predict_onnx; "
        f"p = predict_onnx({str(model)!r}, [{str(demo_data / 'test_images')!r}]); "
        "assert 'torch' not in sys.modules, 'torch was imported'; print(len(p.paths))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "10"


def test_missing_onnx_file_says_to_export(tmp_path):
    with pytest.raises(UserError, match="cropdoc export"):
        predict_onnx(_bundle(tmp_path / "m", "test_resnet"), [tmp_path])


def _cli(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return cli_process.run(*args, cwd=cwd, env=env, timeout=300)


@pytest.mark.slow
def test_int8_export_and_onnx_predict_leave_the_working_directory_empty(demo_data, tmp_path):
    model = _bundle(tmp_path / "m", "test_convnext")
    work, scratch = tmp_path / "work", tmp_path / "scratch"
    work.mkdir(), scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    images = demo_data / "train_images"
    done = _cli("export", model, "--int8", "--calibrate", images, cwd=work, env=env)
    assert done.returncode == 0, done.stderr
    done = _cli(
        "predict", model / "model.int8.onnx", images, "--runtime", "onnx", cwd=work, env=env
    )
    assert done.returncode == 0, done.stderr
    assert list(work.iterdir()) == []
    # the quantiser's temporary folders and models are gone too (a library may keep a
    # session-id file there, which is no temporary file of ours)
    assert [
        p for p in scratch.rglob("*") if p.is_dir() or "onnx" in p.name or ".data" in p.name
    ] == []
    assert sorted(p.name for p in model.iterdir()) == [
        "model.int8.onnx",
        "model.json",
        "model.safetensors",
    ]


@pytest.mark.slow
def test_onnx_runtime_tta_and_submission_match_torch(demo_data, tmp_path):
    model = _bundle(tmp_path / "m", "test_resnet", size=(96, 72), resize="crop")
    export_onnx(model)
    images = sorted((demo_data / "train_images").rglob("*.jpg"))[:12]
    torch_tta = predict([model], images, tta=True).probs
    onnx_plain = predict_onnx(model, images).probs
    onnx_tta = predict_onnx(model, images, tta=True).probs
    assert np.abs(onnx_tta - torch_tta).max() < 1e-4
    assert not np.allclose(onnx_tta, onnx_plain)
    test = demo_data / "test_images"
    ids = sorted(p.name for p in test.iterdir())[::-1]
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("image_id,label\n" + "".join(f"{i},\n" for i in ids))
    written = {}
    for runtime in ("torch", "onnx"):
        out = tmp_path / f"{runtime}.csv"
        target = model if runtime == "torch" else model / "model.onnx"
        args = ["predict", target, "--submission", sample, "--images", test, "--out", out]
        done = _cli(*args, "--tta", "--runtime", runtime)
        assert done.returncode == 0, done.stderr
        written[runtime] = out.read_text()
    rows = list(csv.DictReader(written["onnx"].splitlines()))
    assert [r["image_id"] for r in rows] == ids and all(r["label"] in CLASSES for r in rows)
    assert written["onnx"] == written["torch"]


@pytest.mark.slow
def test_openvino_export_checks_itself_on_held_out_photos(trained_run, tmp_path):
    """export --format openvino writes an fp32 IR and checks it against PyTorch on the run's
    held-out photos through its own preprocessing; predict --runtime openvino answers as the
    ONNX runtime does, and serve --runtime openvino as predict; the ONNX export reports the
    same photo parity."""
    import subprocess
    import sys

    from cropdoc.inference.export import export_onnx
    from cropdoc.inference.mobile import export_openvino
    from cropdoc.inference.onnx_runtime import predict_onnx

    result = export_openvino(trained_run, tmp_path / "ov")
    parity = result["parity"]
    assert parity["photos"] == 10  # the demo data's test images
    assert parity["top1_agreement"] == 1.0 and parity["max_prob_diff"] < 1e-4
    onnx = export_onnx(trained_run, tmp_path / "m.onnx")["photo_parity"]
    assert onnx["photos"] == 10 and onnx["top1_agreement"] == 1.0 and onnx["max_prob_diff"] < 1e-4
    photos = sorted((trained_run.parent / "data" / "test_images").glob("*.jpg"))[:4]
    done = cli_process.run("predict", tmp_path / "ov" / "model.xml", *photos, "--runtime",
                           "openvino", "--json", timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["predictions"]
    expected = predict_onnx(tmp_path / "m.onnx", photos)
    for row, probs in zip(rows, expected.probs, strict=True):
        assert row["top"][0]["prob"] == pytest.approx(float(probs.max()), abs=1e-4)
    _serves_as_predict(tmp_path / "ov" / "model.xml", "openvino", photos[0], rows[0])
    code = (  # the OpenVINO runtime never imports torch
        "import sys; from cropdoc.inference.openvino_runtime import openvino_scorer; "
        "from cropdoc.inference.predictions import predict_paths; "
        f"predict_paths([{str(photos[0])!r}], openvino_scorer({str(tmp_path / 'ov')!r})); "
        "print('torch' in sys.modules)"
    )
    alone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert alone.returncode == 0 and alone.stdout.split()[-1] == "False", alone.stderr
    (tmp_path / "bad.xml").write_text("<net/>")
    bad = cli_process.run("predict", tmp_path / "bad.xml", photos[0], "--runtime", "openvino",
                          timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "not a cropdoc OpenVINO model" in bad.stderr


def _serves_as_predict(model, runtime: str, photo, row: dict) -> None:
    """``cropdoc serve MODEL --runtime RUNTIME`` answers ``photo`` field for field as
    ``predict --runtime RUNTIME --json`` did (``row``)."""
    from test_serve import Server, _multipart

    server = Server(model, "--runtime", runtime)
    try:
        status, got = server.json("POST", "/predict", *_multipart(photo.read_bytes()))
    finally:
        server.stop()
    assert status == 200 and got["runtime"] == runtime
    assert {k: got[k] for k in ("verdict", "advice", "quality")} == {
        k: row[k] for k in ("verdict", "advice", "quality")
    }
    assert got["confidence"] == pytest.approx(row["confidence"], abs=1e-6)
    assert got["ood_score"] == pytest.approx(row["ood_score"], abs=1e-6)
    shared = min(len(got["top"]), len(row["top"]))
    assert [t["label"] for t in got["top"][:shared]] == [t["label"] for t in row["top"][:shared]]
    for mine, theirs in zip(got["top"][:shared], row["top"][:shared], strict=True):
        assert mine["prob"] == pytest.approx(theirs["prob"], abs=1e-6)


@pytest.mark.slow
def test_tflite_export_checks_itself_and_predicts_without_torch(trained_run, tmp_path):
    """export --format tflite writes a LiteRT model with the bundle's description in its
    metadata and checks it against PyTorch on the run's held-out photos through its own
    preprocessing; predict --runtime tflite answers as the ONNX runtime does, without torch,
    and serve --runtime tflite as predict;
    a file of another kind, or one without cropdoc's metadata, is one line."""
    from ai_edge_litert.tools import flatbuffer_utils

    from cropdoc.inference.mobile import export_tflite

    result = export_tflite(trained_run, tmp_path / "lite")
    parity, path = result["parity"], tmp_path / "lite" / "model.tflite"
    assert result["tflite"] == str(path) and os.listdir(tmp_path / "lite") == ["model.tflite"]
    assert parity["photos"] == 10 and parity["top1_agreement"] == 1.0
    assert parity["max_prob_diff"] < 1e-4
    export_onnx(trained_run, tmp_path / "m.onnx", photos=False)
    photos = sorted((trained_run.parent / "data" / "test_images").glob("*.jpg"))[:4]
    done = cli_process.run("predict", path, *photos, "--runtime", "tflite", "--json",
                           timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["predictions"]
    expected = predict_onnx(tmp_path / "m.onnx", photos)
    classes = BundleMeta.read(trained_run).classes
    for row, probs in zip(rows, expected.probs, strict=True):
        assert row["top"][0]["label"] == classes[int(probs.argmax())]
        assert row["top"][0]["prob"] == pytest.approx(float(probs.max()), abs=1e-4)
    _serves_as_predict(path, "tflite", photos[0], rows[0])
    code = (  # the LiteRT runtime never imports torch
        "import sys; from cropdoc.inference.litert_runtime import tflite_scorer; "
        "from cropdoc.inference.predictions import predict_paths; "
        f"predict_paths([{str(photos[0])!r}], tflite_scorer({str(tmp_path / 'lite')!r})); "
        "print('torch' in sys.modules)"
    )
    alone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert alone.returncode == 0 and alone.stdout.split()[-1] == "False", alone.stderr
    flat = flatbuffer_utils.read_model(str(path))
    flat.metadata = [m for m in flat.metadata if m.name != b"cropdoc"]
    flatbuffer_utils.write_model(flat, str(tmp_path / "bare.tflite"))
    (tmp_path / "photo.tflite").write_bytes(photos[0].read_bytes())
    for name, said in [("bare.tflite", "carries no cropdoc metadata"),
                       ("photo.tflite", "is not a tflite model")]:  # fmt: skip
        bad = cli_process.run("predict", tmp_path / name, photos[0], "--runtime", "tflite",
                              timeout=120)  # fmt: skip
        assert bad.returncode == 2 and said in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "pool", "size"),
    [("test_resnet", "max", (96, 72)), ("test_vit", "", (64, 96))],
)
def test_tflite_lowers_max_pooling_and_vit_position_embeddings(demo_data, tmp_path, arch, pool,
                                                               size):  # fmt: skip
    """LiteRT has no adaptive max pool and no antialiased bicubic resize: the export computes
    the same numbers without them (timm's fast pools; a ViT at its own patch grid)."""
    from cropdoc.inference.mobile import export_tflite

    torch.manual_seed(0)
    model = create_model(arch, len(CLASSES), pretrained=False, img_size=size, global_pool=pool)
    meta = {"arch": arch, "classes": CLASSES, "size": list(size), "item_size": list(size),
            "resize": "squish", "mean": [0.5] * 3, "std": [0.25] * 3, "cache_size": 128,
            "global_pool": pool}  # fmt: skip
    bundle = save_bundle(tmp_path / "m", model.eval(), meta)
    photos = sorted((demo_data / "train_images").rglob("*.jpg"))[::3]
    parity = export_tflite(bundle, photos=photos)["parity"]
    assert parity["photos"] == len(photos) == 10
    assert parity["top1_agreement"] == 1.0 and parity["max_prob_diff"] < 1e-4


@pytest.mark.parametrize("pool", ["max", "avgmax", "catavgmax"])
def test_lowerable_pools_give_the_same_features(pool):
    """Every max-pooling kind, and a ViT at its own grid, computes the same numbers as
    LiteRT lowers it (the conversion itself is checked above on two of them)."""
    import copy

    from cropdoc.inference.tflite_convert import lowerable
    from cropdoc.model.timm_import import timm

    pooling = timm.layers.SelectAdaptivePool2d
    torch.manual_seed(0)
    for arch, kind, size in [("test_resnet", pool, (64, 48)), ("test_vit", "", (64, 96))]:
        model = create_model(arch, 4, pretrained=False, img_size=size, global_pool=kind).eval()
        lowered = lowerable(copy.deepcopy(model))
        pools = [m.pool_type for m in lowered.modules() if isinstance(m, pooling)]
        assert all(p.startswith("fast") for p in pools) and (pools or arch == "test_vit")
        x = torch.randn(3, 3, *size)
        with torch.no_grad():
            assert torch.allclose(lowered(x), model(x), atol=1e-6)
