"""timm models: the QEUR23_VATT5 blog post's presets, creation with a new head (from the
hub's or local weights), body/head split."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from cropdoc.core.errors import UserError
from cropdoc.model.timm_import import timm

# The architectures the QEUR23_VATT5 blog post ("FastaiでCONVNEXTモデルを使ってみる", QEU,
# 2025-09-03) compares, and a few more a user of this tool reaches for.
PRESETS = {
    "resnet26d": "the blog's baseline (about 13% error on paddy at 128 px)",
    "convnext_tiny": "the blog's pick: accurate, any input size, fit for the edge",
    "convnext_small": "larger ConvNeXt of the paddy leaderboard entries",
    "coatnet_0_rw_224": "CoAtNet: as accurate as ConvNeXt, slower, fixed input size",
    "efficientnet_b0": "small and fast, for phones",
    "resnet18": "small classic CNN",
    "vit_small_patch16_224": "a ViT: the fixed-size kind the blog moved away from",
}


@dataclass(frozen=True)
class ModelInfo:
    """Size and compute of an architecture at an input size."""

    name: str
    params_m: float
    gmacs: float
    input_size: tuple[int, int]


def count(name: str, input_size: tuple[int, int] | None = None, num_classes: int = 1000):
    """Params (millions) and GMACs of ``name`` at ``input_size`` (default: its own),
    measured on the meta device, so nothing is allocated or downloaded."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = _create(name, pretrained=False, num_classes=num_classes, img_size=input_size)
        model.eval()  # as at inference: BatchNorm takes a batch of one at any size
        size = input_size or tuple(model.pretrained_cfg["input_size"][1:])
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, *size))
    params = sum(p.numel() for p in model.parameters())
    return ModelInfo(name, params / 1e6, counter.get_total_flops() / 2e9, size)


def list_models(filter_text: str = "") -> list[str]:
    """Preset names matching ``filter_text``, then every other timm name that matches it."""
    presets = [p for p in PRESETS if filter_text.lower() in p]
    if not filter_text:
        return presets
    others = [m for m in timm.list_models(f"*{filter_text}*") if m not in presets]
    return presets + others


def check_arch(name: str) -> None:
    """Raise a clear error, with suggestions, for a name timm does not know."""
    base = name.split(".")[0]
    if timm.is_model(base):
        return
    close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else " See `cropdoc models --filter`."
    raise UserError(f"unknown architecture {name!r}.{hint}")


def create_model(
    arch: str,
    num_classes: int,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    img_size: tuple[int, int] | None = None,
    drop_path_rate: float | None = None,
    global_pool: str = "",
) -> nn.Module:
    """A timm model with a new ``num_classes`` head.

    Args:
        arch: any timm name, with or without a pretrained tag (``convnext_tiny.fb_in22k``).
        pretrained: take the pretrained weights from the hub (online only).
        weights: local weights to start from instead (``cropdoc.model.weights``: a safetensors
            file, a state dict or a hub-style folder); a head of another shape starts new.
        img_size: for architectures with a fixed input size, build them at this size.
        drop_path_rate: timm's stochastic depth (``--drop-path``), where the model has it.
        global_pool: timm's pooling of the body's features (``--global-pool``; "": the
            model's own).

    A head made new on pretrained weights starts at zero (``zero_head``).
    """
    check_arch(arch)
    if img_size is not None and has_fixed_size(arch):
        _check_fixed_size(arch, tuple(img_size))
    extra = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    if global_pool:
        extra["global_pool"] = global_pool
    if weights is not None:
        from cropdoc.core.progress import say
        from cropdoc.model.weights import load_weights

        model = _create(arch, False, num_classes, img_size, **extra)
        said, new_head = load_weights(model, weights, arch)
        say(said)
        if new_head:
            zero_head(model)
        return model
    if not pretrained:
        return _create(arch, False, num_classes, img_size, **extra)
    try:
        with _quiet_hub():
            model = _create(arch, True, num_classes, img_size, **extra)
    except Exception as exc:  # the hub client's own errors (no network, offline, no such file)
        raise UserError(
            f"could not get pretrained weights for {arch} ({_first_line(exc)}): "
            "offline? pass --weights FILE (a .safetensors or .pth state dict, or a hub folder), "
            "or --no-pretrained to start from scratch"
        ) from None
    if num_classes != (model.pretrained_cfg or {}).get("num_classes"):
        zero_head(model)  # timm made the head new: the hub's has other classes
    return model


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:120] if lines else type(exc).__name__


@contextlib.contextmanager
def _quiet_hub():
    """Keep the hub client's own warnings (retries, offline) off the screen: a failed
    download ends in one line of ours."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _create(arch: str, pretrained: bool, num_classes: int, img_size=None, **extra) -> nn.Module:
    kwargs = dict(extra)
    if img_size is not None and has_fixed_size(arch):
        kwargs["img_size"] = tuple(img_size)
    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except (TypeError, AssertionError, ValueError) as exc:  # an option it does not take
        if not extra:
            raise
        raise UserError(f"{arch} does not take {', '.join(extra)} ({_first_line(exc)})") from None


def has_fixed_size(arch: str) -> bool:
    cfg = timm.get_pretrained_cfg(arch.split(".")[0])
    return bool(cfg and cfg.fixed_input_size)


def _check_fixed_size(arch: str, size: tuple[int, int]) -> None:
    """Build a fixed-size architecture at ``size`` and run one image through it on the meta
    device (nothing is allocated); a size it cannot take is a clear error that names the
    nearby sizes it can."""
    default = tuple(timm.get_pretrained_cfg(arch.split(".")[0]).input_size[1:])
    if size == default:
        return
    reason = _fixed_size_error(arch, size)
    if reason is None:
        return
    with torch.device("meta"):
        step = _create(arch, pretrained=False, num_classes=2).feature_info[-1]["reduction"]
    near = {
        (h, w)
        for h in (size[0] // step * step, -(-size[0] // step) * step)
        for w in (size[1] // step * step, -(-size[1] // step) * step)
        if min(h, w) >= step
    }
    works = [f"{h}x{w}" for h, w in sorted(near) if _fixed_size_error(arch, (h, w)) is None]
    raise UserError(
        f"{arch} cannot be built at {size[0]}x{size[1]} ({reason}); sizes it takes: "
        f"{', '.join(works) or 'none near this one'}, and its default {default[0]}x{default[1]}"
    )


def _fixed_size_error(arch: str, size: tuple[int, int]) -> str | None:
    """Why ``arch`` fails at ``size`` (None when it works), tried on the meta device."""
    with torch.device("meta"):
        try:
            model = _create(arch, pretrained=False, num_classes=2, img_size=size)
            model(torch.empty(1, 3, *size))
        except (AssertionError, RuntimeError, ValueError, TypeError) as exc:
            return str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
    return None


def ood_levels(model: nn.Module) -> tuple[int, ...]:
    """The middle stages whose pooled features the out-of-scope score also reads
    (``trust.ood.Layered``): of timm's ``feature_info``, the last stage at 1/8 of the
    input's side and the last at 1/16, the final stage left out (its pooled features are
    about the penultimate ones). An EfficientNet's blocks 2 and 4, a ResNet's layer2 and
    layer3, a ViT's next-to-last block; none where timm says nothing."""
    stages = getattr(model, "feature_info", None) or []
    if not hasattr(model, "forward_intermediates") or len(stages) < 2:
        return ()
    found = []
    for reduction in (8, 16):
        at = [n for n, stage in enumerate(stages[:-1]) if stage["reduction"] == reduction]
        found += at[-1:]
    return tuple(found)


def features_logits_levels(
    model: nn.Module, x: torch.Tensor, levels: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """``features_and_logits`` and, from the same pass, the pooled (averaged) features of
    the stages ``levels`` (indices of timm's ``feature_info``)."""
    if not levels:
        return (*features_and_logits(model, x), [])
    final, maps = model.forward_intermediates(x, indices=list(levels), intermediates_only=False)
    features = model.forward_head(final, pre_logits=True)
    pooled = [m.flatten(2).mean(-1) for m in maps]  # NCHW maps: the mean of each channel
    return features, model.get_classifier()(features), pooled


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The penultimate features of a timm model (after pooling and its head's norm) and the
    logits its classifier makes of them (the model's own output, in eval mode)."""
    features = model.forward_head(model.forward_features(x), pre_logits=True)
    return features, model.get_classifier()(features)


def zero_head(model: nn.Module) -> None:
    """Start a new classifier at zero (weights and bias): a pretrained body's first logits
    are then all 0 and its first loss is chance's, ln(classes). timm's own initialisation
    of an EfficientNet head (uniform in +-1/sqrt(classes)) gives logits with a standard
    deviation of about 9 on real photos, a first loss seven times chance's, and a frozen
    epoch spent undoing it."""
    classifier = model.get_classifier()
    for parameter in classifier.parameters():
        nn.init.zeros_(parameter)


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std from the model's pretrained config (ImageNet's when it has none)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(
        cfg.get("std", (0.229, 0.224, 0.225))
    )


def head_parameters(model: nn.Module) -> set[int]:
    """ids of the classifier head's parameters (what stays trainable when frozen)."""
    head = model.get_classifier()
    ids = {id(p) for p in head.parameters()}
    # some models keep a norm or pooling layer with parameters right before the classifier;
    # a tiled model's attention pooling (cropdoc.model.mil) is new like the classifier
    for name in ("head", "fc_norm", "head_drop", "attention"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            ids |= {id(p) for p in module.parameters()}
    return ids


EARLY_REDUCTION = 4  # the stages kept frozen by --freeze-early: at 1/4 of the input's side or finer


def early_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters of a CNN's stem and of its stages that run at a quarter of the
    input's resolution or finer (timm's ``feature_info``: an EfficientNet's stem and first
    two block stages, a ResNet's stem and layer1, a ConvNeXt's stem and first stage): the
    generic low-level features a fine-tuning has least to gain from changing, and, at 224
    px on a CPU, about half of a training step's work. Empty for a model without such
    stages (a ViT works at 1/16 from its first block)."""
    body = getattr(model, "body", model)  # a tiled model's timm model
    stages = getattr(body, "feature_info", None) or []
    later = [f["module"] for f in stages if f["reduction"] > EARLY_REDUCTION]
    if not later or len(later) == len(stages):
        return set()
    first = later[0]
    found = set()
    for name, parameter in body.named_parameters():
        if name == first or name.startswith(first + "."):
            break
        found.add(id(parameter))
    return found


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: with ``--train-bn`` these stay trainable in a frozen body, as
    in fastai."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm | nn.GroupNorm | nn.LayerNorm)
