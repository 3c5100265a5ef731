"""Trust: temperature scaling, the out-of-scope score, verdicts in every runtime, old bundles."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess

import cli_process
import numpy as np
import pytest
import torch
from PIL import Image

from cropdoc.contract import calibration
from cropdoc.contract.bundle import BundleMeta
from cropdoc.contract.reliability import auroc, ood_report
from cropdoc.evaluation.evaluate import evaluate
from cropdoc.inference.export import export_onnx
from cropdoc.inference.onnx_runtime import predict_onnx
from cropdoc.inference.predict import predict
from cropdoc.model.archs import create_model
from cropdoc.model.build import save_bundle

pytestmark = pytest.mark.slow  # most use the session's trained model


def test_temperature_fitting_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (6000, 5))
    for true in (0.5, 2.5):
        probs = calibration.softmax(logits, true)
        targets = np.array([rng.choice(5, p=p) for p in probs])
        fitted = calibration.fit_temperature(logits, targets)
        assert fitted == pytest.approx(true, rel=0.08)
        calibrated = calibration.softmax(logits, fitted)
        assert (calibrated.argmax(1) == logits.argmax(1)).all()  # the argmax never moves
        assert calibration.nll(calibrated, targets) < calibration.nll(
            calibration.softmax(logits), targets
        )
        assert calibration.ece(calibrated, targets) < 0.03
    # photos all answered right do not pin a temperature: it stays 1, not the range's floor
    right = logits.argmax(1)
    assert calibration.fit_temperature(logits, right) == 1.0
    assert calibration.fit_temperature(logits, np.r_[right[:-1], (right[-1] + 1) % 5]) < 1.0


def test_ece_brier_and_auroc_on_known_cases():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    targets = np.array([0, 1, 0, 0])
    # bins: 0.9 (accuracy 0.5) and 0.6 (accuracy 1.0): ECE = 0.5 * 0.4 + 0.5 * 0.4
    assert calibration.ece(probs, targets) == pytest.approx(0.4)
    assert calibration.brier(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(2.0)
    assert auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auroc(np.array([0.1, 0.3]), np.array([0.2, 0.4])) == 0.75
    assert auroc(np.array([0.5]), np.array([0.5])) == 0.5


def _out_of_scope(folder, n: int = 8):
    """Noise and flat colours: photos no leaf model should know."""
    rng = np.random.default_rng(3)
    folder.mkdir()
    for i in range(n):
        noise = rng.integers(0, 256, (128, 96, 3), dtype=np.uint8)
        Image.fromarray(noise).save(folder / f"noise{i}.png")
        flat = np.full((128, 96, 3), rng.integers(0, 256, 3), np.uint8)
        Image.fromarray(flat).save(folder / f"flat{i}.png")
    return folder


def test_training_fits_trust_and_evaluate_reports_it(trained_run, tmp_path):
    meta = BundleMeta.read(trained_run)
    assert meta.trust.fitted and meta.trust.temperature > 0
    assert meta.trust.ood_method == "mahalanobis-layers" and meta.trust.ood_threshold > 0
    assert meta.trust.ood_levels == (2, 3)  # test_resnet's layer2 and layer3
    assert (trained_run / "trust.safetensors").exists()
    ood = _out_of_scope(tmp_path / "ood")
    result = evaluate(trained_run, out=tmp_path / "eval", ood=ood)
    c = result["calibration"]
    assert c["temperature"] == pytest.approx(meta.trust.temperature)
    assert c["nll"][1] <= c["nll"][0] + 1e-9  # the temperature minimises the NLL of this split
    assert all(0 <= v <= 1 for v in c["ece"])
    assert sum(result["verdicts"].values()) == result["images"]
    assert result["selective"][-1]["kept"] == 1.0
    assert result["selective"][-1]["error_rate"] == pytest.approx(result["error_rate"])
    for name in ("reliability.png", "selective.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    # noise and flat colours are far from the leaves the model knows
    assert result["ood"]["auroc"] >= 0.9 and result["ood"]["flagged_out_of_scope"] >= 0.75
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Trust" in report and "AUROC" in report


def test_torch_and_onnx_give_the_same_verdicts_and_scores(trained_run, tmp_path):
    leaves = sorted((trained_run.parent / "data" / "test_images").glob("*.jpg"))
    images = [*leaves, *sorted(_out_of_scope(tmp_path / "ood", 4).iterdir())]
    export_onnx(trained_run, tmp_path / "m.onnx")
    # the out-of-scope score on its own: the flat photos would be sent back as blurred first
    torch_preds = predict([trained_run], images, quality=False)
    onnx_preds = predict_onnx(tmp_path / "m.onnx", images, quality=False)
    assert torch_preds.verdicts() == onnx_preds.verdicts()
    assert np.abs(torch_preds.ood - onnx_preds.ood).max() < 1e-4
    assert np.abs(torch_preds.probs - onnx_preds.probs).max() < 1e-4
    assert "out_of_scope" in torch_preds.verdicts()
    verdicts = dict(
        zip([p.split("/")[-1] for p in torch_preds.paths], torch_preds.verdicts(), strict=True)
    )
    assert all(verdicts[f"noise{i}.png"] == "out_of_scope" for i in range(4))
    row = torch_preds.top(3)[0]
    assert {"verdict", "confidence", "ood_score"} <= set(row)
    # calibrated: probabilities are softmax(logits / T)
    assert row["confidence"] == pytest.approx(float(torch_preds.probs[0].max()), abs=1e-6)


def test_an_old_bundle_loads_with_a_note(tmp_path, caplog):
    torch.manual_seed(0)
    meta = {
        "arch": "test_resnet",
        "classes": ["a", "b", "c"],
        "size": [64, 48],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "cache_size": 96,
    }
    folder = save_bundle(tmp_path / "old", create_model("test_resnet", 3, False).eval(), meta)
    data = json.loads((folder / "model.json").read_text())
    del data["trust"]  # as cropdoc wrote them before the trust stage
    (folder / "model.json").write_text(json.dumps(data))
    photo = tmp_path / "leaf.png"
    Image.fromarray(np.full((80, 60, 3), 120, np.uint8)).save(photo)
    caplog.set_level(logging.INFO, logger="cropdoc")
    result = predict([folder], [photo], quality=False)  # a flat grey photo: no quality
    assert result.verdicts() == ["diagnosis"] and result.ood[0] == 0
    assert any("no calibration or out-of-scope statistics" in m for m in caplog.messages)


@pytest.mark.parametrize(
    "arch", ["test_resnet", "test_convnext", "test_vit", "test_efficientnet", "test_coatnet"]
)
def test_features_give_the_models_own_logits_in_every_family(arch):
    from cropdoc.model.archs import features_and_logits

    torch.manual_seed(0)
    size = (64, 64) if arch in ("test_resnet", "test_convnext", "test_efficientnet") else None
    model = create_model(arch, 4, pretrained=False, img_size=size).eval()
    shape = size or tuple(model.pretrained_cfg["input_size"][1:])
    x = torch.randn(2, 3, *shape)
    with torch.no_grad():
        features, logits = features_and_logits(model, x)
        assert torch.allclose(logits, model(x), atol=1e-5)
    assert features.ndim == 2 and features.shape[0] == 2


def test_ood_report_counts_the_boundary():
    report = ood_report(np.array([0.2, 0.5, 0.9, 1.2]), np.array([1.5, 2.0, 0.8]))
    assert report["flagged_in_scope"] == 0.25 and report["flagged_out_of_scope"] == pytest.approx(
        2 / 3
    )


def test_calibrate_refits_on_another_labelled_folder(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # the session's run is shared: refit a copy
    other = tmp_path / "other"
    for label in ("blast", "tungro", "hispa"):
        shutil.copytree(trained_run.parent / "data" / "train_images" / label, other / label)
    done = cli_process.run("calibrate", run, other, "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["images"] == 36 and result["ood_method"] == "mahalanobis-layers"
    meta = BundleMeta.read(run)
    assert meta.trust.temperature == pytest.approx(result["temperature"])
    assert meta.trust.ood_threshold == pytest.approx(result["ood_threshold"])
    assert result["nll"][1] <= result["nll"][0] + 1e-9
    bad = cli_process.run("calibrate", run, "--keep", 1.5, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--keep" in bad.stderr


def _calibrate(*args) -> subprocess.CompletedProcess:
    return cli_process.run("calibrate", *args, timeout=300)


@pytest.mark.slow
def test_calibrate_refuses_classes_the_model_does_not_know(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = (run / "model.json").read_bytes()
    images = trained_run.parent / "data" / "train_images"
    some = tmp_path / "some"
    shutil.copytree(images / "blast", some / "blast")
    shutil.copytree(images / "tungro", some / "rose")  # a class the model was not taught
    none = tmp_path / "none"
    shutil.copytree(images / "blast", none / "tulip")
    shutil.copytree(images / "hispa", none / "rose")
    for other, unknown in ((some, "rose"), (none, "rose, tulip")):
        done = _calibrate(run, other)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        last = done.stderr.splitlines()[-1]  # after prepare's progress lines
        assert done.stderr.count("cropdoc: error:") == 1 and f"does not know: {unknown} " in last
    assert (run / "model.json").read_bytes() == before  # nothing refitted


@pytest.mark.slow
def test_calibrate_on_other_data_needs_not_the_runs_own_photos(trained_run, tmp_path):
    """With the training photos and their cache gone, calibrate RUN OTHER keeps the
    bundle's out-of-scope statistics and refits the temperature and threshold on OTHER."""
    import yaml
    from safetensors.numpy import load_file

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config.update(data=str(tmp_path / "moved"), cache=str(tmp_path / "gone"))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    other = tmp_path / "other"
    for label in ("blast", "tungro"):
        shutil.copytree(trained_run.parent / "data" / "train_images" / label, other / label)
    statistics = load_file(run / "trust.safetensors")
    before = BundleMeta.read(run).trust
    done = _calibrate(run, other)
    assert done.returncode == 0, done.stderr
    assert "out-of-scope statistics stay" in done.stderr and "on 24 images" in done.stdout
    after = BundleMeta.read(run).trust
    assert after.ood_method == before.ood_method and after.temperature != before.temperature
    assert f"out-of-scope threshold {after.ood_threshold:.4f}" in done.stdout
    kept = load_file(run / "trust.safetensors")
    assert all(np.array_equal(kept[k], v) for k, v in statistics.items())
    assert not (tmp_path / "gone").exists()  # nothing prepared for the missing photos
