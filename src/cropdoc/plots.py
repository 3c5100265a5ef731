"""Plots: a matplotlib figure (no screen needed) written as a PNG atomically."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from cropdoc.files import atomic_write


@contextmanager
def png_figure(path: str | os.PathLike, size: tuple[float, float] = (6, 4)) -> Iterator:
    """Yield the axes of a new figure; when the block ends, save it to ``path`` as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        fig.tight_layout()
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
