"""Plots: a matplotlib figure (no screen needed) written as a PNG atomically."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from cropdoc.core.files import atomic_write


@contextmanager
def png_figure(
    path: str | os.PathLike, size: tuple[float, float] = (6, 4), panels: int = 1
) -> Iterator:
    """Yield the axes of a new figure (a list of ``panels`` axes when more than one, in rows
    of up to three); when the block ends, save it to ``path`` as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(panels, 3)
    fig, axes = plt.subplots(-(-panels // cols), cols, figsize=size, squeeze=False)
    try:
        yield axes.ravel().tolist()[:panels] if panels > 1 else axes[0, 0]
        fig.tight_layout()
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
