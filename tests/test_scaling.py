"""Progressive resizing, --bs auto under a memory cap, and the memory estimate."""

from __future__ import annotations

import logging

import pytest

from cropdoc.core.errors import UserError
from cropdoc.engine import memory
from cropdoc.engine.trainer import Trainer
from cropdoc.model.archs import create_model


def test_progressive_resizing_changes_the_shape_at_the_right_epochs(tiny_config, tmp_path):
    config = tiny_config(
        epochs=6, freeze_epochs=0, from_scratch=True, bs=4, progressive="32,48x32,64", size="48"
    )
    assert config.checked().size == "64"  # the last stage's size is the model's
    assert config.size == "48"  # the caller's settings are not changed
    trainer = Trainer(config)
    seen: dict[int, set] = {}
    trainer.model.register_forward_pre_hook(
        lambda m, args: seen.setdefault(trainer.epoch, set()).add((m.training, *args[0].shape[2:]))
    )
    trainer.fit(0.01)
    # two epochs per stage; validation always at the final size
    expected = [(32, 32), (32, 32), (48, 32), (48, 32), (64, 64), (64, 64)]
    for number, size in enumerate(expected):
        assert seen[number] == {(True, *size), (False, 64, 64)}, number
    with pytest.raises(UserError, match="takes one input size"):
        Trainer(tiny_config(arch="test_vit", progressive="32,64"))


def test_bs_auto_takes_a_smaller_batch_under_a_memory_cap(
    tiny_config, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="cropdoc")
    roomy = tiny_config(bs="auto")
    # 24 training images: the largest power of two, nothing in the way
    assert Trainer(roomy).config.bs == 16
    assert roomy.bs == "auto"  # the caller's settings are not changed
    needs = {
        bs: memory.step_bytes(lambda: create_model("test_resnet", 10, False), bs, (64, 64))
        for bs in (4, 8, 16)
    }
    assert needs[4] < needs[8] < needs[16]
    cap = (needs[8] + needs[16]) / 2
    monkeypatch.setenv("CROPDOC_MEMORY_LIMIT_MB", str(cap / 2**20))
    capped = tiny_config(bs="auto", out=str(tmp_path / "run2"))
    assert Trainer(capped).config.bs == 8
    assert "bs auto: 8 at 64x64 (16 did not fit)" in caplog.messages
    monkeypatch.setenv("CROPDOC_MEMORY_LIMIT_MB", "0.5")
    with pytest.raises(UserError, match="not even a batch of 1 fits"):
        Trainer(tiny_config(bs="auto", out=str(tmp_path / "run3")))


def test_gradient_checkpointing_lowers_the_memory_estimate():
    def model(checkpointing: bool):
        def make():
            built = create_model("test_convnext", 10, False)
            built.set_grad_checkpointing(checkpointing)
            return built

        return make

    plain = memory.step_bytes(model(False), 8, (96, 64))
    checkpointed = memory.step_bytes(model(True), 8, (96, 64))
    assert checkpointed < plain / 2
