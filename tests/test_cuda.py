"""What only a CUDA GPU runs: skipped without one (CI has none); benchmarks/gpu_check.sh
runs them with ``pytest -m cuda`` where a GPU is lent."""

from __future__ import annotations

import pytest
import torch

from cropdoc.engine.trainer import Trainer, train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_auto_precision_channels_last_and_fused_adamw_on_the_gpu(tiny_config):
    trainer = Trainer(tiny_config(device="cuda"))
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert trainer.precision == expected and trainer.device.type == "cuda"
    assert trainer.optimizer.defaults["fused"]
    inputs, targets = next(trainer.train_batches.epoch(0))
    assert inputs.is_cuda and targets.is_cuda
    before = trainer.model.fc.weight.detach().clone()
    assert torch.isfinite(torch.tensor(trainer.step(inputs, targets)))
    assert not torch.equal(before, trainer.model.fc.weight)


def test_bs_auto_probes_real_steps_on_the_gpu(tiny_config):
    trainer = Trainer(tiny_config(device="cuda", bs="auto"))
    assert trainer.config.bs >= 8


def test_a_gpu_run_trains_and_its_bundle_predicts_on_the_cpu(tiny_config, tmp_path, demo_data):
    from cropdoc.inference.predict import predict

    result = train(tiny_config(device="cuda", freeze_epochs=0, epochs=2))
    assert result["device"].startswith("cuda") and result["epochs"] == 2
    images = sorted((demo_data / "test_images").glob("*.jpg"))
    gpu = predict([tmp_path / "run"], images, device="cuda")
    cpu = predict([tmp_path / "run"], images, device="cpu")
    assert (gpu.probs.argmax(1) == cpu.probs.argmax(1)).mean() >= 0.9
