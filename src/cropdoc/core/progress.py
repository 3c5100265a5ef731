"""Output: plain lines and progress, on stderr, through the ``cropdoc`` logger.

Library code never prints: it writes lines with ``say`` and counts work with ``Progress``.
Whether any of it shows is one decision, the level of the ``cropdoc`` logger:
``show_output()`` (what the command line does, unless ``--json``) sends the lines to stderr;
a notebook can call it too, or set up ``logging`` its own way. Until then, as with any
library that logs, only warnings show. A rich bar is drawn only where the lines show and
stderr is a terminal; in a log, a plain line at every tenth of the work.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("cropdoc")


class _Lines(logging.StreamHandler):
    """The handler ``show_output`` installs: each record as its bare message."""


def show_output(show: bool = True, stream: TextIO | None = None) -> None:
    """Show cropdoc's progress and lines on ``stream`` (default stderr), or only warnings."""
    for handler in [h for h in log.handlers if isinstance(h, _Lines)]:
        log.removeHandler(handler)
    if show:
        handler = _Lines(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.INFO if show else logging.WARNING)


def showing() -> bool:
    """Do cropdoc's lines show?"""
    return log.isEnabledFor(logging.INFO)


def say(text: str) -> None:
    """One plain line of progress or information."""
    log.info(text)


def _stream() -> TextIO:
    """Where the lines go: the stream of ``show_output``'s handler, else stderr."""
    handlers = [h for h in log.handlers if isinstance(h, _Lines)]
    return handlers[0].stream if handlers else sys.stderr


class Progress:
    """Counts work done out of ``total``.

    On a terminal it draws a rich progress bar; otherwise it says a plain line at every
    tenth of the work (or nothing, with ``lines=False``), so logs get no carriage-return
    spam. Nothing shows unless cropdoc's lines do (``showing()``).
    """

    def __init__(self, total: int, label: str, lines: bool = True):
        self.total = max(0, total)
        self.label = label
        self.done = 0
        self.start = time.perf_counter()
        self._bar = None
        self._next_line = 0.1
        stream = _stream()
        tty = stream.isatty()
        self.quiet = not showing() or self.total == 0 or (not tty and not lines)
        if not self.quiet and tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(file=stream),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=self.total)

    def update(self, n: int = 1) -> None:
        """Record ``n`` more units of work done."""
        self.done += n
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        elif self.done >= self._next_line * self.total and self.done < self.total:
            self._line()
            while self._next_line * self.total <= self.done:
                self._next_line += 0.1

    def close(self) -> None:
        """Stop the bar and say the closing line."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if not self.quiet:
            self._line()
            self.quiet = True

    def _line(self) -> None:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = 100 * self.done / self.total if self.total else 100
        say(f"{self.label}: {self.done}/{self.total} ({pct:.0f}%), {elapsed:.1f}s, {rate:.0f}/s")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
