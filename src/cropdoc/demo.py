"""The demo pipeline: demo data -> prepare -> show -> lr-find -> train from scratch."""

from __future__ import annotations

import os
from pathlib import Path

from cropdoc.config import TrainConfig
from cropdoc.data.cache import prepare
from cropdoc.data.demo import make_demo_data
from cropdoc.data.show import show_samples
from cropdoc.progress import say

# A small model trained from scratch (nothing to download) at the cached photos' own size,
# 256x192, where the lesions are still a few pixels wide. About 3.5 minutes on 2 CPU cores.
DEMO_TRAINING = dict(
    arch="test_resnet",
    from_scratch=True,
    pretrained=False,
    epochs=30,
    bs=16,
    lr=0.01,
    item_size="256x192",
    size="256x192",
    cache_size=256,
)


def run_demo(out: str | os.PathLike = "demo") -> dict:
    """Run cropdoc's pipeline on the embedded demo dataset under ``out``; return the paths
    and the error rate. A finished demo run is reused, not trained again."""
    from cropdoc.engine import lr_find
    from cropdoc.engine.trainer import Trainer, train

    out = Path(out)
    data = make_demo_data(out / "data")
    say(f"demo data: {data['root']}")
    prepared = prepare(data["root"], cache=out / "cache")
    say(f"cache: {prepared.cache} ({prepared.total} images)")
    samples = show_samples(prepared.dataset, out=out / "samples.png")
    say(f"samples: {samples['out']}")
    run = out / "runs" / "test_resnet-scratch"
    config = TrainConfig(
        data=data["root"], cache=str(prepared.cache), out=str(run), **DEMO_TRAINING
    )
    found = Trainer(config).find_lr()
    lr_find.plot(found, out / "lr_find.png")
    say(
        f"lr-find: valley {found.valley:.2e}, slide {found.slide:.2e} ({out / 'lr_find.png'});"
        f" training at the demo's tested lr {config.lr}"
    )
    if (run / "model.json").exists() and (run / "metrics.csv").exists():
        from cropdoc.bundle import BundleMeta

        best = BundleMeta.read(run).metrics
        say(f"{run} is already trained: delete it to train again")
    else:
        if run.exists():
            import shutil

            shutil.rmtree(run)  # an unfinished demo run of ours
        best = train(config)["best"]
    result = {
        "data": data["root"],
        "cache": str(prepared.cache),
        "samples": samples["out"],
        "lr_find": str(out / "lr_find.png"),
        "valley": found.valley,
        "slide": found.slide,
        "run": str(run),
        "error_rate": best["error_rate"],
        "accuracy": best["accuracy"],
    }
    return result
