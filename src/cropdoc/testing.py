"""Helpers the tests and the benchmarks share (and a user's own tests may use): a free
loopback port, tiny training settings, reusing a finished run, and the benchmarks' stand-in
for a pretrained body, which cannot be downloaded offline."""

from __future__ import annotations

import csv
import shutil
import socket
from pathlib import Path

# test_resnet from random weights on small photos: a run that trains in seconds on a CPU
TINY_TRAINING = dict(
    arch="test_resnet",
    pretrained=False,
    bs=8,
    item_size="64",
    size="64",
    cache_size=96,
    workers=1,
    epochs=1,
    freeze_epochs=1,
    lr=0.01,
)

# The stand-in body's two stages, in the order they train.
STAND_IN_STAGES = ("disease", "disease+variety")
# the stand-in body's training (the demo's recipe when the body was first measured; kept so
# that a body made again is the one docs/real.md and docs/recipe.md measured)
STAND_IN_TRAINING = dict(
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


def free_port(host: str = "127.0.0.1") -> int:
    """A port of ``host`` that is free right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def keep_if_finished(run: Path, epochs: int) -> bool:
    """True when ``run`` holds a bundle and all ``epochs`` rows of metrics (reuse it);
    otherwise removes whatever an interrupted run left there and returns False."""
    metrics = run / "metrics.csv"
    if (run / "model.json").exists() and metrics.exists():
        with open(metrics, newline="") as f:
            if len(list(csv.DictReader(f))) == epochs:
                return True
    shutil.rmtree(run, ignore_errors=True)
    return False


def stand_in_body(root: Path, per_class: int = 100) -> Path:
    """A stand-in for a pretrained hub body, which cannot be downloaded here: test_resnet
    trained on close-up demo photos drawn with ``--seed 2`` (which no benchmark uses
    otherwise), first on their disease with the demo's recipe (30 epochs from scratch), then
    20 more epochs of one-cycle on their disease and variety together, as a hub body has
    learnt general features (spots, holes, shapes, shades) from other photos. The head is
    dropped: whoever starts from ``root/body.safetensors`` gets a new head. A finished stage
    under ``root`` is reused."""
    from safetensors.torch import load_file

    from cropdoc.config import TrainConfig
    from cropdoc.data.cache import prepare
    from cropdoc.data.demo import make_demo_data
    from cropdoc.engine.trainer import train
    from cropdoc.model.build import write_safetensors
    from cropdoc.model.timm_import import timm

    body = root / "body.safetensors"
    if body.exists():
        return body
    data = make_demo_data(root / "data", per_class=per_class, seed=2, workers=2)["root"]
    cache = str(prepare(data, cache=root / "cache", size=256).cache)
    base = {**STAND_IN_TRAINING, "data": str(data), "cache": cache, "workers": 2, "seed": 0}
    disease, both = (root / stage for stage in STAND_IN_STAGES)
    if not keep_if_finished(disease, base["epochs"]):
        train(TrainConfig(**base, out=str(disease)))
        shutil.rmtree(both, ignore_errors=True)  # it started from the old first stage
    if not keep_if_finished(both, 20):
        weights = str(disease / "model.safetensors")
        both_targets = {**base, "epochs": 20, "targets": "label,variety", "weights": weights}
        train(TrainConfig(**both_targets, out=str(both)))
    state = load_file(both / "model.safetensors")
    head = timm.get_pretrained_cfg(STAND_IN_TRAINING["arch"]).classifier + "."
    write_safetensors(body, {k: v for k, v in state.items() if not k.startswith(head)})
    return body


def stand_in_scores(root: Path) -> dict[str, dict]:
    """What each stage of the stand-in body under ``root`` scored at its kept epoch."""
    from cropdoc.contract.bundle import BundleMeta

    return {stage: BundleMeta.read(root / stage).metrics for stage in STAND_IN_STAGES}
