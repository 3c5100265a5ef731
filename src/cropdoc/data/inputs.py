"""The photos a command is given (predict, score, explain, an export's calibration): image
files, folders and CSV lists of paths, expanded once, a photo at a time.

A folder is walked in sorted order, a directory's entries at a time (hidden entries left
out; links to folders are not followed, so a loop of links ends and no photo comes twice).
A CSV names one photo a row, in its ``path`` column or its first, relative paths against
its own folder, and nothing it names is expanded again: a row naming a folder, another CSV
or a missing file is a photo that will be reported unreadable with its reason, as a broken
file is. A photo listed twice is given once; ``Listing.duplicates`` counts the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from cropdoc.core.errors import UserError
from cropdoc.core.files import csv_rows
from cropdoc.data.images import is_image_name

PATH_COLUMN = "path"


class Listing:
    """The distinct photos of ``inputs`` in order; iterate as often as needed (each pass
    reads the folders and CSVs again, so nothing is held but the paths already given)."""

    def __init__(self, inputs: list[str | os.PathLike]):
        self.inputs = [Path(item) for item in inputs]
        for item in self.inputs:
            if not (item.exists() or is_image_name(item)):
                raise UserError(f"{item} is not an image, a folder or a CSV of paths")
        self.duplicates = 0  # photos listed again, left out (known after a whole pass)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        self.duplicates = 0
        for path in self._expanded():
            key = photo_key(path)
            if key in seen:
                self.duplicates += 1
                continue
            seen.add(key)
            yield path

    def _expanded(self) -> Iterator[str]:
        for item in self.inputs:
            if item.is_dir():
                yield from _walk(item)
            elif item.suffix.lower() == ".csv" and item.is_file():
                yield from (path for _, path in csv_photos(item))
            else:
                yield str(item)


def collect_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Every distinct photo of ``inputs`` (``Listing``), refusing an empty list."""
    paths = [Path(p) for p in Listing(inputs)]
    if not paths:
        raise UserError("no images to predict: give image files, folders or a CSV of paths")
    return paths


def photo_key(path: str | os.PathLike) -> str:
    """What makes two listings of a photo the same photo (``a/./b.jpg`` is ``a/b.jpg``)."""
    return os.path.normpath(os.path.abspath(path))


def _walk(folder: Path) -> Iterator[str]:
    """Image files under ``folder``, a directory's entries sorted, hidden ones left out,
    links to folders not followed."""
    try:
        with os.scandir(folder) as scan:
            entries = sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise UserError(f"cannot list the folder {folder}: {exc.strerror or exc}") from None
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif is_image_name(entry.name) and entry.is_file():
            yield str(Path(entry.path))


def csv_photos(manifest: Path, column: str = "") -> Iterator[tuple[dict[str, str], str]]:
    """Each row of a CSV list of photos as ``(row, photo path)``: the row's cells by column
    name and the photo its ``path`` column (else its first) names, relative to the CSV's
    folder. A CSV without a header (its first row names a photo) is read as a list of paths.
    ``column``: a column every row must have (for ``--group-by``), refused in one line when
    the header lacks it or a row is too short to hold it."""
    rows = csv_rows(manifest)
    header = [cell.strip() for cell in next(rows, [])]
    at = header.index(PATH_COLUMN) if PATH_COLUMN in header else 0
    if header and is_image_name(header[at]) and not column:  # no header: a list of paths
        yield {}, str(manifest.parent / header[at])
        header = []
    if column and column not in header:
        found = ", ".join(header) or "no header"
        raise UserError(f"{manifest} has no column {column!r} (it has {found})")
    wanted = max(at, header.index(column) if column else 0)
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) <= wanted:
            raise UserError(
                f"{manifest} line {line} has {len(row)} cell(s), too few for its "
                f"{header[wanted] if header else 'path'} column: fix or remove that row"
            )
        yield dict(zip(header, row, strict=False)), str(manifest.parent / row[at].strip())
