"""Starting weights without the hub: ``train --weights`` with state dicts timm wrote, a hub
folder and the hub's own offline cache; pickles that need code and weights of another
architecture refused in one line; where the weights came from in model.json."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cli_process
import pytest
import torch
from safetensors.torch import save_file

from cropdoc.contract.bundle import BundleMeta
from cropdoc.core.errors import UserError
from cropdoc.model.archs import create_model, features_and_logits
from cropdoc.model.timm_import import timm
from cropdoc.model.weights import load_weights

pytestmark = pytest.mark.slow  # builds models and trains for an epoch


def _source() -> torch.nn.Module:
    """test_resnet as timm makes it for ImageNet (1000 classes), with its own weights."""
    torch.manual_seed(7)
    return timm.create_model("test_resnet", num_classes=1000).eval()


def _files(source: torch.nn.Module, folder: Path) -> dict[str, Path]:
    """The source's state dict as the files people have: .pth, .safetensors, a hub folder."""
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "w.pth")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}},
               folder / "checkpoint.ckpt")  # fmt: skip
    save_file(state, folder / "w.safetensors")
    hub = folder / "hub-folder"
    hub.mkdir()
    save_file(state, hub / "model.safetensors")
    (hub / "config.json").write_text(json.dumps({"architecture": "test_resnet"}))
    return {"pth": folder / "w.pth", "ckpt": folder / "checkpoint.ckpt",
            "safetensors": folder / "w.safetensors", "folder": hub}  # fmt: skip


def test_weights_timm_wrote_start_fine_tuning_with_a_new_head(tiny_config, tmp_path):
    from cropdoc.engine.trainer import Trainer, train

    source = _source()
    x = torch.randn(2, 3, 64, 64)
    expected = features_and_logits(source, x)[0]
    for kind, path in _files(source, tmp_path / "w").items():
        config = tiny_config(weights=str(path), out=str(tmp_path / f"run-{kind}"))
        trainer = Trainer(config)
        model = trainer.model.eval()
        assert model.get_classifier().out_features == len(trainer.split.classes) == 10
        got = features_and_logits(model, x.contiguous(memory_format=torch.channels_last))[0]
        assert torch.allclose(got, expected, atol=1e-5), kind  # the body, before any step
    # a whole run: the provenance of its start in model.json
    path = tmp_path / "w" / "w.pth"
    train(tiny_config(weights=str(path), out=str(tmp_path / "run")))
    meta = BundleMeta.read(tmp_path / "run")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta.weights == {"source": "file", "file": "w.pth", "sha256": digest}
    scratch = train(tiny_config(out=str(tmp_path / "scratch")))
    assert BundleMeta.read(scratch["run"]).weights == {"source": "random"}


class _Payload:
    """What a malicious checkpoint runs when it is unpickled: it writes a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_pickle_that_needs_code_is_refused_without_running_it(demo_data, tmp_path):
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Payload(marker)}, evil)
    done = cli_process.run(
        "train", demo_data, "--arch", "test_resnet", "--weights", evil,
        "--cache", tmp_path / "c", "--out", tmp_path / "r", timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("cropdoc: error:") and "pickle that needs code" in last
    # what the pickle asks for, in a whole sentence (not torch's text cut mid-word)
    assert "(it asks for " in last and last.endswith("a .safetensors file instead")
    assert not marker.exists()  # never unpickled
    assert not (tmp_path / "r").exists()


def test_weights_of_another_architecture_are_reported_in_one_line(tmp_path):
    other = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, path)
    model = create_model("test_resnet", 10, pretrained=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError) as info:
        load_weights(model, path, "test_resnet")
    said = str(info.value)
    assert "\n" not in said and "does not fit test_resnet" in said
    assert "of other shapes: conv1.0.weight" in said and "(expected " in said
    assert "missing: layer" in said and "another --arch" in said
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    more = {**{k: v.contiguous() for k, v in _source().state_dict().items()}}
    save_file({**more, "aux.weight": torch.zeros(3)}, tmp_path / "more.safetensors")
    with pytest.raises(UserError, match="1 not in the model: aux.weight"):
        load_weights(model, tmp_path / "more.safetensors", "test_resnet")
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text(json.dumps({"architecture": "resnet10t"}))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, hub / "model.safetensors")
    with pytest.raises(UserError, match="weights of resnet10t: train it with --arch resnet10t"):
        load_weights(model, hub, "test_resnet")
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    with pytest.raises(UserError, match="give a .safetensors file"):
        load_weights(model, tmp_path / "model.onnx", "test_resnet")


def test_pretrained_from_the_hubs_offline_cache(demo_data, tmp_path):
    """--pretrained with HF_HUB_OFFLINE=1 takes the weights the hub client has cached
    (as on a machine that downloaded them once), and says where they came from."""
    source = _source()
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()},
              snapshot / "model.safetensors")  # fmt: skip
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    done = subprocess.run(
        [sys.executable, "-m", "cropdoc", "train", str(demo_data), "--arch", "test_resnet"]
        + ["--epochs", "1", "--freeze-epochs", "0", "--bs", "8", "--size", "64"]
        + ["--item-size", "64", "--cache-size", "96", "--workers", "1", "--json"]
        + ["--cache", str(tmp_path / "c"), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    meta = BundleMeta.read(tmp_path / "run")
    assert meta.weights == {"source": "hub", "name": "timm/test_resnet.r160_in1k"}
    assert meta.mean == (0.5, 0.5, 0.5)  # the normalisation of the weights' own config


def test_a_new_head_on_a_pretrained_body_learns_from_the_first_step(tmp_path):
    """timm initialises an EfficientNet's new head uniformly in +-1/sqrt(classes), so on a
    pretrained body the first logits are large and the first loss far above chance; the
    head starts at zero instead, and one frozen epoch on features that tell the classes apart
    brings the loss below chance, ln(3)."""
    import csv
    import math

    from conftest import COLOURS, save_rgb

    from cropdoc.config import TrainConfig
    from cropdoc.engine.trainer import train
    from cropdoc.testing import TINY_TRAINING

    for label, colour in COLOURS.items():  # three classes a body's features separate
        for i in range(16):
            save_rgb(tmp_path / "data" / label / f"{i}.jpg", colour, size=(64, 64))
    torch.manual_seed(3)
    body = timm.create_model("test_efficientnet", num_classes=1000)  # as if ImageNet's
    save_file({k: v.contiguous() for k, v in body.state_dict().items()}, tmp_path / "w.safetensors")
    model = create_model("test_efficientnet", 3, weights=tmp_path / "w.safetensors")
    assert all(not p.any() for p in model.get_classifier().parameters())  # starts at zero
    with torch.no_grad():
        assert not features_and_logits(model.eval(), torch.randn(2, 3, 64, 64))[1].any()
    config = TrainConfig(
        data=str(tmp_path / "data"),
        cache=str(tmp_path / "cache"),
        out=str(tmp_path / "run"),
        weights=str(tmp_path / "w.safetensors"),
        **{**TINY_TRAINING, "arch": "test_efficientnet"},
    )
    train(config)
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        frozen = next(csv.DictReader(f))
    assert frozen["phase"] == "frozen" and float(frozen["train_loss"]) < math.log(3), frozen
