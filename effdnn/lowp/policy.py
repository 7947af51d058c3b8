"""What the emulated GEMM layers share: the operand formats of a layer (:class:`GemmPolicy`), the error
counters (:class:`LowpStats`), operand rounding and the GEMM itself (float32, or accumulated one rounded
addition at a time by lowp/accumulate.py), and the mixin that reports a layer's precision and MACs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..cost.precision import LayerPrecision
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


def round_to(x: torch.Tensor, fmt: FloatFormat | None) -> torch.Tensor:
    return x if fmt is None else fmt.round(x, rounding="nearest")


def round_errors(g: torch.Tensor, fmt: FloatFormat | None, stats: LowpStats | None) -> torch.Tensor:
    q = round_to(g, fmt)
    if stats is not None and fmt is not None:
        nz = g != 0
        stats.grad_elements += g.numel()
        stats.grad_nonzero += int(nz.sum())
        stats.grad_underflow += int((nz & (q == 0)).sum())
        stats.grad_overflow += int((torch.isfinite(g) & ~torch.isfinite(q)).sum())
    return q


def fresh(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a tensor of its own (not a view): a custom Function's output may then be modified in
    place (``nn.ReLU(inplace=True)`` after an emulated layer)."""
    return t.clone() if t._base is not None else t


def gemm(a: torch.Tensor, b: torch.Tensor, policy: GemmPolicy) -> torch.Tensor:
    """(M, K) @ (K, N), or per group (G, M, K) @ (G, K, N), accumulated as the policy says."""
    if policy.acc is None:
        return a @ b
    return lowp_matmul(a, b, policy.acc, policy.prod, policy.chunk)  # its MACs: the layer's effdnn_macs


def exact_sum(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum in float64 (exact for the few low-precision terms of a bias gradient or a window overlap, so
    independent of the summation order), rounded once to float32."""
    return t.double().sum(dim).float()


class LowpMixin:
    lowp_policy: GemmPolicy
    lowp_stats: LowpStats | None
    lowp_calls: int = 0  # emulated GEMM calls (forward): a layer the model never ran through the emulation stays 0

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
