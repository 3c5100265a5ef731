"""The code paths a GPU takes, exercised on the CPU: bf16 and fp16 autocast, the grad
scaler's skipped steps and scale updates, out-of-memory handling, torch.compile.

CI has no GPU; these run the same trainer code with the CPU's autocast (bf16 and fp16 both
exist there) and with CUDA's out-of-memory error raised where a GPU would raise it."""

from __future__ import annotations

import json

import pytest
import torch

from cropdoc.engine.trainer import Trainer, TrainingStopped, train


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_steps_train_in_half_precision(tiny_config, precision):
    trainer = Trainer(tiny_config(precision=precision, device="cpu"))
    assert trainer.precision == precision
    dtypes = []
    trainer.model.fc.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    inputs, targets = next(trainer.train_batches.epoch(0))
    before = trainer.model.fc.weight.detach().clone()
    for _ in range(8):  # fp16's grad scaler skips the steps whose gradients overflow
        loss = trainer.step(inputs, targets)
        if not torch.equal(before, trainer.model.fc.weight):
            break
    assert set(dtypes) == {torch.bfloat16 if precision == "bf16" else torch.float16}
    assert torch.isfinite(torch.tensor(loss)) and not torch.equal(before, trainer.model.fc.weight)
    assert precision == "fp16" or len(dtypes) == 1  # bf16 needs no scaler: its first step moves
    assert trainer.model.fc.weight.dtype == torch.float32  # the master weights stay fp32


def test_fp16_grad_scaler_skips_inf_steps_and_lowers_its_scale(tiny_config):
    trainer = Trainer(tiny_config(precision="fp16", device="cpu"))
    scaler = trainer.scaler
    assert scaler.is_enabled()
    inputs, targets = next(trainer.train_batches.epoch(0))
    trainer.step(inputs, targets)  # a normal step: the scale stays, the weights move
    scale = scaler.get_scale()
    before = _weights(trainer.model)
    hook = trainer.model.fc.weight.register_hook(lambda grad: grad * float("inf"))
    trainer.step(inputs, targets)  # inf gradients: the step is skipped, the scale halves
    hook.remove()
    assert scaler.get_scale() == scale / 2
    after = _weights(trainer.model)
    trainable = {n for n, p in trainer.model.named_parameters()}
    assert all(torch.equal(before[n], after[n]) for n in trainable)
    trainer.step(inputs, targets)
    assert not torch.equal(after["fc.weight"], trainer.model.fc.weight)
    assert scaler.get_scale() == scale / 2  # growth only after 2,000 good steps


def test_cuda_out_of_memory_says_what_to_do_and_keeps_the_checkpoint(tiny_config, tmp_path):
    config = tiny_config(from_scratch=True, epochs=2)
    (tmp_path / "run").mkdir()
    trainer = Trainer(config)
    per_epoch, calls = len(trainer.train_batches), []
    forward_loss = trainer.forward_loss

    def out_of_memory_in_the_second_epoch(inputs, targets):
        calls.append(1)
        if len(calls) > per_epoch:  # where a GPU would run out of memory
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward_loss(inputs, targets)

    trainer.forward_loss = out_of_memory_in_the_second_epoch
    with pytest.raises(TrainingStopped, match="out of GPU memory at batch size 8: try a smaller"):
        trainer.fit(0.01)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 1 and state["step"] == 0  # the first epoch's checkpoint is kept


@pytest.mark.slow
def test_compile_trains_one_tiny_epoch_on_the_cpu(tiny_config, tmp_path):
    config = tiny_config(compile=True, freeze_epochs=0, device="cpu")
    result = train(config)
    assert result["epochs"] == 1 and 0 <= result["best"]["error_rate"] <= 1
    assert (tmp_path / "run" / "model.safetensors").exists()
