"""Photo-quality checks before the model: is the photo big enough, sharp, neither too dark nor
overexposed, and mostly plant-coloured? A photo that fails gets the verdict ``retake`` with
the reason and what to do, whatever the model says about it.

The measures are taken on a working copy whose longer side is about ``WORK_SIDE`` pixels
(whole-factor box averaging of the luminance, so any runtime can do the same sums):

- sharpness: the variance of the 4-neighbour Laplacian of the luminance (0..255);
- dark / bright: the share of pixels darker than 25 or brighter than 245, and the mean;
- plant: the share of pixels of a plant's hue (yellow to green, 15-170 degrees, including
  the browns of lesions and soil) with some saturation; sky, water, walls and paper are not;
  and those pixels' mean luminance: an overexposed photo washes out the leaf itself, while a
  leaf on white paper or a white web background is as bright as any other.

The thresholds (``THRESHOLDS``) were set on demo photos degraded in known ways and on real,
usable leaf photos, which must pass (``benchmarks/quality.py``, results in
``docs/field.md``). numpy only, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WORK_SIDE = 256
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class Thresholds:
    """Where each check sends a photo back."""

    min_long_side: int = 128  # pixels on the longer side of the photo as taken
    min_side: int = 32  # and on its shorter side (a crop of a long, thin leaf is fine)
    sharpness: float = 50.0  # the Laplacian's variance below this: blurred
    dark_share: float = 0.5  # more than this share of pixels under 25: too dark
    dark_mean: float = 35.0  # or a mean luminance under this
    plant_bright: float = 200.0  # plant-coloured pixels brighter than this on average: overexposed
    bright_share: float = 0.5  # or, no plant colour left, more than this share over 245
    plant_share: float = 0.02  # less than this share of plant-coloured pixels: not a leaf


THRESHOLDS = Thresholds()
ADVICE = {
    "too_small": "too small: take the photo at full resolution, the leaf filling the frame",
    "blurred": "blurred: hold the phone still, 20-30 cm from the leaf, and let it focus",
    "too_dark": "too dark: take it in daylight or turn towards the light",
    "overexposed": "overexposed: keep the sun behind you or shade the leaf",
    "not_a_leaf": "not a leaf: aim at one leaf so that it fills most of the photo",
}


@dataclass(frozen=True)
class Quality:
    """A photo's measures and, when it should be taken again, why (``problem``: a key of
    ``ADVICE``, ``""`` when it is fine)."""

    problem: str
    measures: dict

    @property
    def advice(self) -> str:
        return ADVICE.get(self.problem, "")


def measure(pixels: np.ndarray, original: tuple[int, int] | None = None) -> dict:
    """The measures of an ``(H, W, 3)`` uint8 photo; ``original``: its (width, height) as
    taken, when ``pixels`` were decoded smaller."""
    height, width = pixels.shape[:2]
    sides = original or (width, height)
    small = _work_copy(pixels)
    luma = small @ LUMA  # luminance is linear: of the means, the mean of the luminances
    laplacian = (
        luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]
    )
    plant = plant_pixels(small)
    return {
        "side": int(min(sides)),
        "long_side": int(max(sides)),
        "sharpness": float(laplacian.var()) if laplacian.size else 0.0,
        "mean": float(luma.mean()),
        "dark_share": float((luma < 25).mean()),
        "bright_share": float((luma > 245).mean()),
        "plant_share": float(plant.mean()),
        "plant_luma": float(luma[plant].mean()) if plant.any() else 0.0,
    }


def judge(measures: dict, limits: Thresholds = THRESHOLDS) -> str:
    """The first problem of a photo's ``measures`` (``""``: none), in the order a user
    should fix them."""
    if measures["long_side"] < limits.min_long_side or measures["side"] < limits.min_side:
        return "too_small"
    if measures["dark_share"] > limits.dark_share or measures["mean"] < limits.dark_mean:
        return "too_dark"
    leafless = measures["plant_share"] < limits.plant_share
    if leafless:  # too little plant to judge by: clipped white all over is overexposed
        washed_out = measures["bright_share"] > limits.bright_share
    else:  # the leaf itself washed out (a white background is not)
        washed_out = measures["plant_luma"] > limits.plant_bright
    if washed_out:
        return "overexposed"
    if leafless:
        return "not_a_leaf"  # before blurred: a clear sky is smooth too
    if measures["sharpness"] < limits.sharpness:
        return "blurred"
    return ""


def check(pixels: np.ndarray, original: tuple[int, int] | None = None) -> Quality:
    """Measure and judge one photo."""
    found = measure(pixels, original)
    return Quality(judge(found), found)


def plant_pixels(small: np.ndarray) -> np.ndarray:
    """Which pixels of the working copy ``small`` (float RGB, 0..255) have a plant's hue
    (15-170 degrees) with saturation of at least 0.12 and value of at least 0.12."""
    rgb = small / 255
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    spread = high - low
    saturation = np.where(high > 0, spread / np.maximum(high, 1e-6), 0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(spread, 1e-6)
    hue = (
        np.where(
            high == r,
            ((g - b) / safe) % 6,
            np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4),
        )
        * 60
    )
    return (hue >= 15) & (hue <= 170) & (saturation >= 0.12) & (high >= 0.12)


def _work_copy(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` (H, W, 3 uint8) as float32, box-averaged by the whole factor that brings
    the longer side nearest ``WORK_SIDE`` (never enlarged); a band of rows at a time, so a
    12-megapixel photo costs no float copy of itself."""
    height, width = pixels.shape[:2]
    k = max(1, int(max(height, width) / WORK_SIDE + 0.5))  # halves up, as in JavaScript
    if k == 1:
        return pixels.astype(np.float32)
    h, w = height // k, width // k
    out = np.empty((h, w, 3), np.float32)
    for row in range(h):
        band = pixels[row * k : (row + 1) * k, : w * k].astype(np.float32)
        out[row] = band.reshape(k, w, k, 3).mean(axis=(0, 2))
    return out
