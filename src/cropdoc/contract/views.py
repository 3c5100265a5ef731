"""Test-time views, the same in every runtime (torch, ONNX, OpenVINO, LiteRT, the web
app): which views a score averages over and where each maps the model's input."""

from __future__ import annotations

# Test-time augmentation, the same in every runtime: the plain view, its mirror image, and
# two fixed crops of 90% of each side (81% of the area), one at the top left and one
# mirrored at the bottom right. Each is (side share, window x, window y in 0..1, mirrored).
TTA_VIEWS = (
    (1.0, 0.5, 0.5, False),
    (1.0, 0.5, 0.5, True),
    (0.9, 0.0, 0.0, False),
    (0.9, 1.0, 1.0, True),
)


def view_map(view: tuple[float, float, float, bool]) -> tuple[float, float, float, float] | None:
    """A test-time view as the map ``(ax, cx, ay, cy)`` of output coordinates (-1..1) into
    the item box (``x' = ax * x + cx``); None for the plain view."""
    share, x, y, mirrored = view
    if share == 1.0 and not mirrored:
        return None
    return (
        -share if mirrored else share,
        (2 * x - 1) * (1 - share),
        share,
        (2 * y - 1) * (1 - share),
    )


def tta_views(tta: bool) -> list[tuple[float, float, float, float] | None]:
    """The view maps to average over: all of ``TTA_VIEWS`` with ``tta``, else the plain one."""
    return [view_map(v) for v in (TTA_VIEWS if tta else TTA_VIEWS[:1])]
