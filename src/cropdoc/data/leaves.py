"""The demo's leaves and lesions: a leaf's geometry (``Leaf``), and one painter per disease
that draws one lesion of its kind onto a leaf photo (``image``) and its mask (``lesion``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LESION_SCALE = 1.6  # lesions of 10-50 px in a 480x640 photo: 2-10 px once shrunk to 128


@dataclass(frozen=True)
class Leaf:
    """A straight, tapering leaf blade from ``base`` along ``direction``."""

    base: np.ndarray
    direction: np.ndarray
    length: float
    width: float  # half-width at the base
    lesion_scale: float = LESION_SCALE  # pixels per lesion unit
    taper: float = 0.55  # the half-width falls as (1 - t) ** taper
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # colour gains of the blade

    @property
    def normal(self) -> np.ndarray:
        return np.array([-self.direction[1], self.direction[0]])

    def coords(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Leaf coordinates of pixels: ``t`` along the blade (0 base, 1 tip), ``v`` across."""
        dx, dy = xs - self.base[0], ys - self.base[1]
        t = (dx * self.direction[0] + dy * self.direction[1]) / self.length
        v = dx * self.normal[0] + dy * self.normal[1]
        return t, v

    def half_width(self, t: np.ndarray) -> np.ndarray:
        return self.width * np.clip(1.0 - t, 0.0, 1.0) ** self.taper

    def point(self, t: float, v: float) -> np.ndarray:
        return self.base + self.direction * t * self.length + self.normal * v


def bounds(leaf: Leaf, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """The window of an image of ``shape`` that holds the whole leaf."""
    corners = [leaf.point(0, -leaf.width), leaf.point(0, leaf.width), leaf.point(1, 0)]
    (x0, y0), (x1, y1) = np.min(corners, axis=0), np.max(corners, axis=0)
    return (
        slice(int(max(0, y0)), int(min(shape[0], y1 + 1))),
        slice(int(max(0, x0)), int(min(shape[1], x1 + 1))),
    )


def _window(leaf: Leaf, centre: np.ndarray, radius: float, xs, ys):
    """Slices and leaf-aligned offsets (u along, v across) around ``centre``, in lesion
    units (pixels / the leaf's lesion scale), so every lesion shape scales with it."""
    scale = leaf.lesion_scale
    radius = radius * scale
    height, width = xs.shape
    x0, y0 = (int(max(0, c - radius)) for c in centre)
    x1, y1 = int(min(width, centre[0] + radius + 1)), int(min(height, centre[1] + radius + 1))
    window = (slice(y0, y1), slice(x0, x1))
    dx, dy = xs[window] - centre[0], ys[window] - centre[1]
    u = (dx * leaf.direction[0] + dy * leaf.direction[1]) / scale
    v = (dx * leaf.normal[0] + dy * leaf.normal[1]) / scale
    return window, u, v


def _blend(image, lesion, window, alpha, colour) -> None:
    alpha = np.clip(alpha, 0, 1).astype(np.float32)
    patch = image[window]
    patch[:] = patch * (1 - alpha[..., None]) + np.asarray(colour, np.float32) * alpha[..., None]
    lesion[window] = np.maximum(lesion[window], alpha)


def _soft(distance: np.ndarray, softness: float = 0.15) -> np.ndarray:
    """1 inside (distance < 1), falling smoothly to 0 outside."""
    return np.clip((1 + softness - distance) / (2 * softness), 0, 1)


def _on_leaf(leaf: Leaf, rng, spread: float = 0.55, t_range=(0.15, 0.8)) -> np.ndarray:
    t = rng.uniform(*t_range)
    return leaf.point(t, rng.uniform(-spread, spread) * float(leaf.half_width(np.array(t))))


def _inside_leaf(leaf: Leaf, window, xs, ys) -> np.ndarray:
    t, v = leaf.coords(xs[window], ys[window])
    return ((t >= 0) & (t <= 1) & (np.abs(v) <= leaf.half_width(t))).astype(np.float32)


def _brown_spot(image, lesion, leaf, xs, ys, rng) -> None:
    for _ in range(int(rng.integers(3, 6))):
        a, b = rng.uniform(6, 9), rng.uniform(5, 7)
        window, u, v = _window(leaf, _on_leaf(leaf, rng), 2 * a, xs, ys)
        d = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        _blend(image, lesion, window, 0.6 * _soft(d / 1.6) * (d > 0.9), (190, 170, 60))
        _blend(image, lesion, window, _soft(d), (105, 58, 22))


def _blast(image, lesion, leaf, xs, ys, rng) -> None:
    for _ in range(int(rng.integers(2, 4))):
        a, b = rng.uniform(15, 22), rng.uniform(6, 8)
        window, u, v = _window(leaf, _on_leaf(leaf, rng), a + 2, xs, ys)
        d = np.abs(u) / a + np.abs(v) / b
        _blend(image, lesion, window, _soft(d, 0.1), (125, 72, 40))
        _blend(image, lesion, window, _soft(d / 0.65, 0.1), (205, 205, 185))


def _leaf_streak(image, lesion, leaf, xs, ys, rng) -> None:
    for _ in range(int(rng.integers(3, 6))):
        a, b = rng.uniform(18, 30), rng.uniform(3.0, 4.0)
        window, u, v = _window(leaf, _on_leaf(leaf, rng, 0.7), a + 2, xs, ys)
        d = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        _blend(image, lesion, window, 0.9 * _soft(d, 0.2), (190, 125, 40))


def _leaf_blight(image, lesion, leaf, xs, ys, rng) -> None:
    for _ in range(int(rng.integers(1, 3))):
        t = rng.uniform(0.2, 0.75)
        side = rng.choice([-1.0, 1.0])
        half = float(leaf.half_width(np.array(t)))
        a, depth = rng.uniform(25, 40), rng.uniform(8, 11)
        centre = leaf.point(t, side * (half - depth / 2))
        window, u, v = _window(leaf, centre, a + depth, xs, ys)
        wave = 2.5 * np.sin(u / 5.0)
        d = np.maximum(np.abs(u) / a, np.abs(v - wave * 0.3) / (depth / 2 + 1.5))
        inside = _inside_leaf(leaf, window, xs, ys)
        _blend(image, lesion, window, _soft(d, 0.12) * inside, (222, 212, 150))


def _panicle_blight(image, lesion, leaf, xs, ys, rng) -> None:
    for _ in range(int(rng.integers(1, 3))):
        window, u, v = _window(leaf, _on_leaf(leaf, rng, 0.4), 20, xs, ys)
        alpha = np.zeros_like(u)
        for _ in range(3):  # a patch: the union of three overlapping discs
            offset = rng.uniform(-6, 6, 2)
            r = rng.uniform(6, 9)
            d = np.sqrt((u - offset[0]) ** 2 + (v - offset[1]) ** 2) / r
            alpha = np.maximum(alpha, _soft(d))
        _blend(image, lesion, window, alpha, (150, 68, 48))


def _dead_heart(image, lesion, leaf, xs, ys, rng) -> None:
    t = rng.uniform(0.25, 0.7)
    a = rng.uniform(7, 10)
    centre = leaf.point(t, 0.0)
    window, u, _ = _window(leaf, centre, leaf.width + a, xs, ys)
    inside = _inside_leaf(leaf, window, xs, ys)
    _blend(image, lesion, window, _soft(np.abs(u) / a, 0.1) * inside, (200, 170, 110))
    _blend(image, lesion, window, _soft(np.abs(np.abs(u) - a) / 1.5, 0.3) * inside, (90, 60, 30))


def _downy_mildew(image, lesion, leaf, xs, ys, rng) -> None:
    for _ in range(int(rng.integers(2, 4))):
        r = rng.uniform(9, 13)
        window, u, v = _window(leaf, _on_leaf(leaf, rng, 0.4), 2 * r, xs, ys)
        d = np.sqrt((u / (1.3 * r)) ** 2 + (v / r) ** 2)
        _blend(image, lesion, window, 0.85 * _soft(d, 0.4), (228, 232, 205))


def _hispa(image, lesion, leaf, xs, ys, rng) -> None:
    for _ in range(int(rng.integers(4, 8))):
        r = rng.uniform(4, 6)
        window, u, v = _window(leaf, _on_leaf(leaf, rng, 0.6), r + 2, xs, ys)
        d = np.sqrt(u**2 + (v * 1.2) ** 2) / r
        _blend(image, lesion, window, _soft(d, 0.2), (28, 24, 20))


def _tungro(image, lesion, leaf, xs, ys, rng) -> None:
    start = rng.uniform(0.8, 0.86)
    window = bounds(leaf, xs.shape)
    alpha = np.clip((leaf.coords(xs[window], ys[window])[0] - start) / 0.03, 0, 1)
    _blend(image, lesion, window, alpha * _inside_leaf(leaf, window, xs, ys), (225, 175, 45))


LESIONS = {
    "bacterial_leaf_blight": _leaf_blight,
    "bacterial_leaf_streak": _leaf_streak,
    "bacterial_panicle_blight": _panicle_blight,
    "blast": _blast,
    "brown_spot": _brown_spot,
    "dead_heart": _dead_heart,
    "downy_mildew": _downy_mildew,
    "hispa": _hispa,
    "tungro": _tungro,
}
