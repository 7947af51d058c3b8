"""Dynamic activation quantization: the scale is computed from each tensor at run time, no calibration.

Per token (one scale per row of the last axis, i.e. per token of a ``(batch, seq, hidden)`` activation;
the scheme of LLM.int8() / ZeroQuant / SmoothQuant's "per-token" setting) or per tensor (torch's
``quantize_dynamic``). Symmetric signed integers (Jacob et al. 2018, eq. 1 with Z = 0)::

    s_t = max_k |x_{t,k}| / qmax        q_{t,k} = clamp(round(x_{t,k} / s_t), -qmax, qmax)        x_hat = s_t q

In a spec: ``act: {bits: 8, dynamic: per_token}`` (``TensorSpec.dynamic``), per layer through
``overrides`` like every other key. The codes never saturate (the scale follows the tensor), so the
backward pass is the plain straight-through estimator.
"""
from __future__ import annotations

import torch

from dataclasses import dataclass

from ..formats import Granularity, IntFormat, IntParams
from .fake_quant import Quantizer

MIN_SCALE = 1e-12


def dynamic_scale(x: torch.Tensor, kind: str, qmax: int) -> torch.Tensor:
    """The per-token ``(..., 1)`` or per-tensor ``()`` scale of ``x`` (detached)."""
    a = x.detach().abs()
    amax = a.amax(dim=-1, keepdim=True) if kind == "per_token" else a.amax()
    return amax.float().clamp_min(MIN_SCALE * qmax) / qmax


def dynamic_codes(x: torch.Tensor, kind: str, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer codes as float, scale) of ``x`` quantized dynamically at ``bits`` bits."""
    qmax = 2 ** (bits - 1) - 1
    s = dynamic_scale(x, kind, qmax)
    return torch.clamp(torch.round(x / s), -qmax, qmax), s


@dataclass(frozen=True)
class DynamicIntFormat(IntFormat):
    """A symmetric int format whose scale is found at run time (``kind``: per_token / per_tensor)."""

    kind: str = "per_token"

    @property
    def label(self) -> str:
        return dynamic_label(self.bits, self.kind)


class DynamicQuantizer(Quantizer):
    """An activation quantizer whose scale is recomputed for every tensor (per token or per tensor)."""

    def __init__(self, bits: int, kind: str) -> None:
        fmt = DynamicIntFormat(bits=bits, signed=True, symmetric=True, narrow_range=True, kind=kind,
                               granularity=Granularity("per_channel" if kind == "per_token" else "per_tensor", -1))
        super().__init__(fmt, None, role="act", signed=True)
        self.kind = kind
        self.mode = "quantize"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        q, s = dynamic_codes(x, self.kind, int(self.fmt.bits))
        return x + (q * s - x).detach()  # straight-through: the codes never clip

    @property
    def params(self) -> IntParams | None:
        return None

    def finish_calibration(self) -> None:
        return None

    def extra_repr(self) -> str:
        return f"int{self.fmt.bits} dynamic {self.kind}"

    def storage_bits(self, numel: int) -> int:
        return 0


def dynamic_label(bits: int, kind: str) -> str:
    return f"int{bits} dynamic {kind}"


__all__ = ["DynamicIntFormat", "DynamicQuantizer", "dynamic_codes", "dynamic_label", "dynamic_scale"]
