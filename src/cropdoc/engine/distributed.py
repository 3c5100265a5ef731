"""Distributed data parallel training: the process group from torchrun's (or accelerate's)
environment, and the few collective steps the trainer needs. In a single process every
function here is a no-op, so the trainer reads the same either way."""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def active() -> bool:
    """True in a multi-process run."""
    return world_size() > 1


def is_main() -> bool:
    """Only the first process writes files and prints."""
    return rank() == 0


def setup() -> None:
    """Join the process group (NCCL with GPUs, gloo on CPUs) when launched by torchrun;
    only the first process shows progress."""
    if active() and not is_main():
        logging.getLogger("cropdoc").setLevel(logging.WARNING)
    if active() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast(value):
    """The first process's ``value``, in every process."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums of ``values`` over all processes."""
    if not active():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_true(flags: list[bool], device: torch.device) -> list[bool]:
    """For each flag: is it true in any process?"""
    if not active():
        return flags
    tensor = torch.tensor([int(f) for f in flags], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def barrier() -> None:
    if active():
        dist.barrier()
