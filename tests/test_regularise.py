"""The regularisers on real pixels: mixup and cutmix as soft labels, label smoothing and
class weights as computed by hand, random erasing, balanced sampling, drop-path, and the
weights' moving average (its formula, validated, checkpointed, resumed and exported)."""

from __future__ import annotations

import cli_process
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cropdoc.config import TrainConfig
from cropdoc.contract.targets import Target
from cropdoc.core.errors import UserError
from cropdoc.data.loader import balanced_order
from cropdoc.engine import regularise
from cropdoc.model import multihead


def _photos(demo_data, n: int = 4) -> torch.Tensor:
    """``n`` demo photos as a normalised ``(n, 3, 96, 128)`` batch."""
    paths = sorted((demo_data / "train_images").rglob("*.jpg"))[::7][:n]
    images = [np.asarray(Image.open(p).convert("RGB").resize((128, 96))) for p in paths]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return (x - 0.5) / 0.25


def test_mixup_loss_is_the_cross_entropy_of_the_mixed_soft_label(demo_data):
    x = _photos(demo_data)
    mixed_x, mixed = regularise.mix(x, torch.Generator().manual_seed(1), mixup=0.4, cutmix=0)
    assert mixed is not None and 0 < mixed.lam < 1
    assert torch.allclose(mixed_x, mixed.lam * x + (1 - mixed.lam) * x[mixed.perm])
    logits = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 1])
    soft = mixed.lam * F.one_hot(y, 3) + (1 - mixed.lam) * F.one_hot(y[mixed.perm], 3)
    by_hand = -(soft * logits.log_softmax(1)).sum(1).mean()
    lam = mixed.lam
    ours = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[mixed.perm])
    assert torch.allclose(ours, by_hand, atol=1e-6)
    # a multi-target batch: the label as a soft label, a regression value mixed linearly
    heads = [Target("label", classes=("a", "b", "c")), Target("age", "regress", (), 60.0, 10.0)]
    values = torch.tensor([[0, 50.0], [1, 70.0], [2, 65.0], [1, float("nan")]])
    out = torch.cat([logits, torch.randn(4, 1)], 1)
    got = multihead.loss(out, values, heads, mixed=mixed)
    present = (~torch.isnan(values[:, 1]) & ~torch.isnan(values[mixed.perm, 1])).float()
    age = lam * values[:, 1] + (1 - lam) * values[mixed.perm, 1]
    l1 = ((out[:, 3] - (age - 60) / 10).abs().nan_to_num() * present).sum() / present.sum()
    assert torch.allclose(got, by_hand + l1, atol=1e-5)


def test_cutmix_pastes_a_box_of_the_other_photo_and_weighs_it_by_area(demo_data):
    x = _photos(demo_data)
    out, mixed = regularise.mix(x, torch.Generator().manual_seed(3), mixup=0, cutmix=1.0)
    changed = (out != x).any(1)  # (n, h, w): where the pasted box differs
    from_other = (out == x[mixed.perm]).all(1)
    assert changed.any() and (from_other | ~changed).all()
    rows, cols = changed[0].any(1).nonzero(), changed[0].any(0).nonzero()
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert mixed.lam == pytest.approx(1 - box.item() / (96 * 128), abs=0.02)
    bags = x.reshape(2, 2, 3, 96, 128)  # a bag of tiles is mixed whole
    mixed_bags, how = regularise.mix(bags, torch.Generator().manual_seed(3), 0, 1.0)
    assert mixed_bags.shape == bags.shape and how is not None
    same, _ = regularise.mix(x, torch.Generator().manual_seed(3), 0.4, 1.0, prob=0.0)
    assert torch.equal(same, x)


def test_label_smoothing_and_class_weights_change_the_loss_as_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [1.0, 1.0, 3.0]])
    y = torch.tensor([0, 1, 2])
    eps = 0.1
    soft = (1 - eps) * F.one_hot(y, 3) + eps / 3
    by_hand = -(soft * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(F.cross_entropy(logits, y, label_smoothing=eps), by_hand)
    labels = np.array([0] * 8 + [1] * 2 + [2] * 2)  # class 0 is 4x the others
    inverse = regularise.class_weights("inverse", labels, ["a", "b", "c"])
    raw = np.array([12 / 8, 12 / 2, 12 / 2])
    expected = raw / ((raw * np.bincount(labels)).sum() / 12)
    assert np.allclose(inverse.numpy(), expected)  # mean weight over the photos is 1
    auto = regularise.class_weights("auto", labels, ["a", "b", "c"]).numpy()
    assert auto[1] / auto[0] == pytest.approx(2.0)  # sqrt(4)
    weighted = F.cross_entropy(logits, y, weight=inverse)
    nll = -logits.log_softmax(1)[torch.arange(3), y]
    by_hand = (inverse[y] * nll).sum() / inverse[y].sum()
    assert torch.allclose(weighted, by_hand)
    assert regularise.class_weights("", labels, ["a", "b", "c"]) is None


def test_class_weights_from_a_file_are_checked(tmp_path):
    labels = np.array([0, 0, 1])
    good = tmp_path / "w.csv"
    good.write_text("class,weight\na,1\nb,3\n")
    weights = regularise.class_weights(str(good), labels, ["a", "b"]).numpy()
    assert weights[1] / weights[0] == pytest.approx(3.0)
    for text, says in (
        ("class,weight\na,1\n", "missing b"),
        ("class,weight\na,1\nb,x\n", "must be a number"),
        ("class,weight\na,1\nb,-1\n", "0 or more"),
        ("name,w\na,1\n", "columns class,weight"),
    ):
        good.write_text(text)
        with pytest.raises(UserError, match=says):
            regularise.class_weights(str(good), labels, ["a", "b"])


def test_random_erasing_fills_boxes_with_noise_and_is_seeded(demo_data):
    x = _photos(demo_data)
    a = regularise.erase(x, torch.Generator().manual_seed(5), 1.0)
    b = regularise.erase(x, torch.Generator().manual_seed(5), 1.0)
    assert torch.equal(a, b) and a.shape == x.shape
    share = (a != x).any(1).float().mean((1, 2))
    assert ((share > 0.01) & (share < 0.4)).all()  # a box of 2-33% of each photo
    assert torch.equal(regularise.erase(x, torch.Generator(), 0.0), x)


def test_balanced_sampling_draws_each_class_about_as_often():
    labels = np.array([0] * 900 + [1] * 100)
    order = balanced_order(np.arange(1000), labels, np.random.default_rng(0))
    share = (labels[order] == 1).mean()
    assert len(order) == 1000 and 0.45 < share < 0.55


def test_regulariser_settings_are_checked():
    for bad, says in (({"mixup": -1}, "--mixup"), ({"ema": 1.5}, "--ema"),
                      ({"label_smoothing": 0.9}, "--label-smoothing")):  # fmt: skip
        with pytest.raises(UserError, match=says):
            TrainConfig(data="x", **bad).checked()


@pytest.mark.slow
def test_ema_after_one_step_is_the_formula_and_is_what_is_kept(tiny_config, tmp_path):
    from cropdoc.contract.bundle import BundleMeta
    from cropdoc.engine.trainer import Trainer, phases, train

    trainer = Trainer(tiny_config(ema=0.9, drop_path=0.1))
    before = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
    phase = phases(trainer.config, 0.01)[0]
    trainer.freeze(phase.frozen)
    batches = trainer.train_batches.epoch(0)
    inputs, targets = next(batches)
    trainer.backward(trainer.forward_loss(inputs, targets))
    trainer.ema.update(trainer.model)
    now = trainer.model.state_dict()
    for name, value in trainer.ema.module.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.9 * before[name] + 0.1 * now[name], atol=1e-6), name
    assert any(type(m).__name__ == "DropPath" for m in trainer.model.modules())
    # a whole run keeps the average's weights in its bundle, and says how it was trained
    config = tiny_config(ema=0.9, mixup=0.2, label_smoothing=0.1, class_weights="auto",
                         rand_augment="trivial")  # fmt: skip
    result = train(config)
    meta = BundleMeta.read(result["run"])
    assert meta.extra["recipe"] == {
        "mixup": 0.2, "label_smoothing": 0.1, "rand_augment": "trivial", "ema": 0.9,
        "class_weights": "auto",
    }  # fmt: skip


@pytest.mark.slow
def test_regularisers_with_several_targets_tiles_and_a_resumed_ema(
    demo_data, tiny_config, tmp_path
):
    """Mixup, cutmix and the average train a multi-target run and a tiled one; a run with
    --ema killed after its first epoch resumes to the same bundle as one not stopped."""

    from conftest import kill_after_epoch
    from safetensors.torch import load_file

    from cropdoc.engine.trainer import train

    heavy = dict(mixup=0.4, cutmix=1.0, random_erasing=0.5, ema=0.9, freeze_epochs=0)
    heavy.update(rand_augment="2,9")
    several = tiny_config(targets="label,variety", out=str(tmp_path / "several"), **heavy)
    assert train(several)["best"]["variety_error_rate"] is not None
    tiled = tiny_config(tile=48, tiles_per_image=2, bs=4, out=str(tmp_path / "tiled"), **heavy)
    assert train(tiled)["epochs"] == 1
    args = ["train", str(demo_data), "--arch", "test_resnet", "--no-pretrained", "--bs", "8"]
    args += ["--size", "64", "--item-size", "64", "--cache-size", "96", "--workers", "1"]
    args += ["--epochs", "2", "--freeze-epochs", "1", "--ema", "0.9", "--mixup", "0.4"]
    args += ["--cache", str(tmp_path / "cache")]
    whole = cli_process.run(*args, "--out", tmp_path / "whole", timeout=300)
    assert whole.returncode == 0, whole.stderr
    assert kill_after_epoch(args, tmp_path / "killed", epoch=1) == 1
    resumed = cli_process.run("train", "--resume", tmp_path / "killed", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(tmp_path / "whole" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
