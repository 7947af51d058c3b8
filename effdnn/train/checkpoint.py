"""Atomic checkpoints, loaded with ``weights_only=True`` so a checkpoint cannot run code."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EffdnnError


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete ``<name>.<random>.tmp`` files that a killed :func:`save_atomic` left next to ``path``.

    A temporary file lives only while its save runs, and one process saves a checkpoint at a time (the
    main one), so any found when saving or loading starts is left over from an interrupted run."""
    path = Path(path)
    pattern = re.compile(re.escape(path.name) + r"\.[A-Za-z0-9_]{8}\.tmp")  # tempfile.mkstemp's 8 random characters
    removed = []
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return removed
    for f in candidates:
        if pattern.fullmatch(f.name) and f.is_file():
            try:
                f.unlink()
                removed.append(f)
            except OSError:  # gone already (another rank), or not ours to delete: loading goes on
                pass
    return removed


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written checkpoint.
    Temporary files of an earlier, interrupted save are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: str | Path) -> Any:
    """The object saved at ``path`` (tensors and plain data only); stale temporaries next to it removed."""
    path = Path(path)
    remove_stale_temporaries(path)
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
