"""The demo pipeline: demo data -> prepare -> show -> lr-find -> train from scratch."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from cropdoc.config import TrainConfig
from cropdoc.core.progress import say
from cropdoc.data.cache import prepare
from cropdoc.data.demo import MARKER, make_demo_data
from cropdoc.data.show import show_samples

# A small model trained from scratch (nothing to download) at the cached photos' own size,
# 256x192, where the lesions are still a few pixels wide. About 4 minutes on 2 CPU cores.
# test_resnet from scratch with max pooling before the head: a lesion of a few pixels is a
# small share of an average but the whole of a maximum, so the model leaves chance after one
# epoch instead of six and 18 epochs do better than 30 did with average pooling
# (docs/recipe.md, "A demo that learns at once")
DEMO_TRAINING = dict(
    arch="test_resnet",
    from_scratch=True,
    pretrained=False,
    global_pool="max",
    epochs=18,
    bs=16,
    lr=0.01,
    item_size="256x192",
    size="256x192",
    cache_size=256,
)


def run_demo(out: str | os.PathLike = "demo") -> dict:
    """Run cropdoc's pipeline on the embedded demo dataset under ``out``; return the paths
    and the error rate. A finished demo run is reused, not trained again (unless the demo
    data was drawn again since: another cropdoc version draws other photos)."""
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
    if finished(run, Path(data["root"])):
        from cropdoc.contract.bundle import BundleMeta

        best = BundleMeta.read(run).metrics
        say(f"{run} is already trained: delete it to train again")
    else:
        if run.exists():
            import shutil

            shutil.rmtree(run)  # an unfinished or outdated demo run of ours
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


def finished(run: Path, data: Path) -> bool:
    """Has ``run`` trained every epoch of the demo on the demo data at ``data`` as it is
    now (its bundle newer than the data)?"""
    metrics, bundle = run / "metrics.csv", run / "model.json"
    if not (metrics.exists() and bundle.exists() and (data / MARKER).exists()):
        return False
    with open(metrics, newline="", encoding="utf-8") as f:
        epochs = len(list(csv.DictReader(f)))
    newer = bundle.stat().st_mtime >= (data / MARKER).stat().st_mtime
    return epochs == DEMO_TRAINING["epochs"] and newer
