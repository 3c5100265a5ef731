"""Adapt a bundle to a new site with no labels at all: its batch-norm layers' running
statistics estimated again on unlabelled photos of the site (every weight stays as it is),
then the out-of-scope threshold refitted on them (its temperature and floor stay)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cropdoc.adaptation.lineage import parent_bundle, record
from cropdoc.contract.ood import KEEP
from cropdoc.core.errors import UserError
from cropdoc.core.progress import Progress
from cropdoc.data.cache import Cache, prepare
from cropdoc.data.layouts import photos
from cropdoc.data.loader import make_canvas
from cropdoc.engine.trust import refit_threshold
from cropdoc.model.build import load_bundle, save_bundle
from cropdoc.model.device import pick_device
from cropdoc.model.inputs import validation_input
from cropdoc.model.scoring import TRUST_FILE

BS = 32


def adapt_norms(
    parent: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    keep: float = KEEP,
    bs: int = BS,
    workers: int | None = None,
    device: str = "auto",
) -> dict:
    """A bundle in ``out``: the bundle ``parent`` with its batch-norm statistics those of
    the photos ``data`` (a folder or manifest; labels, if any, are not read) through its
    validation transform, and its out-of-scope threshold keeping ``keep`` of them in scope.
    Returns what was done."""
    parent, data, out = Path(parent), Path(data), Path(out)
    parent_bundle(parent)
    if (out / "model.json").exists():
        raise UserError(f"{out} already holds a bundle: choose another --out")
    model, meta = load_bundle(parent)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise UserError(f"{meta.arch} has no batch-norm layers: there are no statistics to adapt")
    cache = Cache(prepare(photos(data), size=meta.cache_size, workers=workers).cache)
    indices = np.arange(len(cache.images))
    if len(indices) < 2:
        raise UserError(f"{data} holds {len(indices)} readable photo(s): give at least two")
    estimate(model, norms, meta, cache, indices, bs, pick_device(device))
    out.mkdir(parents=True, exist_ok=True)
    if (parent / TRUST_FILE).exists():
        shutil.copyfile(parent / TRUST_FILE, out / TRUST_FILE)
    save_bundle(out, model.cpu(), meta)
    trust = refit_threshold(out, cache, indices, keep, device)
    adapted = record(out, parent, "norms", data, {"unlabelled": len(indices)})
    return {"out": str(out), "norm_layers": len(norms), "trust": trust, "adapted": adapted}


@torch.no_grad()
def estimate(model, norms: list, meta, cache: Cache, indices, bs: int, device) -> None:
    """The running mean and variance of every layer of ``norms``: the average over batches
    of ``bs`` photos (the model in training mode for them, every other layer in eval)."""
    model.to(device).eval()
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()
    try:
        with Progress(len(indices), "norms", lines=False) as progress:
            for start in range(0, len(indices), bs):
                batch = indices[start : start + bs]
                canvas, sizes = make_canvas([cache.pixels(int(i)) for i in batch])
                model(validation_input(meta, canvas.to(device), sizes))
                progress.update(len(batch))
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.eval()
