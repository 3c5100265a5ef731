"""Model bundles: ``model.safetensors`` + ``model.json``. Loading one never runs code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from cropdoc import __version__
from cropdoc.errors import UserError
from cropdoc.files import atomic_write, atomic_write_json


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` (moved to the CPU, made contiguous) as one safetensors file,
    atomically."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write(path, lambda f: f.write(data))


def save_bundle(folder: str | os.PathLike, model: torch.nn.Module, meta: dict) -> Path:
    """Write the model's weights and ``meta`` (architecture, classes, input size, resize,
    normalisation, metrics) into ``folder``; returns the folder."""
    import timm

    folder = Path(folder)
    write_safetensors(folder / "model.safetensors", model.state_dict())
    meta = {
        **meta,
        "cropdoc_version": __version__,
        "timm_version": timm.__version__,
        "format": "cropdoc-bundle-1",
    }
    atomic_write_json(folder / "model.json", meta)
    return folder


def read_bundle_meta(folder: str | os.PathLike) -> dict:
    """The ``model.json`` of a bundle (or of a run folder holding one)."""
    path = Path(folder) / "model.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder} holds no model.json: give a run folder or a bundle") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON: the bundle is damaged") from None
    missing = [k for k in ("arch", "classes", "size", "mean", "std") if k not in meta]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: not a cropdoc bundle")
    return meta


def load_bundle(folder: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Build the bundle's architecture and load its weights (strict: every tensor must fit)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from cropdoc.models import create_model

    meta = read_bundle_meta(folder)
    model = create_model(
        meta["arch"], len(meta["classes"]), pretrained=False, img_size=tuple(meta["size"])
    )
    try:
        state = load_file(Path(folder) / "model.safetensors")
        model.load_state_dict(state, strict=True)
    except (SafetensorError, OSError) as exc:
        raise UserError(f"cannot read {folder}/model.safetensors: {str(exc)[:160]}") from None
    except RuntimeError as exc:
        raise UserError(
            f"{folder}/model.safetensors does not fit {meta['arch']}: "
            f"{str(exc).splitlines()[0][:160]}"
        ) from None
    return model.eval(), meta
