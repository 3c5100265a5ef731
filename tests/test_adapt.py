"""Adapting a model to a new site: from a few labelled photos (its classes kept, its parent
recorded) and from unlabelled photos (batch-norm statistics only)."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from cropdoc.errors import UserError


def site_photos(demo_data: Path, out: Path, classes: list[str], labelled: bool = True) -> Path:
    """The demo photos of ``classes`` as another site takes them: warmer light, darker.
    Labelled: ``out/<class>/``; else loose in ``out``."""
    for label in classes:
        for path in sorted((demo_data / "train_images" / label).glob("*.jpg")):
            pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
            pixels = np.clip(pixels * [1.0, 0.8, 0.55], 0, 255).astype(np.uint8)
            folder = out / label if labelled else out
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{label}-{path.name}", quality=90)
    return out


@pytest.fixture(scope="module")
def parent(demo_data, tmp_path_factory) -> Path:
    """A test_resnet run on the demo photos (the run folder, bundle and training photos),
    made once for this file; no test changes it."""
    from cropdoc.config import TrainConfig
    from cropdoc.engine.trainer import train
    from cropdoc.testing import TINY_TRAINING

    root = tmp_path_factory.mktemp("parent")
    settings = dict(cache=str(root / "cache"), out=str(root / "run"))
    train(TrainConfig(**TINY_TRAINING, data=str(demo_data), **settings))
    return root / "run"


def test_adapting_keeps_the_classes_trains_on_and_records_the_parent(parent, demo_data, tmp_path):
    from cropdoc import BundleMeta, adapt, predict

    classes = list(BundleMeta.read(parent).classes)
    site = site_photos(demo_data, tmp_path / "site", classes[:2])
    result = adapt(parent, site, tmp_path / "adapted", epochs=2, mix=1.0, seed=3)

    meta = BundleMeta.read(tmp_path / "adapted")
    assert list(meta.classes) == classes  # the classes the site lacks are kept
    adapted = meta.extra["adapted"]
    parent_weights = (parent / "model.safetensors").read_bytes()
    assert adapted["parent_sha256"] == hashlib.sha256(parent_weights).hexdigest()
    assert adapted["kind"] == "labelled"
    # 3 photos a class: 1 validated on, 2 trained on; as many of the parent's mixed in
    assert adapted["photos"] == {"train": 4, "valid": 2, "parent_mixed": 4}
    rows = list(csv.DictReader((tmp_path / "adapted" / "adapt.csv").open()))
    assert len(rows) == 10
    mixed = [r for r in rows if not Path(r["path"]).is_relative_to(site)]
    assert len(mixed) == 4 and {r["split"] for r in mixed} == {"train"}
    assert {r["label"] for r in rows if r not in mixed} == set(classes[:2])
    assert result["epochs"] == 2 and result["train_images"] == 8

    # the weights moved from the parent's, and the model answers with the parent's classes
    before = load_file(parent / "model.safetensors")
    after = load_file(tmp_path / "adapted" / "model.safetensors")
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert meta.trust.fitted and meta.trust.ood_method
    photo = next((site / classes[0]).glob("*.jpg"))
    found = predict([tmp_path / "adapted"], [photo])
    assert found.classes == classes and found.probs.shape == (1, len(classes))


def test_adapting_refuses_a_class_the_model_does_not_know(parent, demo_data, tmp_path):
    from cropdoc import BundleMeta, adapt

    classes = list(BundleMeta.read(parent).classes)
    site = site_photos(demo_data, tmp_path / "site", classes[:1])
    (site / classes[0]).rename(site / "rust")
    with pytest.raises(UserError, match="classes the model does not know: rust"):
        adapt(parent, site, tmp_path / "adapted", epochs=1)
    (site / "rust").rename(site / classes[0])
    with pytest.raises(UserError, match=f"photos of one class \\({classes[0]}\\): give --mix"):
        adapt(parent, site, tmp_path / "adapted", epochs=1)
    assert not (tmp_path / "adapted").exists()


def test_mixing_needs_the_parents_run(parent, demo_data, tmp_path):
    from cropdoc import BundleMeta, adapt

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name in ("model.json", "model.safetensors"):
        (bundle / name).write_bytes((parent / name).read_bytes())
    classes = list(BundleMeta.read(parent).classes)
    site = site_photos(demo_data, tmp_path / "site", classes[:2])
    with pytest.raises(UserError, match="--mix needs the parent's training photos"):
        adapt(bundle, site, tmp_path / "adapted", epochs=1, mix=0.5)


def test_norm_adaptation_changes_only_the_norm_statistics(parent, demo_data, tmp_path):
    site = site_photos(demo_data, tmp_path / "site", ["blast", "normal", "tungro"], False)
    out = tmp_path / "norms"
    done = subprocess.run(
        [sys.executable, "-m", "cropdoc", "adapt-norms", str(parent), str(site)]
        + ["--out", str(out), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["adapted"]["kind"] == "norms"
    assert result["adapted"]["photos"] == {"unlabelled": 9}

    before = load_file(parent / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    statistics = {k for k in before if k.endswith(("running_mean", "running_var"))}
    assert statistics, "test_resnet has batch-norm layers"
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed - {k for k in before if k.endswith("num_batches_tracked")} == statistics

    parent_trust = json.loads((parent / "model.json").read_text())["trust"]
    trust = json.loads((out / "model.json").read_text())["trust"]
    assert trust["temperature"] == parent_trust["temperature"]
    assert trust["ood_threshold"] != parent_trust["ood_threshold"]


def test_norm_adaptation_refuses_an_existing_bundle(parent, demo_data, tmp_path):
    from cropdoc import adapt_norms

    site = site_photos(demo_data, tmp_path / "site", ["blast"], False)
    before = (parent / "model.json").read_bytes()
    with pytest.raises(UserError, match="already holds a bundle: choose another --out"):
        adapt_norms(parent, site, parent)
    assert (parent / "model.json").read_bytes() == before
