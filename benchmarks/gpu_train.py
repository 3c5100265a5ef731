"""GPU training, cropdoc vs fastai side by side: images/s and peak memory for a fixed number
of steps of the same architecture, size, batch and precision, on the same demo photos.

    python benchmarks/gpu_train.py [--arch convnext_tiny] [--size 224] [--bs 64] [--steps 40]

cropdoc: its trainer (cached uint8 batches, augmentation on the GPU, bf16 autocast,
channels_last, fused AdamW). fastai: ``vision_learner(...).to_bf16()`` (``to_fp16()`` where
the installed fastai has no bf16) with ``item_tfms=Resize(256)`` and
``aug_transforms(size, min_scale=0.75)``. Both from scratch (no download), one process each
in turn. Needs a CUDA GPU and fastai (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_mb() -> float | None:
    import torch

    return (
        round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None
    )


def cropdoc_rate(data: Path, args) -> dict:

    from cropdoc.config import TrainConfig
    from cropdoc.engine.trainer import Trainer

    config = TrainConfig(
        data=str(data),
        cache=str(data.parent / "cache"),
        arch=args.arch,
        pretrained=False,
        from_scratch=True,
        bs=args.bs,
        item_size=str(args.size),
        size=str(args.size),
        cache_size=max(256, args.size),
        epochs=100,
        out=str(data.parent / "run"),
        compile=args.compile,
    )
    trainer = Trainer(config)  # the optimizer's own learning rate: speed does not depend on it
    _reset_peak()
    steps, start = 0, None
    for epoch in range(1000):
        for inputs, targets in trainer.train_batches.epoch(epoch):
            if steps == 5:  # after a warm-up: allocations, cudnn autotuning
                _sync()
                start = time.perf_counter()
            trainer.step(inputs, targets)
            steps += 1
            if steps == args.steps + 5:
                _sync()
                seconds = time.perf_counter() - start
                return {
                    "images_per_s": round(args.steps * args.bs / seconds, 1),
                    "peak_memory_mb": _peak_mb(),
                    "precision": trainer.precision,
                }
    raise RuntimeError("not enough batches")


def fastai_rate(data: Path, args) -> dict:
    from fastai.callback.core import Callback, CancelFitException
    from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms, vision_learner

    class Timer(Callback):
        def before_batch(self):
            if self.iter_count == 5:
                _sync()
                self.start = time.perf_counter()

        def after_batch(self):
            self.iter_count += 1
            if self.iter_count == args.steps + 5:
                _sync()
                self.seconds = time.perf_counter() - self.start
                raise CancelFitException()

        def before_fit(self):
            self.iter_count = 0

    dls = ImageDataLoaders.from_folder(
        data / "train_images",
        valid_pct=0.2,
        seed=42,
        bs=args.bs,
        item_tfms=Resize(256),
        batch_tfms=aug_transforms(size=args.size, min_scale=0.75),
    )
    learn = vision_learner(dls, args.arch, pretrained=False)
    learn = learn.to_bf16() if hasattr(learn, "to_bf16") else learn.to_fp16()
    timer = Timer()
    _reset_peak()
    learn.fit_one_cycle(1000, 1e-3, cbs=[timer])
    return {
        "images_per_s": round(args.steps * args.bs / timer.seconds, 1),
        "peak_memory_mb": _peak_mb(),
        "precision": "bf16" if hasattr(learn, "to_bf16") else "fp16",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="convnext_tiny")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--compile", action="store_true", help="cropdoc with torch.compile")
    parser.add_argument("--cropdoc-only", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from cropdoc.data.demo import make_demo_data

    work = Path(tempfile.mkdtemp(prefix="cropdoc-gpu-"))
    make_demo_data(work / "demo", per_class=args.per_class)
    result = {"arch": args.arch, "size": args.size, "bs": args.bs, "steps": args.steps}
    result["compile"] = args.compile
    sides = [("cropdoc", cropdoc_rate)] + ([] if args.cropdoc_only else [("fastai", fastai_rate)])
    for name, run in sides:
        try:
            result[name] = run(work / "demo", args)
        except Exception as exc:  # report, and still give the other side's figure
            result[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
