"""Atomic checkpoints, loaded with ``weights_only=True`` so a checkpoint cannot run code."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EffdnnError


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise EffdnnError(f"checkpoint {path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EffdnnError(f"checkpoint {path}: unreadable ({first[:200]})") from None


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict (or a training checkpoint holding one under ``model``) into ``model``."""
    state = load_checkpoint(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise EffdnnError(f"checkpoint {path}: expected a state dict, found {type(state).__name__}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise EffdnnError(f"checkpoint {path}: does not fit the model ({str(e).splitlines()[0]})") from None
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise EffdnnError(f"checkpoint {path}: tensor {name} holds NaN or Inf values")
    return model
