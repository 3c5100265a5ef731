"""The end of a training run: the fits that need the finished model (temperature, the
confidence floor and the out-of-scope statistics, tiled or whole photos alike:
``cropdoc.engine.trust``), the losses plot, the run report and the trackers' last words."""

from __future__ import annotations

from cropdoc.engine.records import plot_losses
from cropdoc.engine.report import write_run_report
from cropdoc.engine.trust import fit_split


def finish_run(trainer) -> None:
    """What the first process does once every epoch has trained."""
    out = trainer.out
    fit_split(out, trainer.cache, trainer.split, device=str(trainer.device))
    plot_losses(out, trainer.rows)
    write_run_report(out)
    trainer.tracker.finish([out / "losses.png", out / "lr_find.png"])
