"""Images/s delivered to the model (model excluded): cropdoc's batches vs fastai's
ImageDataLoaders with the blog's transforms, on the same images, in one run.

Usage: python benchmarks/loader.py [--per-class 100] [--batches 30] [--bs 64] [--rounds 3]
       [--device cpu]

fastai reads the 256 px JPEGs of the blog's resize_images step with
item_tfms=Resize(192, method='squish') and batch_tfms=aug_transforms(size=128,
min_scale=0.75); cropdoc reads the prepare cache of the same photos (longer side 256) and
resizes + augments whole batches on the device to 128 px. Needs: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import machine, report


def rate(batches, count: int, warmup: int = 2) -> float:
    """Images per second over ``count`` batches after ``warmup`` batches."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    start, images = time.perf_counter(), 0
    for _ in range(count):
        inputs = next(iterator)[0]
        images += len(inputs)
    if inputs.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def endless(make_epoch):
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch
    from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms, resize_images

    from cropdoc.data.augment import Augment
    from cropdoc.data.cache import Cache, prepare
    from cropdoc.data.demo import make_demo_data
    from cropdoc.data.loader import Batches, split_cache

    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="cropdoc-bench-"))
    try:
        make_demo_data(work / "demo", per_class=args.per_class)
        photos = work / "demo" / "train_images"
        resize_images(photos, max_size=256, dest=work / "small", recurse=True)
        dls = ImageDataLoaders.from_folder(
            work / "small",
            valid_pct=0.2,
            seed=42,
            bs=args.bs,
            device=device,
            item_tfms=Resize(192, method="squish"),
            batch_tfms=aug_transforms(size=128, min_scale=0.75),
        )

        cache = Cache(prepare(photos, cache=work / "cache", size=256).cache)
        split = split_cache(cache, 0.2, 42)
        batches = Batches(
            cache,
            split.train,
            split.targets,
            args.bs,
            Augment(size=(128, 128), item_size=(192, 192)),
            True,
            device,
            (0.485, 0.456, 0.406),
            (0.229, 0.224, 0.225),
        )
        fastai_rate = cropdoc_rate = 0.0
        for _ in range(args.rounds):  # in turns, best of rounds: the VM's speed drifts
            fastai_rate = max(fastai_rate, rate(endless(lambda _: dls.train), args.batches))
            cropdoc_rate = max(cropdoc_rate, rate(endless(batches.epoch), args.batches))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "images": len(split.train),
        "bs": args.bs,
        "device": str(device),
        "fastai_images_per_s": round(fastai_rate, 1),
        "cropdoc_images_per_s": round(cropdoc_rate, 1),
        "speedup": round(cropdoc_rate / fastai_rate, 2),
        "torch_threads": torch.get_num_threads(),
        "machine": machine(),
    }
    report(result, args.json)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
