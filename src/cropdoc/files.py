"""Atomic file writes (a temporary file in the same folder, flushed, then renamed into place)
and CSV cells a spreadsheet will not run as formulas."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[bytes]], Any], durable: bool = True
) -> Path:
    """Call ``write(f)`` on a temporary file and rename it to ``path`` once complete.

    ``durable`` also syncs the data to disk before the rename, so it survives a power cut;
    without it the file survives a killed process but may be lost with the machine.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def remove_temporaries(folder: str | os.PathLike) -> None:
    """Delete temporary files an interrupted atomic write left in ``folder``."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet cell a formula


def csv_row(values) -> list:
    """``values`` as cells safe to open in a spreadsheet (OWASP's advice on CSV injection):
    a text cell that starts like a formula (``=``, ``+``, ``-``, ``@``, tab, carriage return)
    gets a leading apostrophe, unless it is a number (``-5``); ``csv_unescape`` undoes it."""
    return [
        f"'{v}" if isinstance(v, str) and v.startswith(FORMULA_START) and not _number(v) else v
        for v in values
    ]


def csv_unescape(value: str) -> str:
    """A cell read back from a CSV that ``csv_row`` wrote: its leading apostrophe removed."""
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_START) else value


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
