"""Where an adapted bundle came from: its parent bundle and the photos it adapted on,
recorded under ``adapted`` in its ``model.json``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cropdoc.contract.bundle import BundleMeta, save_meta
from cropdoc.contract.kinds import kind_of
from cropdoc.core.errors import UserError
from cropdoc.model.archs import check_arch
from cropdoc.model.weights import provenance


def parent_bundle(parent: str | Path) -> BundleMeta:
    """The ``model.json`` of the bundle to adapt; a tiled or a multi-target bundle is
    refused in one line (adapting reads whole photos and one answer)."""
    meta = BundleMeta.read(parent)
    check_arch(meta.arch)
    if not (Path(parent) / "model.safetensors").is_file():
        raise UserError(f"{parent} holds no model.safetensors: give a run folder or a bundle")
    kind_of(meta.tiles).refuse("adapt", str(parent))
    if meta.others:
        raise UserError(f"{parent} answers several targets: adapt works on the label alone")
    return meta


def record(out: Path, parent: Path, kind: str, data: Path, photos: dict[str, int]) -> dict:
    """Write ``adapted`` into the bundle in ``out``: how (``kind``), from which parent
    (its weights' sha256), on which photos; returns it."""
    adapted = {
        "kind": kind,
        "parent": str(parent.absolute()),
        "parent_sha256": provenance(parent / "model.safetensors")["sha256"],
        "data": str(data.absolute()),
        "photos": photos,
    }
    meta = BundleMeta.read(out)
    save_meta(out, dataclasses.replace(meta, extra={**meta.extra, "adapted": adapted}))
    return adapted
