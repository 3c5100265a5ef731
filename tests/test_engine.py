"""The training engine on tiny timm models and the small demo dataset, on the CPU."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import cli_process
import numpy as np
import pytest
import torch
from conftest import kill_after_epoch
from safetensors.torch import load_file

from cropdoc import slide, valley
from cropdoc.config import TrainConfig
from cropdoc.core.errors import UserError
from cropdoc.engine.trainer import Trainer, TrainingStopped, phases
from cropdoc.model.archs import create_model
from cropdoc.model.build import load_bundle, save_bundle

LRS = np.logspace(-7, 1, 40)
# expected indices checked against fastai 2.8's valley and slide on the same arrays
CURVES = {
    "falls then flat": (list(np.linspace(3, 1, 20)) + [1.0] * 20, 8, 24),
    "flat then diverges": ([2.0] * 28 + list(2 + np.arange(1, 13) * 0.5), 0, 12),
}


@pytest.mark.parametrize("name", CURVES)
def test_valley_and_slide_match_fastai_on_known_curves(name):
    losses, valley_index, slide_index = CURVES[name]
    assert valley(LRS, losses) == pytest.approx(LRS[valley_index])
    assert slide(LRS, losses) == pytest.approx(LRS[slide_index])


def test_valley_takes_two_thirds_down_the_longest_fall():
    losses = [3, 3, 2.5, 2, 1.5, 1, 0.5, 1, 2, 4]  # longest fall: indices 0..6
    assert valley(LRS[:10], losses) == pytest.approx(LRS[3])


def _state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_lr_find_changes_nothing(tiny_config, tmp_path):
    trainer = Trainer(tiny_config())
    trainer.step(*next(trainer.train_batches.epoch(0)))  # give the optimizer some state
    weights, optim = _state(trainer.model), trainer.optimizer.state_dict()
    moments = {k: {n: v.clone() for n, v in s.items()} for k, s in optim["state"].items()}
    rng = torch.get_rng_state()
    found = trainer.find_lr(num_it=40)
    assert 1e-7 <= found.valley <= 10 and 1e-7 <= found.slide <= 10
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in weights.items())
    after = trainer.optimizer.state_dict()["state"]
    assert all(torch.equal(v, after[k][n]) for k, s in moments.items() for n, v in s.items())
    assert torch.equal(rng, torch.get_rng_state())


def test_frozen_body_stays_put_and_body_lr_is_lower_after_unfreezing(tiny_config, tmp_path):
    trainer = Trainer(tiny_config())
    frozen, unfrozen = phases(trainer.config, 0.01)
    conv = trainer.model.conv1[0].weight
    head = trainer.model.get_classifier().weight
    before_conv, before_head = conv.detach().clone(), head.detach().clone()
    trainer.freeze(True)
    trainer.train_epoch(frozen, 0, 0)
    assert torch.equal(conv, before_conv)
    assert not torch.equal(head, before_head)
    trainer.freeze(False)
    trainer.train_epoch(unfrozen, 0, 1)
    assert not torch.equal(conv, before_conv)
    from cropdoc.engine.builders import BODY, HEAD

    lrs = {g["role"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs[BODY] == pytest.approx(lrs[HEAD] * trainer.config.body_lr)
    assert lrs[BODY] < lrs[HEAD]
    decays = {(g["role"], g["weight_decay"] > 0) for g in trainer.optimizer.param_groups}
    assert decays == {(BODY, True), (BODY, False), (HEAD, True), (HEAD, False)}
    flat = [g for g in trainer.optimizer.param_groups if g["weight_decay"] == 0]
    assert all(p.ndim == 1 for g in flat for p in g["params"])  # norms and biases


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path):
    config = tiny_config(from_scratch=True, epochs=3)
    (tmp_path / "run").mkdir()
    trainer = Trainer(config)
    per_epoch, calls = len(trainer.train_batches), []

    def poison_second_epoch(module, inputs):
        if module.training:
            calls.append(1)
            if len(calls) > per_epoch:  # the second epoch's inputs turn to NaN
                return (inputs[0] * float("nan"),)
        return None

    trainer.model.register_forward_pre_hook(poison_second_epoch)
    with pytest.raises(TrainingStopped, match="the loss became nan at epoch 1"):
        trainer.fit(0.01)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 1 and state["step"] == 0
    weights = load_file(tmp_path / "run" / "checkpoint" / state["model_file"])
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_a_checkpoint_that_does_not_fit_the_model_is_one_line(tmp_path):
    """A checkpoint whose parameter groups differ from this model's (another version's
    grouping) is refused in one line, not a traceback from the optimizer."""
    from cropdoc.engine.checkpoint import load_checkpoint, save_checkpoint

    model = create_model("test_resnet", 3, pretrained=False)
    head = list(model.get_classifier().parameters())
    body = [p for p in model.parameters() if all(p is not h for h in head)]
    two_groups = torch.optim.AdamW([{"params": body}, {"params": head}])
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    two_groups.step()
    save_checkpoint(tmp_path, model, two_groups, None, {"epoch": 1, "step": 0})
    one_group = torch.optim.AdamW(model.parameters())
    with pytest.raises(UserError, match="does not fit this model.*start a new run"):
        load_checkpoint(tmp_path, model, one_group, None)
    assert load_checkpoint(tmp_path, model, two_groups, None)["epoch"] == 1


def test_bundle_round_trip_gives_identical_logits(tmp_path):
    model = create_model("test_convnext", 4, pretrained=False).eval()
    meta = {
        "arch": "test_convnext",
        "classes": list("abcd"),
        "size": [64, 48],
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    save_bundle(tmp_path / "b", model, meta)
    loaded, read = load_bundle(tmp_path / "b")
    x = torch.randn(3, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert read.classes == tuple("abcd") and "cropdoc_version" in read.extra


def test_global_pool_is_built_kept_and_read_back(tmp_path):
    """--global-pool max / catavgmax pool the body's features as by hand, survive a
    multi-target head, and a bundle rebuilds them (without the field it does not fit)."""
    from cropdoc.contract.bundle import BundleError
    from cropdoc.model.build import build_network

    x = torch.randn(2, 3, 64, 48)
    pooled = build_network("test_resnet", 4, outputs=6, global_pool="max").eval()
    with torch.no_grad():
        features = pooled.forward_features(x)
        head = pooled.forward_head(features, pre_logits=True)
    assert torch.allclose(head, features.amax((2, 3))) and pooled.fc.out_features == 6
    both = build_network("test_resnet", 4, global_pool="catavgmax").eval()
    assert both.fc.in_features == 2 * both.num_features
    meta = {"arch": "test_resnet", "classes": list("abcd"), "size": [64, 48], "mean": [0.5] * 3}
    meta["std"] = [0.5] * 3
    save_bundle(tmp_path / "b", both, {**meta, "global_pool": "catavgmax"})
    loaded, read = load_bundle(tmp_path / "b")
    with torch.no_grad():
        assert torch.equal(both(x), loaded(x))
    assert read.global_pool == "catavgmax"
    save_bundle(tmp_path / "old", both, meta)
    with pytest.raises(BundleError, match="fc.weight has shape 4x192"):
        load_bundle(tmp_path / "old")
    with pytest.raises(UserError, match="--global-pool must be one of"):
        TrainConfig(global_pool="median").checked()


@pytest.mark.slow
def test_local_weights_and_offline_pretrained(demo_data, tmp_path):
    from safetensors.torch import save_file

    source = create_model("test_resnet", 1000, pretrained=False)
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors"
    )
    model = create_model("test_resnet", 10, weights=tmp_path / "w.safetensors")
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)
    assert model.get_classifier().out_features == 10
    # offline, as a user sets it before the command starts (the hub reads it at import)
    offline = subprocess.run(
        [sys.executable, "-m", "cropdoc", "train", str(demo_data), "--arch", "resnet18"]
        + ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert offline.returncode == 2 and "Traceback" not in offline.stderr
    assert "--no-pretrained" in offline.stderr and "--weights" in offline.stderr
    with pytest.raises(UserError, match="unknown architecture 'resnet_18'. Did you mean"):
        create_model("resnet_18", 10)


def _cropdoc(*args, **kw):
    return cli_process.run(*args, **kw)


def _tiny_train(demo_data, tmp_path, *extra) -> list[str]:
    """``cropdoc train`` arguments for test_resnet on the small demo data at 64 px."""
    common = "--arch test_resnet --no-pretrained --item-size 64 --size 64 --workers 1"
    return [
        "train",
        str(demo_data),
        *common.split(),
        "--cache",
        str(tmp_path / "cache"),
        *map(str, extra),
    ]


def _metrics(run) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(demo_data, tmp_path):
    args = _tiny_train(
        demo_data, tmp_path, "--bs", 8, "--epochs", 3, "--freeze-epochs", 1, "--lr", 0.01
    )
    whole = _cropdoc(*args, "--out", tmp_path / "whole", "--json", check=True)
    assert json.loads(whole.stdout)["epochs"] == 4

    run = tmp_path / "killed"
    done = kill_after_epoch(args, run)
    assert 1 <= done < 4, "the run finished before it was killed"

    resumed = _cropdoc("train", "--resume", run, "--json", check=True)
    assert json.loads(resumed.stdout)["epochs"] == 4
    a, b = _metrics(tmp_path / "whole"), _metrics(run)
    assert [r["epoch"] for r in b] == ["0", "1", "2", "3"]
    for x, y in zip(a, b, strict=True):
        assert float(x["valid_loss"]) == pytest.approx(float(y["valid_loss"]), abs=1e-3)
    loaded, meta = load_bundle(run)
    assert list(meta.classes) == sorted(meta.classes) and len(meta.classes) == 10


@pytest.mark.slow
def test_cli_end_to_end(demo_data, tmp_path):
    found = _cropdoc(
        "lr-find",
        demo_data,
        "--arch",
        "test_convnext",
        "--no-pretrained",
        "--bs",
        "8",
        "--item-size",
        "64",
        "--size",
        "64",
        "--num-it",
        "30",
        "--cache",
        tmp_path / "c",
        "--out",
        tmp_path / "lr.png",
        "--json",
        check=True,
    )
    assert set(json.loads(found.stdout)) >= {"valley", "slide"}
    assert (tmp_path / "lr.png").stat().st_size > 1000
    trained = _cropdoc(
        "train",
        demo_data,
        "--arch",
        "test_convnext",
        "--from-scratch",
        "--epochs",
        "1",
        "--bs",
        "8",
        "--size",
        "64",
        "--item-size",
        "64",
        "--cache",
        tmp_path / "c",
        "--out",
        tmp_path / "r",
        "--json",
        check=True,
    )
    summary = json.loads(trained.stdout)
    assert summary["epochs"] == 1 and 0 <= summary["best"]["error_rate"] <= 1
    for name in ("config.yaml", "metrics.csv", "model.safetensors", "model.json", "losses.png"):
        assert (tmp_path / "r" / name).exists(), name
    again = _cropdoc("train", demo_data, "--out", tmp_path / "r")
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert "Traceback" not in again.stderr
    listed = json.loads(_cropdoc("models", "--json", check=True).stdout)
    names = {p["name"]: p for p in listed["presets"]}
    assert names["resnet26d"]["params_m"] == pytest.approx(16.0, abs=0.1)
    assert names["convnext_tiny"]["gmacs"] == pytest.approx(4.46, abs=0.05)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(demo_data, tmp_path):
    run = tmp_path / "run"
    args = _tiny_train(demo_data, tmp_path, "--bs", 4, "--epochs", 20, "--out", run)
    err = tmp_path / "stderr"
    proc = cli_process.start(*args, out=os.devnull, err=err)
    state = run / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # somewhere inside the next epoch
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    stderr = err.read_text()
    assert proc.returncode == 2, stderr
    assert "checkpoint saved" in stderr and f"--resume {run}" in stderr
    assert "Traceback" not in stderr
    saved = json.loads(state.read_text())
    assert saved["epoch"] < 21 and (saved["step"] > 0 or saved["epoch"] >= 1)
    resumed = _cropdoc("train", "--resume", run, "--json", check=True)
    assert json.loads(resumed.stdout)["epochs"] == 21
    assert [int(r["epoch"]) for r in _metrics(run)] == list(range(21))
