"""Find the images and labels of a dataset, whatever its layout.

Layouts understood, tried in this order:

- ``csv``: a CSV manifest file ``path,label[,split]`` (paths relative to the CSV's folder);
- ``kaggle``: the paddy-disease layout (``train_images/<label>/``, ``train.csv``,
  ``test_images/``, ``sample_submission.csv``); ``variety`` and ``age`` become metadata;
- ``split``: ``train/<class>``, ``valid/<class>`` or ``val/<class>``, optional ``test/``;
- ``folders``: ``<class>/**/image``, the class being the first folder under the root.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cropdoc.core.errors import UserError
from cropdoc.core.files import csv_unescape
from cropdoc.data.images import is_image_name


class DatasetError(UserError, ValueError):
    """A dataset that cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Item:
    """One image of a dataset: its file, label (None when unlabelled) and split."""

    path: Path
    label: str | None
    split: str | None = None  # "train", "valid", "test" or None (split later)
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Dataset:
    """The images and labels found under ``root``, plus what was skipped and why."""

    root: Path
    layout: str
    items: list[Item]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        """Sorted class names of the labelled images."""
        return sorted({i.label for i in self.items if i.label is not None})

    @property
    def labelled(self) -> list[Item]:
        return [i for i in self.items if i.label is not None]

    @property
    def unlabelled(self) -> list[Item]:
        return [i for i in self.items if i.label is None]

    def counts(self) -> dict[str, int]:
        """Number of labelled images per class, in class order."""
        counter = Counter(i.label for i in self.labelled)
        return {c: counter[c] for c in self.classes}

    def summary(self) -> dict:
        """A JSON-ready description of the dataset."""
        splits = Counter(i.split or "unsplit" for i in self.labelled)
        return {
            "root": str(self.root),
            "layout": self.layout,
            "classes": self.classes,
            "counts": self.counts(),
            "labelled": len(self.labelled),
            "splits": dict(sorted(splits.items())),
            "unlabelled_test": len(self.unlabelled),
            "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped],
            "warnings": list(self.warnings),
        }


def discover(root: str | os.PathLike, min_classes: int = 2) -> Dataset:
    """Find the images and labels under ``root`` (a folder, or a CSV manifest file).

    Raises:
        DatasetError: when the path is missing, holds no images or fewer than
        ``min_classes`` classes (a classifier needs two; adapting one to a site, one).
    """
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise DatasetError(f"{root} does not exist: give a dataset folder or a CSV manifest")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DatasetError(f"{root} is a file: give a dataset folder or a CSV manifest")
        dataset = _from_manifest(root)
    elif (root / "train.csv").is_file() and (root / "train_images").is_dir():
        dataset = _from_kaggle(root)
    elif (root / "train").is_dir() and _split_folders(root):
        dataset = _from_split(root)
    else:
        dataset = _from_folders(root)
    _note_outside_links(dataset)
    _check(dataset, min_classes)
    return dataset


def photos(root: str | os.PathLike) -> Dataset:
    """Every image below the folder ``root``, whatever its layout and labelled or not (their
    labels are not read), or every row of a CSV manifest: photos a model reads without
    learning their labels (``adapt-norms``)."""
    root = Path(root).expanduser().absolute()
    if root.is_file() and root.suffix.lower() == ".csv":
        dataset = _from_manifest(root)
    elif root.is_dir():
        images, skipped = _walk(root)
        dataset = Dataset(root, "photos", [Item(p, None) for p in images], skipped)
    else:
        raise DatasetError(f"{root} is not a folder of photos or a CSV manifest")
    if not dataset.items:
        raise DatasetError(f"no images found in {root}: give a folder of photos")
    return dataset


def _note_outside_links(dataset: Dataset) -> None:
    """Say which images are links to files outside the dataset's folder (they are used: a
    link is often made on purpose, but a user should know)."""
    base = dataset.root.parent if dataset.root.is_file() else dataset.root
    base = base.resolve()
    outside = [
        i.path for i in dataset.items if i.path.is_symlink() and not _inside(i.path.resolve(), base)
    ]
    if outside:
        dataset.warnings.append(
            f"{len(outside)} image(s) are links to files outside {base} and are used "
            f"(first: {outside[0]} -> {outside[0].resolve()})"
        )


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check(dataset: Dataset, min_classes: int = 2) -> None:
    if not dataset.labelled:
        raise DatasetError(
            f"no labelled images found in {dataset.root}: expected <class>/<image> folders, "
            "train/ and valid/ folders, a Kaggle train.csv + train_images/, or a CSV manifest"
        )
    classes = dataset.classes
    if len(classes) < min_classes:
        raise DatasetError(
            f"only one class ({classes[0]}) found in {dataset.root}: "
            "a classifier needs images of at least two classes"
        )


def _walk(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """All image files below ``folder`` (sorted), and the other files with why they were skipped."""
    images: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith("."):
                skipped.append((path, "hidden file"))
            elif not path.exists():
                skipped.append((path, f"broken link (to {os.readlink(path)}, which is missing)"))
            elif not is_image_name(name):
                skipped.append((path, f"not an image file ({path.suffix or 'no extension'})"))
            else:
                images.append(path)
    return images, skipped


def _class_folders(dataset: Dataset, folder: Path, split: str | None) -> None:
    """Add ``folder/<class>/**`` images to ``dataset`` with the given split."""
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            dataset.skipped.append((entry, "hidden file"))
        elif entry.is_dir():
            images, skipped = _walk(entry)
            dataset.skipped.extend(skipped)
            if not images:
                dataset.warnings.append(f"class folder {entry} has no images; it is ignored")
            dataset.items.extend(Item(p, entry.name, split) for p in images)
        elif is_image_name(entry):
            dataset.skipped.append((entry, "image outside any class folder"))
        else:
            dataset.skipped.append((entry, f"not an image file ({entry.suffix or 'no extension'})"))


SPLITS = ("train", "valid", "val", "test")


def _split_folders(root: Path) -> bool:
    """True when ``root``'s folders are splits: ``train/`` with ``valid/`` (or ``val/``), or
    split names alone (``train/`` and ``test/``: cropdoc then holds out its own validation
    photos), rather than classes."""
    folders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return bool(folders & {"valid", "val"}) or folders <= set(SPLITS)


def _from_folders(root: Path) -> Dataset:
    dataset = Dataset(root, "folders", [])
    _class_folders(dataset, root, None)
    return dataset


def _from_split(root: Path) -> Dataset:
    dataset = Dataset(root, "split", [])
    _class_folders(dataset, root / "train", "train")
    valid = root / "valid" if (root / "valid").is_dir() else root / "val"
    if valid.is_dir():
        _class_folders(dataset, valid, "valid")
    test = root / "test"
    if test.is_dir():
        subdirs = [p for p in test.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if subdirs:
            _class_folders(dataset, test, "test")
        else:
            images, skipped = _walk(test)
            dataset.items.extend(Item(p, None, "test") for p in images)
            dataset.skipped.extend(skipped)
    unknown = set(i.label for i in dataset.items if i.split != "train") - {None}
    unknown -= {i.label for i in dataset.items if i.split == "train"}
    if unknown:
        dataset.warnings.append(f"classes with no training images: {', '.join(sorted(unknown))}")
    return dataset


def _from_kaggle(root: Path) -> Dataset:
    dataset = Dataset(root, "kaggle", [])
    images_dir = root / "train_images"
    listed: set[Path] = set()
    rows = _read_csv(root / "train.csv", required=("image_id", "label"))
    missing = 0
    for row in rows:
        path = images_dir / row["label"] / row["image_id"]
        listed.add(path)
        if not path.is_file():
            missing += 1
            dataset.skipped.append((path, "listed in train.csv but the file is missing"))
            continue
        meta = {k: v for k, v in row.items() if k not in ("image_id", "label") and v is not None}
        dataset.items.append(Item(path, row["label"], None, meta))
    if missing:
        dataset.warnings.append(f"{missing} image(s) listed in train.csv are missing")
    images, skipped = _walk(images_dir)
    dataset.skipped.extend(skipped)
    for path in images:
        if path not in listed:
            dataset.skipped.append((path, "not listed in train.csv"))
    test = root / "test_images"
    if test.is_dir():
        images, skipped = _walk(test)
        dataset.items.extend(Item(p, None, "test") for p in images)
        dataset.skipped.extend(skipped)
    return dataset


def _from_manifest(manifest: Path) -> Dataset:
    """Rows ``path,label[,split]``: a missing or repeated path is reported, a path listed
    with two labels refused, and paths that leave the manifest's folder are named."""
    dataset = Dataset(manifest, "csv", [])
    base = manifest.parent
    missing, repeated, outside = 0, 0, []
    seen: dict[Path, str | None] = {}
    for number, row in enumerate(_read_csv(manifest, required=("path", "label")), start=2):
        label = (row.get("label") or "").strip() or None
        if not row["path"]:
            dataset.skipped.append((manifest, f"row {number} has an empty path"))
            continue
        path = Path(row["path"])
        path = path if path.is_absolute() else base / path
        key = Path(os.path.normpath(path))
        if key in seen:
            if seen[key] != label:
                raise DatasetError(
                    f"{manifest.name} lists {row['path']} twice, as {seen[key]!r} and {label!r}"
                    f" (row {number}): keep one label per image"
                )
            repeated += 1
            dataset.skipped.append((path, f"listed again in row {number} of {manifest.name}"))
            continue
        seen[key] = label
        if not _inside(key, Path(os.path.normpath(base))):
            outside.append(row["path"])
        split = (row.get("split") or "").strip().lower() or None
        if split == "val":
            split = "valid"
        if split not in (None, "train", "valid", "test"):
            dataset.skipped.append((path, f"unknown split {split!r} (use train, valid or test)"))
            continue
        if not path.is_file():
            missing += 1
            dataset.skipped.append((path, f"listed in {manifest.name} but the file is missing"))
            continue
        if not is_image_name(path):
            dataset.skipped.append((path, f"not an image file ({path.suffix or 'no extension'})"))
            continue
        meta = {k: v for k, v in row.items() if k not in ("path", "label", "split") and v}
        dataset.items.append(Item(path, label, split, meta))
    if missing:
        dataset.warnings.append(f"{missing} image(s) listed in {manifest.name} are missing")
    if repeated:
        dataset.warnings.append(f"{repeated} path(s) are listed more than once in {manifest.name}")
    if outside:
        dataset.warnings.append(
            f"{len(outside)} path(s) in {manifest.name} lead outside its folder {base} "
            f"(first: {outside[0]})"
        )
    return dataset


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            lacking = [c for c in required if c not in columns]
            if lacking:
                raise DatasetError(
                    f"{path} lacks the column(s) {', '.join(lacking)}; "
                    f"it needs {', '.join(required)} (found: {', '.join(columns) or 'none'})"
                )
            return [
                {k.strip(): csv_unescape((v or "").strip()) for k, v in row.items() if k}
                for row in reader
            ]
    except UnicodeDecodeError:
        raise DatasetError(f"{path} is not a UTF-8 text CSV file") from None
    except csv.Error as exc:  # a field over the csv module's limit, a NUL byte
        why = f"not a readable CSV row ({exc})"
        raise DatasetError(f"{path} line {reader.line_num}: {why}") from None
