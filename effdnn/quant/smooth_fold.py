"""Where SmoothQuant's division by s can be folded offline (Xiao et al., ICML 2023, sec. 4: "the
smoothing factor can be fused into the previous layer's parameters offline").

A group of Linears reading one tensor X gets X diag(s)^-1 and weights W diag(s). The division is folded
into the layer that made X when the model's function stays the same:

- the direct producer: the LayerNorm (weight and bias divided by s) or Linear (output rows and bias
  divided by s) whose output tensor *is* X (:func:`trace_linears`);
- else, when X has no such producer, a channel path: a Linear whose output channels reach X only
  through per-channel positively homogeneous ops (reshape, head split / merge, attention's
  probabilities @ V, ReLU, dropout in eval), e.g. attention's value projection feeding the output
  projection: (P V diag(s)^-1) = (P V) diag(s)^-1 (a LayerNorm or a Linear between them mixes
  channels, so a direct producer rules every earlier Linear out).
  The candidates are the nearest Linears of X's width that ran before the group (:data:`CANDIDATES`).

Every fold is kept only if the model's outputs on a probe batch (4 calibration examples) do not
change (a post-LN transformer's LayerNorm output is also the residual stream, so a fold there changes
the model and is undone).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..utils.batches import forward

CANDIDATES = 4  # channel-path folds: how many of the nearest earlier Linears of X's width are tried


def _key(x: torch.Tensor) -> tuple:
    return (x.data_ptr(), tuple(x.shape), tuple(x.stride()))


@torch.no_grad()
def trace_linears(model: nn.Module, layers: dict[str, nn.Linear], x: Any) -> tuple[dict[str, str | None], list[str]]:
    """(each layer's direct producer: the LayerNorm / Linear whose output tensor is exactly its input, else
    None; every Linear's name in the order they first ran) on one batch."""
    candidates = {n: m for n, m in model.named_modules() if isinstance(m, (nn.LayerNorm, nn.Linear))}
    made: dict[tuple, str] = {}
    keep: list[torch.Tensor] = []  # outputs stay alive, so no address is reused during the pass
    found: dict[str, str | None] = {n: None for n in layers}
    order: list[str] = []

    def record(name: str, linear: bool) -> Callable:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            if linear and name not in order:
                order.append(name)
            if isinstance(out, torch.Tensor):
                made[_key(out)] = name
                keep.append(out)
        return hook

    def lookup(name: str) -> Callable:
        def hook(_m: nn.Module, inp: tuple) -> None:
            found[name] = made.get(_key(inp[0]))
        return hook

    hooks = [m.register_forward_hook(record(n, isinstance(m, nn.Linear))) for n, m in candidates.items()]
    hooks += [m.register_forward_pre_hook(lookup(n)) for n, m in layers.items()]
    try:
        forward(model, x)
    finally:
        for h in hooks:
            h.remove()
    return found, order


def find_producers(model: nn.Module, layers: dict[str, nn.Linear], x: Any) -> dict[str, str | None]:
    """Each layer's direct producer (LayerNorm / Linear whose output is its input), else None."""
    return trace_linears(model, layers, x)[0]


def channel_candidates(modules: dict[str, nn.Module], order: list[str], names: list[str]) -> list[str]:
    """The nearest :data:`CANDIDATES` Linears that ran before the group ``names`` and output its input width."""
    width = modules[names[0]].in_features
    first = min(order.index(n) for n in names if n in order) if any(n in order for n in names) else 0
    before = [n for n in reversed(order[:first]) if n not in names and modules[n].out_features == width]
    return before[:CANDIDATES]


def _outputs(y: Any) -> list[torch.Tensor]:
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, dict) or hasattr(y, "values"):
        return [v for v in y.values() if isinstance(v, torch.Tensor)]
    if isinstance(y, (tuple, list)):
        return [v for v in y if isinstance(v, torch.Tensor)]
    return []


def model_outputs(model: nn.Module, x: Any) -> list[torch.Tensor]:
    """The model's tensor outputs on ``x`` (a tensor, or the tensors of a tuple / dict / ModelOutput)."""
    return _outputs(forward(model, x))


def _same(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = 1e-3) -> bool:
    return all(float((u - v).norm() / v.norm().clamp_min(1e-12)) < tol for u, v in zip(a, b))


def _divide_output(producer: nn.Module, s: torch.Tensor) -> None:
    s = s.to(producer.weight.device)
    if isinstance(producer, nn.LayerNorm):
        producer.weight.div_(s)
    else:
        producer.weight.div_(s[:, None])
    if producer.bias is not None:
        producer.bias.div_(s)


class _Reached(Exception):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x


@torch.no_grad()
def input_of(model: nn.Module, layer: nn.Module, x: Any) -> torch.Tensor | None:
    """``layer``'s input on ``x`` (the forward pass stops there), or None when it is not reached."""

    def stop(_m: nn.Module, inp: tuple) -> None:
        raise _Reached(inp[0].detach().clone())

    h = layer.register_forward_pre_hook(stop)
    try:
        forward(model, x)
    except _Reached as r:
        return r.x
    finally:
        h.remove()
    return None


@torch.no_grad()
def try_fold(model: nn.Module, producer: nn.Module, s: torch.Tensor, group: list[nn.Linear], probe: Any,
             ref: list[torch.Tensor], ref_input: torch.Tensor | None = None) -> bool:
    """Divide ``producer``'s output by s and multiply the group's weight columns by s; keep it (True)
    only if the model's outputs on ``probe`` stay ``ref``, else restore the weights exactly (False).
    ``ref_input``: the group's input on ``probe`` before the fold; first checked to become ref_input / s
    (a pass that stops at the group: a path that is not per-channel fails early)."""
    saved = [t.detach().clone() for t in (producer.weight, producer.bias) if t is not None]
    saved_w = [m.weight.detach().clone() for m in group]
    _divide_output(producer, s)
    for m in group:
        m.weight.mul_(s.to(m.weight.device)[None, :])
    got = input_of(model, group[0], probe) if ref_input is not None else None
    if (ref_input is None or (got is not None and _same([got * s.to(got.device)], [ref_input]))) \
            and _same(model_outputs(model, probe), ref):
        return True
    for t, v in zip([t for t in (producer.weight, producer.bias) if t is not None], saved):
        t.copy_(v)
    for m, w in zip(group, saved_w):
        m.weight.copy_(w)
    return False


__all__ = ["CANDIDATES", "channel_candidates", "find_producers", "input_of", "model_outputs", "trace_linears", "try_fold"]
