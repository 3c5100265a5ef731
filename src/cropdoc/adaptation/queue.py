"""The queue of photos kept from the field for labelling: ``cropdoc serve --keep-uploads
QUEUE`` keeps the uploads it answered ``uncertain`` or ``out_of_scope`` (and a sample of the
others), each with the answer it gave; nothing is kept without that option.

A photo is kept as the model read it (shrunk to the model's cache size, re-encoded as a JPEG:
no metadata, no location, never the client's bytes), named by the sha256 of its pixels,
beside a JSON file of the answer. The queue has a size bound: once full it keeps nothing
more and says so once in the log; it never deletes or changes a photo kept before. Every
file is written atomically. ``queue.json`` names the model and its classes, for the
labelling page (``cropdoc label QUEUE``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write_bytes, atomic_write_json

log = logging.getLogger("cropdoc.serve")
KEPT_VERDICTS = ("uncertain", "out_of_scope")  # always kept (the model did not know)
INFO = "queue.json"  # the model and its classes


@dataclass
class Queue:
    """A queue folder, its bound in bytes and the share of the other answers kept."""

    folder: Path
    max_bytes: int
    sample: float = 0.05
    rng: random.Random = field(default_factory=random.Random)
    lock: threading.Lock = field(default_factory=threading.Lock)
    full: bool = False  # said once

    @classmethod
    def open(cls, folder: str | Path, max_mb: float, sample: float, model: dict) -> Queue:
        """The queue in ``folder`` (made if needed) for ``model`` (its ``arch`` and
        ``classes``); a queue of a model with other classes is refused in one line."""
        if not 0 < max_mb <= 1_000_000:
            raise UserError(f"--queue-mb must be above 0 and at most 1000000, not {max_mb:g}")
        if not 0 <= sample <= 1:
            raise UserError(f"--keep-sample is a share from 0 to 1, not {sample:g}")
        folder = Path(folder).expanduser().absolute()
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--keep-uploads {folder} is a file: give a folder")
        info = {"arch": model["arch"], "classes": list(model["classes"])}
        known = read_info(folder) if (folder / INFO).exists() else None
        if known is not None and known["classes"] != info["classes"]:
            raise UserError(
                f"{folder} queues photos of a model with other classes: give another folder"
            )
        folder.mkdir(parents=True, exist_ok=True)
        if known is None:
            atomic_write_json(folder / INFO, info)
        return cls(folder, int(max_mb * 2**20), sample)

    def reason(self, verdict: str) -> str:
        """Why a photo answered ``verdict`` is kept (``""``: it is not)."""
        if verdict in KEPT_VERDICTS:
            return verdict
        if verdict != "retake" and self.rng.random() < self.sample:
            return "sampled"
        return ""

    def keep(self, pixels: np.ndarray, answer: dict, reason: str) -> bool:
        """Keep the photo ``pixels`` with its ``answer``; False when the queue is full (the
        photos kept before stay as they are)."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
        data = buffer.getvalue()
        name = hashlib.sha256(pixels.tobytes()).hexdigest()[:32]
        record = {
            "photo": f"{name}.jpg",
            "reason": reason,
            "received": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "answer": answer,
        }
        text = json.dumps(record).encode()
        with self.lock:
            if (self.folder / f"{name}.jpg").exists():
                return True  # the same photo, kept already
            if used_bytes(self.folder) + len(data) + len(text) > self.max_bytes:
                if not self.full:
                    log.warning(
                        "cropdoc: the queue %s is full (%d MB): no more photos are kept; "
                        "label them (cropdoc label) and move them out, or raise --queue-mb",
                        self.folder,
                        self.max_bytes // 2**20,
                    )
                self.full = True
                return False
            atomic_write_bytes(self.folder / f"{name}.jpg", data)
            atomic_write_bytes(self.folder / f"{name}.json", text)
        return True


def used_bytes(folder: Path) -> int:
    """The bytes of the files in ``folder`` (the queue's own, not below it)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def read_info(folder: Path) -> dict:
    """``queue.json``: the model's ``arch`` and ``classes``, checked."""
    path = Path(folder) / INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raise UserError(f"{path} cannot be read: is {folder} a cropdoc queue?") from None
    classes = info.get("classes") if isinstance(info, dict) else None
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        raise UserError(f"{path} holds no list of classes: is {folder} a cropdoc queue?")
    return info
