"""How fast a model infers and how much memory a run took, on the device it ran on."""

from __future__ import annotations

import resource
import statistics
import time

import torch

from cropdoc.model.device import autocast


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated GPU memory on CUDA, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@torch.no_grad()
def inference_speed(
    model: torch.nn.Module,
    size: tuple[int, int],
    device: torch.device,
    precision: str = "fp32",
    batch: int = 64,
    repeats: int = 3,
) -> dict:
    """Images/s at ``batch`` (median of ``repeats``) and latency in ms at batch 1 (median of
    ten), after a warm-up, on random inputs of ``size``."""
    model = model.eval().to(device, memory_format=torch.channels_last)

    def median_seconds(n: int, times: int) -> float:
        x = torch.randn(n, 3, *size, device=device).contiguous(memory_format=torch.channels_last)
        spans = []
        for i in range(times + 1):
            start = time.perf_counter()
            with autocast(device, precision):
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # the first is the warm-up
                spans.append(time.perf_counter() - start)
        return statistics.median(spans)

    return {
        "infer_images_per_s": round(batch / median_seconds(batch, repeats), 1),
        "latency_ms": round(1000 * median_seconds(1, 10), 2),
    }
