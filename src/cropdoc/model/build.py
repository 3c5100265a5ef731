"""Model construction: the one place a network is made, for training and for loading.

A cropdoc network is a timm model with a new head (one output per class, or a multi-target
model's outputs: ``cropdoc.contract.targets``), wrapped in ``MILModel`` when it reads photos tile by
tile (``cropdoc.model.mil``). The trainer builds it from its settings, ``load_bundle`` from
a bundle's ``model.json``; the runtimes and the trust stage load it through ``load_bundle``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from cropdoc.contract.bundle import BundleError, BundleMeta, save_meta
from cropdoc.contract.kinds import kind_of
from cropdoc.core.errors import one_line
from cropdoc.core.files import atomic_write
from cropdoc.model.archs import create_model, zero_head
from cropdoc.model.mil import MILModel


def build_network(
    arch: str,
    classes: int,
    outputs: int | None = None,
    pooling: str = "",
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    img_size: tuple[int, int] | None = None,
    drop_path: float = 0.0,
    global_pool: str = "",
) -> nn.Module:
    """A timm model ``arch`` with a head of ``classes`` outputs (made as a single-target
    model's, then replaced by one of ``outputs`` when a multi-target model needs more, so
    the body starts as a single-target run of the same seed would), in ``MILModel`` with
    ``pooling`` (``max`` or ``attention``) for tiles; ``""`` reads whole photos.
    ``drop_path``: timm's stochastic depth rate (training only); ``global_pool``: timm's
    pooling before the head ("": the architecture's own). A new head on a pretrained body
    starts at zero (``models.zero_head``)."""
    model = create_model(
        arch, classes, pretrained, weights, img_size, drop_path or None, global_pool
    )
    if outputs and outputs != classes:
        if global_pool:
            model.reset_classifier(outputs, global_pool)
        else:
            model.reset_classifier(outputs)
        if pretrained or weights is not None:
            zero_head(model)
    return MILModel(model, pooling) if pooling else model


def load_bundle(folder: str | os.PathLike) -> tuple[nn.Module, BundleMeta]:
    """Build the bundle's architecture and load its weights (strict: every tensor must fit)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = BundleMeta.read(folder)
    pooling = kind_of(meta.tiles).pooling
    model = build_network(
        meta.arch, meta.outputs, pooling=pooling, img_size=meta.size, global_pool=meta.global_pool
    )
    path = Path(folder) / "model.safetensors"
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"cannot read {path}: {one_line(exc, 160)}") from None
    mismatch = _mismatch(model.state_dict(), state)
    if mismatch:
        raise BundleError(f"{path} does not fit {meta.arch} with {_head(meta)}: {mismatch}")
    check_finite(path, state)
    model.load_state_dict(state, strict=True)
    return model.eval(), meta


def check_finite(path: Path, tensors: dict) -> None:
    """Refuse weights holding a NaN or an infinity: such a model answers NaN, and a NaN
    must never reach a user as a diagnosis."""
    import torch

    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise BundleError(
            f"{path} holds NaN or infinite weights ({bad[0]}{more}): the file is damaged, or "
            "its training diverged; train it again or restore the file"
        )


def _head(meta: BundleMeta) -> str:
    """What the bundle's head answers, in a few words."""
    if not meta.targets:
        return f"{len(meta.classes)} classes"
    return f"{meta.outputs} outputs ({', '.join(t.name for t in meta.targets)})"


def _mismatch(expected: dict, found: dict) -> str:
    """What keeps ``found`` from loading into a model whose state is ``expected``, in a few
    words (empty when it fits)."""

    def shape(tensor) -> str:
        return "x".join(map(str, tensor.shape)) or "scalar"

    wrong = [
        f"tensor {k} has shape {shape(found[k])}, expected {shape(v)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    wrong += [f"tensor {k} is missing" for k in expected if k not in found]
    wrong += [f"tensor {k} is not part of the model" for k in found if k not in expected]
    if not wrong:
        return ""
    more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
    return wrong[0] + more


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` (moved to the CPU, made contiguous) as one safetensors file,
    atomically."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write(path, lambda f: f.write(data))


def save_bundle(folder: str | os.PathLike, model: torch.nn.Module, meta: BundleMeta | dict) -> Path:
    """Write the model's weights and ``meta`` (checked as ``BundleMeta``) into ``folder``,
    with the versions that wrote them; returns the folder."""
    folder = Path(folder)
    if isinstance(meta, dict):
        meta = BundleMeta.from_dict(meta, "the bundle's settings")
    write_safetensors(folder / "model.safetensors", model.state_dict())
    return save_meta(folder, meta)
