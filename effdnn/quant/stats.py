"""Input statistics of Linear layers over the calibration batches, in one pass of the float model.

What SmoothQuant and GPTQ calibrate on:

- ``absmax``: max_t |X_{t,j}| per input channel j (SmoothQuant's activation range);
- ``absmean()``: mean_t |X_{t,j}| per input channel j (AWQ's activation scale);
- ``hessian``: H = (2 / T) sum_t x_t x_t^T over the T input rows seen (GPTQ's layer-wise Hessian of
  ||W X - W_hat X||^2, Frantar et al. 2023, section 3).

Every layer is measured in the same pass of the float model ("parallel" calibration: the layer's
input comes from the float layers before it, not from already-quantized ones). A dict batch whose
keys are not arguments of the model's ``forward`` is refused in one line before anything runs.
"""
from __future__ import annotations

import inspect
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import EffdnnError
from ..utils.batches import forward, iter_inputs, model_device


def check_batch_keys(model: nn.Module, x: Any, tag: str) -> None:
    """One line when a dict batch names keys the model's ``forward`` does not take."""
    if not isinstance(x, dict):
        return
    params = inspect.signature(model.forward).parameters
    named = [n for n, p in params.items() if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
    unknown = [k for k in x if k not in named]
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    # a forward with **kwargs (Hugging Face) swallows any key: refuse when no key names an argument
    if unknown and (not open_kwargs or len(unknown) == len(x)):
        raise EffdnnError(f"{tag}: the calibration batch keys {unknown} are not arguments of "
                          f"{type(model).__name__}.forward (it takes: {', '.join(named[:8])})")


class InputStats:
    """Running per-layer statistics of a Linear's input rows (the last axis is the channel axis)."""

    def __init__(self, width: int, hessian: bool) -> None:
        self.absmax = torch.zeros(width)
        self.abssum = torch.zeros(width, dtype=torch.float64)
        self.hessian = torch.zeros(width, width, dtype=torch.float64) if hessian else None
        self.rows = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        ax = x.abs()
        self.absmax = torch.maximum(self.absmax, ax.amax(0).cpu())
        self.abssum += ax.sum(0).double().cpu()
        if self.hessian is not None:
            self.hessian += (x.t() @ x).double().cpu()
        self.rows += x.shape[0]

    def absmean(self) -> torch.Tensor:
        """mean_t |X_{t,j}| (float32)."""
        return (self.abssum / max(self.rows, 1)).float()

    def H(self) -> torch.Tensor:
        """H = 2 X X^T / T (float64)."""
        assert self.hessian is not None
        return self.hessian * (2.0 / max(self.rows, 1))


@torch.no_grad()
def collect_input_stats(model: nn.Module, layers: dict[str, nn.Linear], data: Iterable[Any], max_batches: int | None,
                        tag: str, hessian: bool = True) -> dict[str, InputStats]:
    """Run up to ``max_batches`` batches through ``model`` (eval mode) and return each layer's
    :class:`InputStats`. Raises one line for a batch the model cannot run or a layer never reached."""
    stats = {n: InputStats(m.in_features, hessian) for n, m in layers.items()}
    hooks = [m.register_forward_pre_hook(lambda _m, inp, s=stats[n]: s.update(inp[0])) for n, m in layers.items()]
    was_training, seen = model.training, 0
    model.eval()
    try:
        for x in iter_inputs(data, max_batches, model_device(model)):
            check_batch_keys(model, x, tag)
            try:
                forward(model, x)
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                raise EffdnnError(f"{tag}: the model's forward fails on calibration batch {seen + 1}: "
                                  f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
            seen += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise EffdnnError(f"{tag}: the calibration set is empty (no batches)")
    for n, s in stats.items():
        if s.rows == 0:
            raise EffdnnError(f"{tag}: layer {n} was never reached by the calibration data")
    return stats


__all__ = ["InputStats", "check_batch_keys", "collect_input_stats"]
