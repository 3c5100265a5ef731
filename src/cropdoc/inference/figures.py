"""Heatmap figures: the jet colour map over a photo, one PNG per explained photo, and an
index grid of them; large photos shrunk so a small hot spot stays visible."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from cropdoc.core.plots import png_figure

if TYPE_CHECKING:
    from cropdoc.inference.explain import Explanation

FIGURE_SIDE = 1024  # the longer side of a large photo in a figure


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """A heatmap in [0, 1] in the jet colour map: ``(H, W, 3)`` float32 in 0..255."""
    from matplotlib import colormaps

    return (colormaps["jet"](heat)[..., :3] * 255).astype(np.float32)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The heatmap in the jet colour map over ``image`` (both the same size), uint8."""
    colours = heat_colours(heat)
    return (image * (1 - alpha) + colours * alpha).round().clip(0, 255).astype(np.uint8)


def save_figure(item: Explanation, path: Path) -> Path:
    """One PNG: the input, the heatmap, the overlay and the top-3 classes."""
    image, heat = shrunk(item.image, item.heatmap)
    with png_figure(path, size=(12, 4.2), panels=3) as axes:
        axes[0].imshow(image)
        if heat.max() > 0:  # the hot regions outlined
            axes[0].contour(heat, levels=[0.5], colors="red", linewidths=0.8)
        axes[0].set_title(Path(item.path).name, fontsize=9)
        axes[1].imshow(heat, cmap="jet", vmin=0, vmax=1)
        axes[1].set_title(f"heat for {item.target}", fontsize=9)
        axes[2].imshow(overlay(image, heat))
        axes[2].set_title(
            "\n".join(f"{name}: {p:.2f}" for name, p in item.top), fontsize=9, loc="left"
        )
        for ax in axes:
            ax.axis("off")
    return path


def shrunk(image: np.ndarray, heat: np.ndarray, side: int = FIGURE_SIDE):
    """A large photo and its heatmap shrunk by a whole factor to about ``side`` pixels for
    a figure: the photo by averaging, the heat by its maximum (a small hot spot stays)."""
    factor = -(-max(image.shape[:2]) // side)
    if factor <= 1:
        return image, heat
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    small = F.avg_pool2d(pixels, factor, ceil_mode=True)[0].permute(1, 2, 0)
    hot = F.max_pool2d(torch.from_numpy(heat)[None, None], factor, ceil_mode=True)[0, 0]
    return small.round().byte().numpy(), hot.numpy()


def save_index(items: list[Explanation], path: Path) -> Path:
    """A grid of every image's overlay with its top class."""
    cols = min(3, len(items))
    rows = -(-len(items) // cols)
    with png_figure(path, size=(4 * cols, 3.6 * rows), panels=rows * cols) as axes:
        axes = axes if isinstance(axes, list) else [axes]
        for ax in axes:
            ax.axis("off")
        for ax, item in zip(axes, items, strict=False):
            ax.imshow(overlay(*shrunk(item.image, item.heatmap)))
            name, p = item.top[0]
            ax.set_title(f"{Path(item.path).name}\n{name} {p:.2f}", fontsize=8)
    return path
