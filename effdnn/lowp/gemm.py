"""Emulated reduced-precision GEMM layers: Linear and Conv2d whose three GEMMs round their operands.

Training a layer computes three GEMMs (Wang et al. 2018, Fig. 1): forward ``Y = X W^T``, backward
``dX = dY W`` and gradient ``dW = dY^T X``. A :class:`GemmPolicy` names the format of each operand:
weights and activations (forward, and reused by both backward GEMMs), errors ``dY`` (backward), the
accumulator (``acc``: emulated one addition at a time, chunked by ``chunk``; ``None``: a float32 GEMM,
as tensor cores accumulate fp16 products in fp32) and the outputs ``Y``, ``dX``, ``dW`` (``out``).
Convolutions run as GEMMs on im2col columns (``F.unfold``); their input gradient folds the columns
back with ``F.fold`` (overlapping windows summed in float32, then rounded to ``out``).

The modules are ``nn.Linear`` / ``nn.Conv2d`` subclasses (``convert_layers`` swaps the class in place),
so parameters, state dicts and the cost model see the same layer; ``effdnn_precision`` states the
operand and accumulator widths.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..cost.precision import LayerPrecision
from ..errors import EffdnnError
from ..formats.float import FloatFormat
from .accumulate import lowp_matmul


@dataclass(frozen=True)
class GemmPolicy:
    """Formats of a layer's GEMM operands; ``None`` keeps float32."""

    weight: FloatFormat | None = None
    act: FloatFormat | None = None
    grad: FloatFormat | None = None
    out: FloatFormat | None = None
    acc: FloatFormat | None = None
    chunk: int | None = None
    prod: FloatFormat | None = None
    label: str = ""


@dataclass
class LowpStats:
    """Counters shared by the layers of one model: errors rounded in the backward pass."""

    grad_elements: int = 0
    grad_nonzero: int = 0
    grad_underflow: int = 0  # nonzero errors that rounded to zero
    grad_overflow: int = 0  # finite errors that rounded to inf / NaN

    def as_dict(self) -> dict[str, Any]:
        frac = self.grad_underflow / self.grad_nonzero if self.grad_nonzero else 0.0
        return {"grad_underflow": self.grad_underflow, "grad_underflow_frac": frac, "grad_overflow": self.grad_overflow}


def _round(x: torch.Tensor, fmt: FloatFormat | None) -> torch.Tensor:
    return x if fmt is None else fmt.round(x, rounding="nearest")


def _round_errors(g: torch.Tensor, fmt: FloatFormat | None, stats: LowpStats | None) -> torch.Tensor:
    q = _round(g, fmt)
    if stats is not None and fmt is not None:
        nz = g != 0
        stats.grad_elements += g.numel()
        stats.grad_nonzero += int(nz.sum())
        stats.grad_underflow += int((nz & (q == 0)).sum())
        stats.grad_overflow += int((torch.isfinite(g) & ~torch.isfinite(q)).sum())
    return q


def gemm(a: torch.Tensor, b: torch.Tensor, policy: GemmPolicy) -> torch.Tensor:
    """(M, K) @ (K, N) accumulated as the policy says."""
    if policy.acc is None:
        return a @ b
    return lowp_matmul(a, b, policy.acc, policy.prod, policy.chunk)


class _LowpLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, policy: GemmPolicy, stats: LowpStats | None):  # x (M, K), weight (N, K)
        xq, wq = _round(x, policy.act), _round(weight, policy.weight)
        y = gemm(xq, wq.t(), policy)  # (M, N)
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(xq, wq)
        ctx.policy, ctx.stats, ctx.has_bias = policy, stats, bias is not None
        return _round(y, policy.out)

    @staticmethod
    def backward(ctx, gy):  # gy (M, N)
        xq, wq = ctx.saved_tensors
        p: GemmPolicy = ctx.policy
        g = _round_errors(gy, p.grad, ctx.stats)
        gx = _round(gemm(g, wq, p), p.out) if ctx.needs_input_grad[0] else None  # (M, K)
        gw = _round(gemm(g.t().contiguous(), xq, p), p.out) if ctx.needs_input_grad[1] else None  # (N, K)
        gb = _round(g.sum(0), p.out) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None


class _LowpConv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, geom: dict, policy: GemmPolicy, stats: LowpStats | None):  # x (B, C, H, W)
        n_out, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
        xq, wq = _round(x, policy.act), _round(weight, policy.weight)
        cols = F.unfold(xq, (kh, kw), **geom)  # (B, K, L)
        b, k, l = cols.shape
        cols = cols.transpose(1, 2).reshape(b * l, k)  # (B*L, K)
        w2 = wq.reshape(n_out, k)  # (N, K)
        y = gemm(cols, w2.t(), policy)  # (B*L, N)
        if bias is not None:
            y = y + bias
        ho, wo = _out_size(x.shape[2], kh, geom, 0), _out_size(x.shape[3], kw, geom, 1)
        y = y.reshape(b, ho, wo, n_out).permute(0, 3, 1, 2).contiguous()  # (B, N, Ho, Wo)
        ctx.save_for_backward(cols, w2)
        ctx.policy, ctx.stats, ctx.has_bias, ctx.geom = policy, stats, bias is not None, geom
        ctx.in_shape, ctx.w_shape = x.shape, weight.shape
        return _round(y, policy.out)

    @staticmethod
    def backward(ctx, gy):  # gy (B, N, Ho, Wo)
        cols, w2 = ctx.saved_tensors
        p: GemmPolicy = ctx.policy
        b, n = gy.shape[:2]
        g = _round_errors(gy, p.grad, ctx.stats).permute(0, 2, 3, 1).reshape(-1, n)  # (B*L, N)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gcols = gemm(g, w2, p)  # (B*L, K)
            gcols = gcols.reshape(b, -1, w2.shape[1]).transpose(1, 2)  # (B, K, L)
            gx = _round(F.fold(gcols, ctx.in_shape[2:], ctx.w_shape[2:], **ctx.geom), p.out)
        if ctx.needs_input_grad[1]:
            gw = _round(gemm(g.t().contiguous(), cols, p), p.out).reshape(ctx.w_shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = _round(g.sum(0), p.out)
        return gx, gw, gb, None, None, None


def _out_size(size: int, k: int, geom: dict, i: int) -> int:
    return (size + 2 * geom["padding"][i] - geom["dilation"][i] * (k - 1) - 1) // geom["stride"][i] + 1


class _LowpMixin:
    lowp_policy: GemmPolicy
    lowp_stats: LowpStats | None

    def effdnn_precision(self) -> LayerPrecision:
        p = self.lowp_policy
        return LayerPrecision(weight_bits=p.weight.bits if p.weight else 32, act_bits=p.act.bits if p.act else 32,
                              acc_bits=p.acc.bits if p.acc else 32, label=p.label)

    def effdnn_macs(self, x: torch.Tensor, out: torch.Tensor) -> int:
        """K MACs per output element (the emulated kernel is not made of ops the cost model traces)."""
        w = self.weight  # type: ignore[attr-defined]
        return out.numel() * (w.numel() // w.shape[0])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", precision={self.lowp_policy.label}"  # type: ignore[misc]


class LowpLinear(_LowpMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        lead = x.shape[:-1]
        y = _LowpLinearFn.apply(x.reshape(-1, x.shape[-1]), self.weight, self.bias, self.lowp_policy, self.lowp_stats)
        return y.reshape(*lead, y.shape[-1])


class LowpConv2d(_LowpMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, N, Ho, Wo)
        geom = {"dilation": self.dilation, "padding": self.padding, "stride": self.stride}
        return _LowpConv2dFn.apply(x, self.weight, self.bias, geom, self.lowp_policy, self.lowp_stats)


PolicyFn = Callable[[str, nn.Module, int, int], GemmPolicy]


def gemm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Plain Linear / Conv2d layers (not already converted), in registration order."""
    return [(n, m) for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]


def convert_layers(model: nn.Module, policy_for: PolicyFn, stats: LowpStats | None = None) -> nn.Module:
    """Make every Linear / Conv2d of ``model`` (in place) an emulated layer with ``policy_for(name,
    module, index, count)``; ``index`` counts GEMM layers in registration order (first / last layers)."""
    layers = gemm_layers(model)
    if not layers:
        raise EffdnnError("precision: the model has no Linear or Conv2d layer to train in reduced precision")
    for i, (name, mod) in enumerate(layers):
        if isinstance(mod, nn.Conv2d):
            if mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                raise EffdnnError(f"precision: layer {name!r}: emulated convolution supports groups=1, zero padding "
                                  f"given as numbers (got groups={mod.groups}, padding={mod.padding!r}, {mod.padding_mode})")
            mod.__class__ = LowpConv2d
        else:
            mod.__class__ = LowpLinear
        mod.lowp_policy = policy_for(name, mod, i, len(layers))  # type: ignore[assignment]
        mod.lowp_stats = stats  # type: ignore[assignment]
    return model

