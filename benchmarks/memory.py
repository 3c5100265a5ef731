"""Peak memory and speed of a training step at large inputs, with and without gradient
checkpointing, in one run.

Usage: python benchmarks/memory.py [--arch convnext_tiny] [--sizes 224,480x360,480x640]
       [--bs 8] [--steps 2]

Each configuration runs in a fresh process (so the peak is its own). Per configuration:
- the activation memory the forward pass keeps for the backward, counted on the meta device
  (``cropdoc.engine.memory``, exact for what autograd saves);
- the measured peak of a real step above the model and optimizer: on a GPU
  ``max_memory_allocated``, on the CPU the process's peak RSS minus its RSS before the step;
- images/s of real training steps (fp32 on the CPU, bf16 on a GPU), after a warm-up step.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from common import machine, report


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one(arch: str, size: tuple[int, int], checkpointing: bool, bs: int, steps: int) -> dict:
    """Measure one configuration in this process."""
    import torch

    from cropdoc.engine import memory
    from cropdoc.model.archs import create_model

    def make() -> torch.nn.Module:
        model = create_model(arch, 10, pretrained=False)
        model.set_grad_checkpointing(checkpointing)
        return model

    saved = memory.activation_bytes(make, bs, size)[0] / 2**20
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = make().to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if cuda else torch.float32

    def step(h: int, w: int) -> None:
        x = torch.randn(bs, 3, h, w, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (bs,), device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    step(64, 64)  # optimizer state exists from here on
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = rss_mb()
    step(*size)  # warm-up at the size: this one reaches the peak too
    started = time.perf_counter()
    for _ in range(steps):
        step(*size)
    seconds = time.perf_counter() - started
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "saved_activations_mb": round(saved, 1),
        "step_peak_mb": round(peak - before, 1),
        "images_per_s": round(bs * steps / seconds, 2),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="convnext_tiny")
    parser.add_argument("--sizes", default="224,480x360,480x640")
    parser.add_argument("--bs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # SIZE:CHECKPOINTING, internal
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from cropdoc.config import parse_size

    if args.one:
        size, checkpointing = args.one.split(":")
        result = one(args.arch, parse_size(size), checkpointing == "1", args.bs, args.steps)
        print(json.dumps(result))
        return
    result: dict = {"machine": machine(), "arch": args.arch, "bs": args.bs}
    for size in args.sizes.split(","):
        for checkpointing in ("0", "1"):
            command = [sys.executable, __file__, "--arch", args.arch, "--bs", str(args.bs)]
            command += ["--steps", str(args.steps), "--one", f"{size}:{checkpointing}"]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            result["device"] = measured.pop("device")
            label = f"{size}_{'checkpointed' if checkpointing == '1' else 'plain'}"
            for key, value in measured.items():
                result[f"{label}_{key}"] = value
        plain, ckpt = f"{size}_plain", f"{size}_checkpointed"
        result[f"{size}_activation_cut"] = round(
            result[f"{plain}_saved_activations_mb"] / result[f"{ckpt}_saved_activations_mb"], 2
        )
        result[f"{size}_step_peak_cut"] = round(
            result[f"{plain}_step_peak_mb"] / max(result[f"{ckpt}_step_peak_mb"], 1e-9), 2
        )
        result[f"{size}_throughput_loss_pct"] = round(
            100 * (1 - result[f"{ckpt}_images_per_s"] / result[f"{plain}_images_per_s"]), 1
        )
    report(result, args.json)


if __name__ == "__main__":
    main()
