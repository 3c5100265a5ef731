"""Training checkpoints as safetensors + JSON (never pickle), written atomically.

A checkpoint folder holds ``model-<tag>.safetensors``, ``optim-<tag>.safetensors`` and
``state.json``, which names them and is written last: a run killed at any moment leaves
either the old checkpoint or the new one, whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write_json
from cropdoc.model.build import write_safetensors


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split an optimizer's state into tensors (for safetensors) and JSON-ready groups."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
        for g in state["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    """Load what ``optimizer_to_files`` wrote back into ``optimizer``."""
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    folder: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    state: dict,
    ema=None,
) -> None:
    """Write model, optimizer, scaler, RNG, the weights' moving average (``ema``) and
    ``state`` (epoch, step, ...) to ``folder``."""
    folder = Path(folder)
    tag = f"e{state['epoch']:04d}s{state['step']:06d}"
    write_safetensors(folder / f"model-{tag}.safetensors", model.state_dict())
    if ema is not None:
        write_safetensors(folder / f"ema-{tag}.safetensors", ema.module.state_dict())
    tensors, optim_meta = optimizer_to_files(optimizer)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda{i}"] = rng
    write_safetensors(folder / f"optim-{tag}.safetensors", tensors)
    atomic_write_json(
        folder / "state.json",
        {
            **state,
            "model_file": f"model-{tag}.safetensors",
            "ema_file": f"ema-{tag}.safetensors" if ema is not None else None,
            "optim_file": f"optim-{tag}.safetensors",
            "optimizer": optim_meta,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        },
    )
    for old in folder.glob("*.safetensors"):
        if tag not in old.name:
            old.unlink(missing_ok=True)


def load_checkpoint(
    folder: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    ema=None,
) -> dict:
    """Restore what ``save_checkpoint`` wrote; returns the saved ``state``."""
    folder = Path(folder)
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        weights = load_file(folder / state["model_file"])
        tensors = load_file(folder / state["optim_file"])
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"no usable checkpoint in {folder} ({exc}): start a new run") from None
    rng = {k: tensors.pop(k) for k in list(tensors) if k.startswith("rng.")}
    try:
        model.load_state_dict(weights)
        optimizer_from_files(optimizer, tensors, state["optimizer"])
        if ema is not None:
            if not state.get("ema_file"):
                raise ValueError("it holds no moving average of the weights (--ema)")
            ema.module.load_state_dict(load_file(folder / state["ema_file"]))
    except (RuntimeError, ValueError, KeyError) as exc:  # another model or parameter grouping
        first = str(exc).splitlines()[0][:160]
        raise UserError(
            f"the checkpoint in {folder} does not fit this model ({first}): it was written by "
            "another cropdoc version or settings; start a new run"
        ) from None
    torch.set_rng_state(rng["rng.cpu"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("rng.cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state


def resume_point(
    folder: str | os.PathLike, model, optimizer, scaler, processes: int, ema=None
) -> dict:
    """Restore the checkpoint in ``folder`` and say where training resumes: ``epoch``,
    ``step`` (the batch of that epoch, in batches of ``processes`` processes: a run may
    resume on another number of them and keeps the images done), the ``rows`` of the
    epochs done, the ``best`` one and the loss ``sums`` of the epoch begun."""
    state = load_checkpoint(folder, model, optimizer, scaler, ema)
    step = state["step"] * state.get("processes", 1) // processes
    return {
        "epoch": state["epoch"],
        "step": step,
        "rows": state["rows"],
        "best": state["best"],
        "sums": tuple(state["sums"]),
    }
