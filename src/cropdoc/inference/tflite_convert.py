"""``python -m cropdoc.inference.tflite_convert BUNDLE OUT``: a bundle's scoring model to a
``.tflite`` file with ``litert-torch``, run by ``export --format tflite``
(``inference/mobile.py``) in a child process of its own (``litert-torch`` brings JAX, which
must not be in a process that later forks). Its last line on stderr says what went wrong.
"""

from __future__ import annotations

import copy
import sys

import torch
from torch import nn

from cropdoc.contract.bundle import BundleMeta
from cropdoc.core.errors import UserError
from cropdoc.model.scoring import ScoringModel, load_scoring_model


def convert(model_dir: str, out: str) -> None:
    """Write the bundle's ``ScoringModel`` to ``out`` as LiteRT runs it: one photo in at
    the bundle's size, fp32, its outputs named (``NamedOutputs``)."""
    import litert_torch

    model, meta = load_scoring_model(model_dir)
    module = NamedOutputs(lowerable(copy.deepcopy(model)), meta).eval()
    litert_torch.config.show_progress = False
    try:
        converted = litert_torch.convert(module, (torch.zeros(1, 3, *meta.size),))
    except Exception as exc:  # litert-torch raises its own kinds: an op it cannot lower
        reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UserError(f"cannot convert {meta.arch} to tflite: {reason[:160]}") from None
    converted.export(out)


class NamedOutputs(nn.Module):
    """A ``ScoringModel`` whose outputs are named as the ONNX export names them (LiteRT
    keeps a dict's keys as the signature's output names)."""

    def __init__(self, model: ScoringModel, meta: BundleMeta):
        super().__init__()
        self.model = model
        self.names = ["logits", "ood_score", *(t.output_name for t in meta.others)]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.model(x), strict=True))


def lowerable(model: nn.Module) -> nn.Module:
    """``model`` (a copy: it is changed in place) as LiteRT can lower it, computing the same
    numbers at the bundle's size: timm's global max pooling (``max``, ``avgmax``,
    ``catavgmax``) done by reductions over the image (timm's ``fast`` pools) instead of an
    adaptive max pool; a ViT built for any input size at its own patch grid, where it
    would resample its position embedding (bicubic, antialiased) on every call."""
    from cropdoc.model.timm_import import timm

    SelectAdaptivePool2d = timm.layers.SelectAdaptivePool2d
    VisionTransformer = timm.models.vision_transformer.VisionTransformer

    if isinstance(model, VisionTransformer) and model.dynamic_img_size:
        model.dynamic_img_size, model.patch_embed.flatten = False, True  # tokens as (B, N, C)
    for name, child in model.named_children():
        kind = getattr(child, "pool_type", "")
        if isinstance(child, SelectAdaptivePool2d) and kind in ("max", "avgmax", "catavgmax"):
            flatten = isinstance(child.flatten, nn.Flatten)
            setattr(model, name, SelectAdaptivePool2d(pool_type=f"fast{kind}", flatten=flatten))
        else:
            lowerable(child)
    return model


if __name__ == "__main__":
    try:
        convert(*sys.argv[1:3])
    except UserError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
