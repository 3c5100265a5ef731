"""Training images/s: cropdoc's trainer vs a bare forward/backward/step loop with the same
model, batch size and optimizer, in one run.

Usage: python benchmarks/train_step.py [--arch resnet26d] [--size 128] [--bs 32] [--steps 20]
       [--per-class 20]

Two cropdoc figures: the trainer's step on the same ready-made batch as the bare loop
(the trainer's own overhead), and one whole training epoch of the trainer with its batches,
one-cycle schedule and bookkeeping (adds the input pipeline, see benchmarks/loader.py).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import machine, report


def timed(run, sync) -> float:
    """Images per second of ``run()``, which returns how many images it trained on."""
    sync()
    start = time.perf_counter()
    images = run()
    sync()
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet26d")
    parser.add_argument("--size", default="128")
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=20, help="demo images per class")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from cropdoc.config import TrainConfig
    from cropdoc.data.demo import make_demo_data
    from cropdoc.engine.trainer import Trainer, phases

    work = Path(tempfile.mkdtemp(prefix="cropdoc-bench-"))
    try:
        make_demo_data(work / "demo", per_class=args.per_class)
        config = TrainConfig(
            data=str(work / "demo"),
            cache=str(work / "cache"),
            arch=args.arch,
            pretrained=False,
            from_scratch=True,
            bs=args.bs,
            item_size=args.size,
            size=args.size,
            out=str(work / "run"),
            epochs=100,
        )
        trainer = Trainer(config)
        device = trainer.device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        inputs, targets = next(trainer.train_batches.epoch(0))
        trainer.step(inputs, targets)  # warm-up: allocations, optimizer state
        model, optimizer = trainer.model, trainer.optimizer

        def bare() -> int:
            model.train()
            for _ in range(args.steps):
                with trainer.autocast():
                    loss = F.cross_entropy(model(inputs).float(), targets)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return args.steps * len(targets)

        def trainer_step() -> int:
            for _ in range(args.steps):
                trainer.step(inputs, targets)
            return args.steps * len(targets)

        phase = phases(config, 1e-3)[0]
        per_epoch = len(trainer.train_batches)

        def trainer_epoch() -> int:
            trainer.train_epoch(phase, 0, 0)
            return per_epoch * args.bs

        runs = {"bare": bare, "step": trainer_step, "epoch": trainer_epoch}
        best = dict.fromkeys(runs, 0.0)
        for _ in range(args.rounds):  # in turns, best of rounds: the VM's speed drifts
            for name, run in runs.items():
                best[name] = max(best[name], timed(run, sync))
        bare_rate, step_rate, loop_rate = best["bare"], best["step"], best["epoch"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "arch": args.arch,
        "size": args.size,
        "bs": args.bs,
        "device": str(device),
        "precision": trainer.precision,
        "bare_loop_images_per_s": round(bare_rate, 1),
        "trainer_step_images_per_s": round(step_rate, 1),
        "trainer_with_batches_images_per_s": round(loop_rate, 1),
        "step_overhead_pct": round(100 * (bare_rate / step_rate - 1), 1),
        "with_batches_overhead_pct": round(100 * (bare_rate / loop_rate - 1), 1),
        "machine": machine(),
    }
    report(result, args.json)


if __name__ == "__main__":
    main()
