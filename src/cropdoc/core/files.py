"""Atomic file writes (a temporary file in the same folder, flushed, then renamed into place),
JSON that is always valid, and CSV files: read a row at a time with one-line errors, written
with cells a spreadsheet will not run as formulas."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from cropdoc.core.errors import UserError

TEMPORARY = ".{name}.*.tmp"  # what atomic_write leaves behind for ``name`` when it is killed


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[IO[bytes]], Any],
    durable: bool = True,
    mode: int | None = None,
) -> Path:
    """Call ``write(f)`` on a temporary file and rename it to ``path`` once complete.

    ``durable`` also syncs the data to disk before the rename, so it survives a power cut;
    without it the file survives a killed process but may be lost with the machine.
    ``mode`` sets the new file's permissions before it is renamed into place (default: the
    temporary file's 0600); a link at ``path`` is replaced, never followed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (``mode``: its permissions)."""
    return atomic_write(path, lambda f: f.write(data), mode=mode)


def atomic_write_text(path: str | os.PathLike, text: str, mode: int | None = None) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: str | os.PathLike, obj: Any, mode: int | None = None) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json_text(obj) + "\n", mode)


def json_text(obj: Any) -> str:
    """``obj`` as indented JSON that any reader takes: a NaN or infinite number (which
    ``json.dumps`` would write as the bare word ``NaN``) becomes ``null``."""
    return json.dumps(_finite(obj), indent=1, ensure_ascii=False, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def remove_temporaries(folder: str | os.PathLike, pattern: str = "*") -> None:
    """Delete the temporary files an interrupted atomic write of the files named by
    ``pattern`` (a glob, default: any) left in ``folder``."""
    for tmp in Path(folder).glob(TEMPORARY.format(name=pattern)):
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)


UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")  # what a UTF-16 text file starts with


def csv_rows(path: str | os.PathLike) -> Iterator[list[str]]:
    """The rows of the CSV file ``path``, a row at a time: UTF-8 (with or without a
    byte-order mark, as Excel's "CSV UTF-8" writes it) or UTF-16 with its byte-order mark.
    Text in another encoding, or a row the csv module cannot read (a field over its limit,
    a NUL byte), is a ``UserError`` in one line naming the file and the line."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            encoding = "utf-16" if f.read(2) in UTF16_MARKS else "utf-8-sig"
        with open(path, newline="", encoding=encoding) as f:
            reader = csv.reader(f)
            try:
                yield from reader
            except UnicodeDecodeError:
                raise UserError(
                    f"{path} line {reader.line_num + 1} is not UTF-8 text: save the file as "
                    "CSV UTF-8 (or UTF-16) and try again"
                ) from None
            except csv.Error as exc:
                raise UserError(
                    f"{path} line {reader.line_num}: not a readable CSV row ({exc})"
                ) from None
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a CSV file") from None


FORMULA_START = ("=", "+", "-", "@")  # what makes a spreadsheet cell a formula
CONTROL_START = ("\t", "\r")  # so do these, before any other character


def csv_row(values) -> list:
    """``values`` as cells safe to open in a spreadsheet (OWASP's advice on CSV injection):
    a text cell that starts like a formula (``=``, ``+``, ``-``, ``@``, also after spaces and
    in their full-width forms such as ``＝``; tab, carriage return) gets a leading apostrophe,
    unless it is a number (``-5``); ``csv_unescape`` undoes it."""
    return [f"'{v}" if isinstance(v, str) and _formula(v) else v for v in values]


def _formula(text: str) -> bool:
    if text.startswith(CONTROL_START):
        return True
    first = unicodedata.normalize("NFKC", text.lstrip()[:1])
    return first in FORMULA_START and not _number(text)


def csv_unescape(value: str) -> str:
    """A cell read back from a CSV that ``csv_row`` wrote: its leading apostrophe removed."""
    return value[1:] if value.startswith("'") and _formula(value[1:]) else value


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
