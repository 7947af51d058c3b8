"""The batch convention of the public API: a tensor, a (input, labels...) tuple / list, or a dict of kwargs."""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import nn

from ..errors import EffdnnError


def batch_input(batch: Any) -> Any:
    """The model input of a batch: the tensor itself, the first item of a tuple / list, or the dict."""
    if isinstance(batch, torch.Tensor) or isinstance(batch, dict):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    raise EffdnnError(f"a batch must be a tensor, a (input, label) tuple or a dict, got {type(batch).__name__}")


def head(x: Any, n: int) -> Any:
    """The first ``n`` examples of a model input: a tensor, or each tensor of a dict / tuple / list."""
    if isinstance(x, torch.Tensor):
        return x[:n] if x.dim() > 0 else x
    if isinstance(x, dict):
        return {k: head(v, n) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(head(v, n) for v in x)
    return x


def move(x: Any, device: torch.device | str) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: move(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(move(v, device) for v in x)
    return x


def forward(model: nn.Module, x: Any) -> Any:
    """Call the model on a batch input: ``model(**x)`` for a dict, ``model(x)`` otherwise."""
    return model(**x) if isinstance(x, dict) else model(x)


def iter_inputs(data: Iterable[Any], max_batches: int | None = None, device: torch.device | str = "cpu") -> Iterator[Any]:
    """Model inputs of the first ``max_batches`` batches of any iterable of batches."""
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        yield move(batch_input(batch), device)


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def check_keys(model: nn.Module, batch: Any, what: str) -> None:
    """A dict batch's keys must be arguments of ``model.forward``; else one line naming the first stray key.

    A ``forward(**kwargs)`` (Hugging Face's) takes any flag, but no tensor it does not name."""
    import inspect

    if not isinstance(batch, dict):
        return
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return
    open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())  # Hugging Face: flags go to **kwargs
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    stray = [k for k, v in batch.items() if k not in accepted and not (open_kwargs and not isinstance(v, torch.Tensor))]
    if stray:
        raise EffdnnError(f"{what}: key {stray[0]!r} is not an argument of {type(model).__name__}.forward "
                          f"(it takes {', '.join(accepted[:8])}{', ...' if len(accepted) > 8 else ''})")
