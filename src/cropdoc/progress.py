"""Progress reporting: a rich bar on a terminal, a few plain lines in a log."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts work done out of ``total``.

    On a terminal it draws a rich progress bar on stderr; otherwise it prints a plain line
    at every tenth of the work (or nothing, with ``lines=False``), so logs get no
    carriage-return spam. ``quiet`` prints nothing.
    """

    def __init__(
        self,
        total: int,
        label: str,
        quiet: bool = False,
        stream: TextIO | None = None,
        lines: bool = True,
    ):
        self.total = max(0, total)
        self.label = label
        self.done = 0
        self.start = time.perf_counter()
        self.stream = stream or sys.stderr
        self._bar = None
        self._next_line = 0.1
        tty = self.stream.isatty()
        self.quiet = quiet or self.total == 0 or (not tty and not lines)
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
                console=Console(file=self.stream),
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
        """Stop the bar and print the closing line."""
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
        print(
            f"{self.label}: {self.done}/{self.total} ({pct:.0f}%), {elapsed:.1f}s, {rate:.0f}/s",
            file=self.stream,
            flush=True,
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
