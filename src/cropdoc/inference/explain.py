"""``explain``: where a model looks. Grad-CAM and its family (the ``grad-cam`` package) for
every architecture, attention maps for models with self-attention, and a localisation score
against lesion masks (the pointing game and the share of heat inside the lesions).

Images go through exactly the transforms of validation, so a heatmap has the model's input
size (rectangular included) and lines up with what the model saw. Explanations run in fp32;
every hook is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cropdoc.contract.targets import LABEL, slices
from cropdoc.core.errors import UserError
from cropdoc.core.extras import require
from cropdoc.data.images import ImageError, load_image
from cropdoc.model.build import load_bundle
from cropdoc.model.kinds import model_kind

CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "eigencam", "scorecam")
METHODS = (*CAM_METHODS, "attention")


@dataclass
class Explanation:
    """One image's explanation: what the model saw, where it looked, what it said."""

    path: str
    image: np.ndarray  # (H, W, 3) uint8: the model's input, before normalisation
    heatmap: np.ndarray  # (H, W) float32 in [0, 1]
    target: str  # the class explained
    top: list[tuple[str, float]]  # the three likeliest classes and their probabilities


class Explainer:
    """A loaded model (fp32, eval mode) that explains one image at a time."""

    def __init__(self, model: str | os.PathLike, device: str = "auto", loaded=None):
        """``loaded``: the bundle's (model, meta) when already loaded (it is then shared)."""
        from cropdoc.model.device import pick_device

        net, self.meta = loaded or load_bundle(model)
        self.classes: list[str] = list(self.meta.classes)
        self.device = pick_device(device)
        self.net = net.float().to(self.device).eval()
        self.kind = model_kind(self.meta.tiles)

    def __call__(
        self, path, method: str = "gradcam", target: str | None = None, head: str = LABEL
    ) -> Explanation:
        """Explain the image file ``path``."""
        try:
            pixels = load_image(path, max_size=self.meta.cache_size)
        except ImageError as exc:
            raise UserError(f"cannot explain {path}: {exc}") from None
        return self.explain_pixels(pixels, method, target, str(path), head)

    def explain_pixels(
        self,
        pixels: np.ndarray,
        method: str = "gradcam",
        target: str | None = None,
        path: str = "",
        head: str = LABEL,
    ) -> Explanation:
        """Explain decoded ``(H, W, 3)`` uint8 pixels (shrunk as the cache shrinks images):
        the class ``target`` of the model's target ``head`` (a multi-target model's
        classification targets each have their own classes)."""
        if method not in METHODS:
            raise UserError(f"--method must be one of {', '.join(METHODS)}")
        classes, part = self._head(head)
        if target is not None and target not in classes:
            names = ", ".join(classes)
            raise UserError(f"class {target!r} is not one of the model's {head}s: {names}")
        scale = self.meta.trust.temperature if head == LABEL else 1.0  # the label calibrated
        regions = self.kind.regions(self.net, self.meta, pixels, self.device, part, scale)
        probs = regions.probs
        index = classes.index(target) if target else int(probs.argmax())
        heat = np.zeros(regions.seen.shape[:2], np.float32)
        parts = zip(regions.corners, regions.inputs, regions.weights, strict=True)
        for (y0, x0), x, weight in parts:
            if method == "attention":
                region_heat = attention_map(regions.module, x)
            else:
                region_heat = cam_map(regions.module, x, regions.offset + index, method)
            region = heat[y0 : y0 + region_heat.shape[0], x0 : x0 + region_heat.shape[1]]
            scaled = region_heat[: region.shape[0], : region.shape[1]] * weight
            np.maximum(region, scaled, out=region)  # the largest where regions overlap
        top = [(classes[i], float(probs[i])) for i in np.argsort(-probs)[:3]]
        return Explanation(path, regions.seen, heat, classes[index], top)

    def _head(self, head: str) -> tuple[list[str], slice]:
        """The classes of the target ``head`` and its outputs within the model's."""
        if head == LABEL:
            return self.classes, slice(0, len(self.classes))
        for target, part in zip(self.meta.targets, slices(self.meta.targets), strict=True):
            if target.name == head and target.kind == "class":
                return list(target.classes), part
        names = ", ".join(t.name for t in self.meta.targets if t.kind == "class") or LABEL
        raise UserError(f"--target {head}: explain takes a classification target ({names})")


def explain(
    model: str | os.PathLike,
    images: list[str | os.PathLike],
    method: str = "gradcam",
    target: str | None = None,
    device: str = "auto",
    head: str = LABEL,
) -> list[Explanation]:
    """Explanations of ``images`` (files or folders) by the model of a run folder or bundle.

    Args:
        method: one of ``CAM_METHODS`` or ``"attention"``.
        target: the class to explain (default: each image's predicted class).
        head: which target of a multi-target model to explain (default: the label).
    """
    from cropdoc.data.inputs import collect_inputs

    explainer = Explainer(model, device)
    return [explainer(path, method, target, head) for path in collect_inputs(images)]


# -- Grad-CAM family -------------------------------------------------------------------------


def target_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The last feature stage (timm's ``feature_info``): ResNet layer4, ConvNeXt and
    CoAtNet/MaxViT last stage, EfficientNet's last block, ViT's last block."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise UserError(f"{type(model).__name__} has no feature stages to explain")
    name = info[-1]["module"]
    layer = model.get_submodule(name)
    if hasattr(model, "blocks") and name.startswith("blocks") and hasattr(layer, "norm1"):
        return layer.norm1  # ViT: tokens before the last block's attention, as usual for CAM
    return layer


def to_nchw(
    output: torch.Tensor, size: tuple[int, int], channels: int, prefix: int | None = None
) -> torch.Tensor:
    """A feature map as ``(B, C, h, w)``: NCHW as is, NHWC (Swin) permuted, tokens (ViT)
    without their ``prefix`` tokens (class, registers; found from the count when unknown)
    and folded to the grid their count and the input's aspect ratio give."""
    if isinstance(output, tuple | list):
        output = output[0]
    if output.dim() == 4:
        return output if output.shape[1] == channels else output.permute(0, 3, 1, 2)
    tokens = output.shape[1]
    for skip in [prefix] if prefix is not None else range(0, 9):
        grid = _grid(tokens - skip, size)
        if grid is not None:
            h, w = grid
            return output[:, skip:].reshape(output.shape[0], h, w, -1).permute(0, 3, 1, 2)
    raise UserError(f"cannot fold {tokens} tokens into a grid for a {size[0]}x{size[1]} input")


def _grid(n: int, size: tuple[int, int]) -> tuple[int, int] | None:
    """(h, w) with h * w == n and h / w == the input's aspect ratio, if there is one."""
    if n <= 0:
        return None
    h = round((n * size[0] / size[1]) ** 0.5)
    if h and n % h == 0 and abs(h / (n // h) - size[0] / size[1]) < 0.05 * size[0] / size[1]:
        return h, n // h
    return None


def cam_map(model: torch.nn.Module, x: torch.Tensor, index: int, method: str) -> np.ndarray:
    """The heatmap of ``method`` for class ``index``, at the input's size, in [0, 1]."""
    require("explain", "Grad-CAM heatmaps")
    import pytorch_grad_cam as gc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cams = {
        "gradcam": gc.GradCAM,
        "gradcam++": gc.GradCAMPlusPlus,
        "hirescam": gc.HiResCAM,
        "layercam": gc.LayerCAM,
        "eigencam": gc.EigenCAM,
        "scorecam": gc.ScoreCAM,
    }
    layer = target_layer(model)
    channels = model.feature_info[-1]["num_chs"]
    size = tuple(x.shape[-2:])

    def reshape(output: torch.Tensor) -> torch.Tensor:
        return to_nchw(output, size, channels, getattr(model, "num_prefix_tokens", None))

    with torch.enable_grad(), cams[method](model, [layer], reshape_transform=reshape) as cam:
        if method == "scorecam":
            cam.batch_size = 16
        heat = cam(x, targets=[ClassifierOutputTarget(index)])[0]
    return _unit(heat)


def _unit(heat: np.ndarray) -> np.ndarray:
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    low, high = heat.min(), heat.max()
    return (heat - low) / (high - low) if high > low else np.zeros_like(heat)


# -- attention ----------------------------------------------------------------------------


@contextlib.contextmanager
def _attention_probabilities(model: torch.nn.Module):
    """Collect the softmaxed attention of every timm attention module (switching fused
    attention off meanwhile); yields the list they are appended to, in forward order."""
    found: list[torch.Tensor] = []
    handles, switched = [], []
    for module in model.modules():
        if hasattr(module, "fused_attn") and isinstance(
            getattr(module, "attn_drop", None), torch.nn.Module
        ):
            switched.append((module, module.fused_attn))
            module.fused_attn = False
            handles.append(
                module.attn_drop.register_forward_hook(lambda m, i, o: found.append(o.detach()))
            )
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()
        for module, fused in switched:
            module.fused_attn = fused


@torch.no_grad()
def attention_map(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Attention rollout from the class token (ViT), or, without a class token, the
    attention the last global-attention block pays to each position (the pooled token's
    view), at the input's size in [0, 1]."""
    size = tuple(x.shape[-2:])
    with _attention_probabilities(model) as found:
        model(x)
    if not found:
        raise UserError(f"{type(model).__name__} has no self-attention: use a Grad-CAM --method")
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    same = [a for a in found if a.shape == found[-1].shape]
    if prefix and len(same) == len(found):
        grid_tokens = found[-1].shape[-1] - prefix
        rollout = torch.eye(found[-1].shape[-1], device=x.device)
        for attn in found:
            a = attn[0].mean(0)
            a = a + torch.eye(a.shape[-1], device=a.device)
            rollout = (a / a.sum(-1, keepdim=True)) @ rollout
        received = rollout[0, prefix:]
    else:
        last = found[-1]
        if last.shape[0] != x.shape[0]:
            raise UserError(
                f"{type(model).__name__}'s last attention works in windows: use a Grad-CAM "
                "--method for it"
            )
        received = last[0].mean(0)[prefix:, prefix:].mean(0)
        grid_tokens = received.numel()
    grid = _grid(grid_tokens, size)
    if grid is None:
        raise UserError(f"cannot fold {grid_tokens} attention positions into a grid")
    heat = received.reshape(1, 1, *grid).float()
    heat = F.interpolate(heat, size=size, mode="bilinear", align_corners=False)
    return _unit(heat[0, 0].cpu().numpy())
