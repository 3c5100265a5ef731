"""Starting weights from local files, without the hub: ``train --weights PATH``.

``PATH`` is a ``.safetensors`` file, a PyTorch state dict (``.pth``, ``.pt``, ``.bin``,
``.ckpt``) read with ``torch.load(weights_only=True)`` so that a pickle needing code is
refused, never run, or a folder as the hub keeps a model (``model.safetensors`` or
``pytorch_model.bin``, with timm's ``config.json`` naming the architecture). The tensors
are loaded into the timm architecture by name; the classifier is left new where its shape
differs (another number of classes), and anything else that does not fit is refused in one
line naming the tensors and their shapes. Where the weights came from (file name, sha256)
goes into the bundle's ``model.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from pickle import UnpicklingError  # only the error torch.load(weights_only=True) raises

from torch import nn

from cropdoc.core.errors import UserError, one_line

STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
SHOWN = 3  # tensors named in a one-line report


def weights_file(path: str | os.PathLike, arch: str = "") -> Path:
    """The file of ``--weights PATH``: the path itself, or the weights file of a hub-style
    folder (whose ``config.json``, when it names an architecture, must name ``arch``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if arch and config.is_file():
            named = _architecture(config)
            if named and named.split(".")[0] != arch.split(".")[0]:
                raise UserError(f"{path} holds weights of {named}: train it with --arch {named}")
        for name in FOLDER_FILES:
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path} holds none of {', '.join(FOLDER_FILES)}: give the weights file")
    if not path.is_file():
        raise UserError(f"--weights {path} does not exist")
    if path.suffix not in (".safetensors", *STATE_DICT_SUFFIXES):
        raise UserError(
            f"--weights {path.name}: give a .safetensors file, a state dict "
            f"({', '.join(STATE_DICT_SUFFIXES)}) or a folder holding one"
        )
    return path


def _architecture(config: Path) -> str:
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return ""
    name = data.get("architecture", "") if isinstance(data, dict) else ""
    return name if isinstance(name, str) else ""


def read_state(path: Path) -> dict:
    """The tensors of a weights file by name (a checkpoint's ``state_dict`` or ``model``
    entry; DDP's ``module.`` prefix removed)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as exc:
            raise UserError(f"cannot read weights {path}: {one_line(exc, 120)}") from None
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        asks = f"it asks for {found.group(1)}" if found else "it asks for code to run"
        raise UserError(
            f"{path} is a pickle that needs code to load ({asks}): cropdoc reads only plain "
            "tensors; save model.state_dict() or a .safetensors file instead"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise UserError(f"cannot read weights {path}: {one_line(exc, 120)}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path} holds no state dict of tensors: save model.state_dict()")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | os.PathLike, arch: str = "") -> tuple[str, bool]:
    """Load ``--weights PATH`` into ``model`` (a timm model with its own head); returns a
    line saying what was loaded, and whether the head was left new. The classifier is left
    new where its shapes differ; any other tensor that is missing, of another shape or not
    part of the model is refused."""
    file = weights_file(path, arch)
    state = read_state(file)
    own = model.state_dict()
    head = {f"{_prefix(model)}{k}" for k in model.get_classifier().state_dict()}
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    new_head = [k for k in head if k in missing or k in wrong]
    wrong, missing = [k for k in wrong if k not in head], [k for k in missing if k not in head]
    if wrong or missing or extra:
        what = arch or "this architecture"
        raise UserError(f"{file} does not fit {what}: {_misfit(own, state, wrong, missing, extra)}")
    kept = {k: v for k, v in state.items() if k not in new_head}
    model.load_state_dict(kept, strict=False)
    said = f"weights: {file.name}, {len(kept)} of {len(own)} tensors loaded"
    if new_head:
        said += f"; the head ({', '.join(sorted(new_head))}) starts new"
    return said, bool(new_head)


def _prefix(model: nn.Module) -> str:
    """The name under which ``model`` keeps its classifier (``fc.``, ``head.fc.``, ...)."""
    classifier = model.get_classifier()
    for name, module in model.named_modules():
        if module is classifier and name:
            return f"{name}."
    return ""


def _misfit(own: dict, state: dict, wrong: list, missing: list, extra: list) -> str:
    """What keeps ``state`` from loading into a model whose state is ``own``, in one line."""

    def shape(tensor) -> str:
        return "x".join(map(str, tensor.shape)) or "scalar"

    def first(keys: list[str]) -> str:
        shown = ", ".join(keys[:SHOWN])
        return shown + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")

    parts = []
    if wrong:
        shapes = [f"{k} {shape(state[k])} (expected {shape(own[k])})" for k in wrong]
        parts.append(f"{len(wrong)} of other shapes: {first(shapes)}")
    if missing:
        parts.append(f"{len(missing)} missing: {first(missing)}")
    if extra:
        parts.append(f"{len(extra)} not in the model: {first(extra)}")
    return "; ".join(parts) + ". Are they the weights of another --arch?"


def provenance(path: str | os.PathLike, arch: str = "") -> dict[str, str]:
    """Where ``--weights PATH`` came from, for ``model.json``: the file's name and sha256."""
    file = weights_file(path, arch)
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"source": "file", "file": file.name, "sha256": digest.hexdigest()}
