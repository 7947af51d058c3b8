"""Trace one forward pass and count every multiply-accumulate, wherever it happens.

A TorchFunctionMode sees each ``F.linear``, ``F.conv*``, ``matmul`` / ``mm`` / ``bmm`` / ``addmm`` /
``baddbmm`` and ``scaled_dot_product_attention`` call, so Linear layers inside Hugging Face models
(and GPT-2's Conv1D, which calls ``addmm``) count as well as the zoo's layers. Each op is charged to
the innermost module that states its precision (``effdnn_precision``), else the innermost module.

A module whose kernel is not made of those ops (bit-packed XNOR / popcount, emulated low-precision
GEMMs) defines ``effdnn_macs(input, output) -> int`` for the whole batch; the ops inside it are then
not traced, so nothing is counted twice or missed. Its weight's zeros and its input's zeros are
measured as for any layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import EffdnnError
from ..utils.batches import forward


@dataclass
class OpRecord:
    module: str
    op: str
    macs: int  # dense multiply-accumulates for the whole batch
    weight_zero: float  # fraction of exact zeros in the weight operand (0 for activation x activation)
    input_zero: float  # fraction of exact zeros in the activation operand
    in_numel: int
    out_numel: int
    weight_numel: int  # 0 for activation x activation products


def _zero_frac(t: torch.Tensor) -> float:
    return float((t == 0).sum()) / max(t.numel(), 1)


def _count(name: str, args: tuple, kwargs: dict, out: Any, params: set[int]) -> tuple[int, torch.Tensor, torch.Tensor | None] | None:
    """(macs, activation operand, weight operand or None) of one call, or None if it is not a MAC op."""
    a = lambda i, k: args[i] if len(args) > i else kwargs.get(k)  # noqa: E731
    if name == "linear":
        x, w = a(0, "input"), a(1, "weight")
        return x.numel() // x.shape[-1] * w.shape[0] * w.shape[1], x, w
    if name in ("conv1d", "conv2d", "conv3d"):
        x, w = a(0, "input"), a(1, "weight")
        return out.numel() * w.shape[1] * int(torch.tensor(w.shape[2:]).prod()), x, w
    if name in ("matmul", "__matmul__", "mm", "bmm"):
        x, y = a(0, "input"), a(1, "other") if name in ("matmul", "__matmul__") else a(1, "mat2")
        k = x.shape[-1]  # (..., M, K) @ (..., K, N)
        return out.numel() * k, x, (y if id(y) in params else None)
    if name in ("addmm", "baddbmm"):
        x, y = a(1, "mat1" if name == "addmm" else "batch1"), a(2, "mat2" if name == "addmm" else "batch2")
        return out.numel() * x.shape[-1], x, (y if id(y) in params else None)
    if name == "scaled_dot_product_attention":
        q, k, v = a(0, "query"), a(1, "key"), a(2, "value")
        rows = q.numel() // q.shape[-1]
        return rows * k.shape[-2] * (q.shape[-1] + v.shape[-1]), q, None
    return None


class _Tracer(TorchFunctionMode):
    def __init__(self, on_op: Callable[[str, tuple, dict, Any], None]) -> None:
        super().__init__()
        self.on_op = on_op

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _OPS and isinstance(out, torch.Tensor):
            self.on_op(name, args, kwargs, out)
        return out


_OPS = {"linear", "conv1d", "conv2d", "conv3d", "matmul", "__matmul__", "mm", "bmm", "addmm", "baddbmm",
        "scaled_dot_product_attention"}


@torch.no_grad()
def trace_ops(model: nn.Module, example_input: Any) -> list[OpRecord]:
    """Run ``model`` once on ``example_input`` and return one record per MAC-bearing op."""
    names = {m: n for n, m in model.named_modules()}
    params = {id(p) for p in model.parameters()}
    stack: list[nn.Module] = []
    records: list[OpRecord] = []

    def owner() -> str:
        for m in reversed(stack):
            if callable(getattr(m, "effdnn_precision", None)):
                return names[m]
        return names[stack[-1]] if stack else ""

    def owner_of(mod: nn.Module) -> str:
        stack.append(mod)
        try:
            return owner()
        finally:
            stack.pop()

    def on_op(name: str, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        if any(callable(getattr(m, "effdnn_macs", None)) for m in stack):
            return  # a module that counts its own MACs (bit-packed or emulated kernels)
        counted = _count(name, args, kwargs, out, params)
        if counted is None:
            return
        macs, x, w = counted
        records.append(OpRecord(owner(), name, int(macs), _zero_frac(w) if w is not None else 0.0, _zero_frac(x),
                                x.numel(), out.numel(), w.numel() if w is not None else 0))

    def push(mod: nn.Module, inp: Any) -> None:
        stack.append(mod)

    def pop(mod: nn.Module, inp: Any, out: Any) -> None:
        stack.pop()
        own = getattr(mod, "effdnn_macs", None)
        if callable(own) and isinstance(out, torch.Tensor) and not any(callable(getattr(m, "effdnn_macs", None)) for m in stack):
            x = inp[0] if inp and isinstance(inp[0], torch.Tensor) else out
            w = getattr(mod, "weight", None)
            w = w if isinstance(w, torch.Tensor) else None
            records.append(OpRecord(owner_of(mod), "custom", int(own(x, out)), _zero_frac(w) if w is not None else 0.0,
                                    _zero_frac(x), x.numel(), out.numel(), w.numel() if w is not None else 0))

    handles = []
    for m in names:
        handles.append(m.register_forward_pre_hook(push))
        handles.append(m.register_forward_hook(pop, always_call=True))
    was_training = model.training
    model.eval()
    try:
        with _Tracer(on_op):
            forward(model, example_input)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        raise EffdnnError(f"cost: the model's forward fails on example_input {shape}: {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:300]}") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return records
