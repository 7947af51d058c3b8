"""Trace one forward pass and count every multiply-accumulate, wherever it happens.

A ``TorchDispatchMode`` sees the ATen kernels that do the work, after every Python-level function has
decomposed: ``F.linear`` (``addmm`` / ``mm``), ``matmul`` with broadcasting, ``einsum`` and
``tensordot`` (``bmm`` / ``mm``), ``bmm``, ``baddbmm``, ``addmm``, ``mv``, ``dot``, every convolution
(grouped, transposed, 1-3d), ``scaled_dot_product_attention`` (its fused CPU / GPU kernels, or
the ``bmm`` of its math fallback) and the fused inference paths of ``nn.MultiheadAttention`` /
``nn.TransformerEncoderLayer``, so nothing a Python function hides (``F.multi_head_attention_forward``,
Swin's ``F.linear(x, self.qkv.weight)``, MaxViT's ``einsum``) is missed. Each op is charged to the
innermost running module that states its precision (``effdnn_precision``), else to the innermost
module; a weight used outside its module's forward is charged to the module that holds it.

A module whose kernel is not made of those ops (bit-packed XNOR / popcount, emulated low-precision
GEMMs) defines ``effdnn_macs(input, output) -> int`` for the whole batch; the ops inside it are then
not counted, so nothing is counted twice or missed. Its weight's zeros and its input's zeros are
measured as for any layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import EffdnnError
from ..utils.batches import forward

aten = torch.ops.aten


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


def _conv(args: tuple, out: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    x, w = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    k = math.prod(w.shape[2:])
    if transposed:  # weight (Cin, Cout / groups, *k): each input element scatters into Cout / groups * k outputs
        return x.numel() * w.shape[1] * k, x, w
    return out.numel() * w.shape[1] * k, x, w  # weight (Cout, Cin / groups, *k)


def _attention(args: tuple) -> tuple[int, torch.Tensor, None]:
    q, k, v = args[0], args[1], args[2]
    rows = q.numel() // q.shape[-1]  # (B, H, L, E) @ (B, H, E, S) then (B, H, L, S) @ (B, H, S, Ev)
    return rows * k.shape[-2] * (q.shape[-1] + v.shape[-1]), q, None


def _native_mha(args: tuple, out: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """``torch._native_multi_head_attention`` (nn.MultiheadAttention's inference fast path): the q / k / v
    projections, q k^T and (attn) v over all heads, and the output projection."""
    q, k, v, e = args[0], args[1], args[2], int(args[3])
    lq, lk = q.numel() // e, k.numel() // e  # rows (batch x length) of the query and of the key / value
    s = k.shape[-2]
    return (lq + 2 * lk) * e * e + 2 * lq * s * e + lq * e * e, q, args[5]


def _encoder_layer(args: tuple, out: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """``torch._transformer_encoder_layer_fwd`` (nn.TransformerEncoderLayer's fast path): self-attention
    as above plus the two feed-forward linears."""
    x, e = args[0], int(args[1])
    rows, s = x.numel() // e, x.shape[-2]
    ffn = args[14].shape[0]
    return 4 * rows * e * e + 2 * rows * s * e + 2 * rows * e * ffn, x, args[3]


def _count(op: Any, args: tuple, out: Any) -> tuple[int, torch.Tensor, torch.Tensor] | tuple[int, torch.Tensor, None] | None:
    """(macs, first operand, second operand or None) of one ATen call, or None if it is not a MAC op."""
    pkt = getattr(op, "overloadpacket", None)
    if pkt in (aten.mm, aten.bmm, aten.mv, aten.dot, aten.vdot):
        return out.numel() * args[0].shape[-1], args[0], args[1]
    if pkt in (aten.addmm, aten.baddbmm, aten.addmv):
        return out.numel() * args[1].shape[-1], args[1], args[2]
    if pkt is aten.addbmm:  # sum over the batch of (n, m) @ (m, p)
        return args[1].shape[0] * out.numel() * args[1].shape[-1], args[1], args[2]
    if pkt in _CONVS:
        return _conv(args, out)
    if pkt in _ATTENTION:
        return _attention(args)
    if pkt is aten._native_multi_head_attention:
        return _native_mha(args, out)
    if pkt is aten._transformer_encoder_layer_fwd:
        return _encoder_layer(args, out)
    return None


_CONVS = {aten.convolution, aten._convolution, aten.mkldnn_convolution, aten.cudnn_convolution,
          aten.cudnn_convolution_transpose, aten._slow_conv2d_forward, aten.slow_conv3d_forward,
          aten.slow_conv_transpose2d, aten.slow_conv_transpose3d, aten.thnn_conv2d, aten.slow_conv_dilated2d,
          aten.slow_conv_dilated3d, aten._nnpack_spatial_convolution, aten.convolution_overrideable}
_ATTENTION = {getattr(aten, n) for n in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                                          "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                                          "_scaled_dot_product_fused_attention_overrideable") if hasattr(aten, n)}


class _Tracer(TorchDispatchMode):
    def __init__(self, on_op: Callable[[Any, tuple, Any], None]) -> None:
        super().__init__()
        self.on_op = on_op
        self.depth = 0  # ops run by a counted kernel (a conv's own decomposition) are not counted again

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        counted = func.overloadpacket in _COUNTED
        if counted:
            self.depth += 1
        try:
            out = func(*args, **kwargs)
        finally:
            if counted:
                self.depth -= 1
        if counted and self.depth == 0:
            self.on_op(func, args, out[0] if isinstance(out, (tuple, list)) else out)
        return out


_COUNTED = {aten.mm, aten.bmm, aten.mv, aten.dot, aten.vdot, aten.addmm, aten.baddbmm, aten.addmv, aten.addbmm,
            aten._native_multi_head_attention, aten._transformer_encoder_layer_fwd, *_CONVS, *_ATTENTION}


def _storage(t: Any) -> int | None:
    if not isinstance(t, torch.Tensor):
        return None
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def _weight_owners(model: nn.Module) -> dict[int, nn.Module]:
    """Storage of each parameter -> the module that holds it (its ``weight`` first)."""
    owners: dict[int, nn.Module] = {}
    for m in model.modules():
        for pname, p in m.named_parameters(recurse=False):
            ptr = _storage(p)
            if ptr is not None and (pname == "weight" or ptr not in owners):
                owners[ptr] = m
    return owners


@torch.no_grad()
def trace_ops(model: nn.Module, example_input: Any) -> list[OpRecord]:
    """Run ``model`` once on ``example_input`` and return one record per MAC-bearing op."""
    names = {m: n for n, m in model.named_modules()}
    owners = _weight_owners(model)
    stack: list[nn.Module] = []
    records: list[OpRecord] = []

    def owner(extra: nn.Module | None = None) -> str:
        mods = stack + ([extra] if extra is not None else [])
        for m in reversed(mods):
            if callable(getattr(m, "effdnn_precision", None)):
                return names[m]
        return names[mods[-1]] if mods else ""

    def self_counting() -> bool:
        return any(callable(getattr(m, "effdnn_macs", None)) for m in stack)

    def on_op(func: Any, args: tuple, out: torch.Tensor) -> None:
        if self_counting():
            return  # a module that counts its own MACs (bit-packed or emulated kernels)
        counted = _count(func, args, out)
        if counted is None:
            return
        macs, x, w = counted
        if w is not None and _storage(w) not in owners:
            if _storage(x) in owners:  # x @ W^T arrives as (W^T, x) in some decompositions
                x, w = w, x
            else:  # a weight the layer derived in its forward (quantized, masked) is still its weight
                pw = getattr(stack[-1], "weight", None) if stack else None
                if not (isinstance(pw, torch.Tensor) and pw.numel() == w.numel()):
                    w = None  # activation x activation
        held_by = owners.get(_storage(w)) if w is not None else None
        # a weight used outside its module's forward (Swin's F.linear(x, self.qkv.weight)): that layer's op
        module = names[held_by] if held_by is not None and held_by not in stack else owner()
        records.append(OpRecord(module, str(func.overloadpacket.__name__), int(macs),
                                _zero_frac(w) if w is not None else 0.0, _zero_frac(x),
                                x.numel(), out.numel(), w.numel() if w is not None else 0))

    def push(mod: nn.Module, inp: Any) -> None:
        stack.append(mod)

    def pop(mod: nn.Module, inp: Any, out: Any) -> None:
        stack.pop()
        own = getattr(mod, "effdnn_macs", None)
        if callable(own) and isinstance(out, torch.Tensor) and not self_counting():
            x = inp[0] if inp and isinstance(inp[0], torch.Tensor) else out
            w = getattr(mod, "weight", None)
            w = w if isinstance(w, torch.Tensor) else None
            records.append(OpRecord(owner(mod), "custom", int(own(x, out)), _zero_frac(w) if w is not None else 0.0,
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
