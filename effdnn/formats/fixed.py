"""Fixed point Qm.n: a two's-complement integer with an implied binary point, value = code * 2^-n.

``int_bits`` (m) integer bits and ``frac_bits`` (n) fraction bits, plus a sign bit when ``signed``
(the TI convention: Q3.4 is 8 bits signed). Range [-2^m, 2^m - 2^-n]; rounding to nearest, ties to
even; saturating. No data-dependent parameters: the scale 2^-n is part of the format.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import EffdnnError
from .base import FormatOptions, NumberFormat
from .ste import ste


@dataclass(frozen=True)
class FixedPointFormat(NumberFormat):
    int_bits: int = 3
    frac_bits: int = 4
    signed: bool = True
    name = "fixed"

    def __post_init__(self) -> None:
        for k in ("int_bits", "frac_bits"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise EffdnnError(f"fixed format: {k} must be an integer >= 0, got {v!r}")
        if not 2 <= self.bits <= 32:
            raise EffdnnError(f"fixed format: Q{self.int_bits}.{self.frac_bits} has {self.bits} bits; must be 2..32")

    @property
    def bits(self) -> int:  # type: ignore[override]
        return self.int_bits + self.frac_bits + (1 if self.signed else 0)

    @property
    def step(self) -> float:
        return 2.0 ** -self.frac_bits

    @property
    def qmin(self) -> int:
        return -(2 ** (self.int_bits + self.frac_bits)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.int_bits + self.frac_bits) - 1

    def compute_params(self, x: torch.Tensor) -> None:
        return None

    def params_from_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        return None

    def quantize(self, x: torch.Tensor, params: Any = None) -> torch.Tensor:
        scaled = x.double() * 2.0**self.frac_bits  # exact: a power-of-two scaling
        return torch.clamp(torch.round(scaled), self.qmin, self.qmax).to(torch.int64)

    def dequantize(self, codes: torch.Tensor, params: Any = None) -> torch.Tensor:
        return (codes.double() * self.step).float()

    def fake_quantize(self, x: torch.Tensor, params: Any = None) -> torch.Tensor:
        return ste(x, self.dequantize(self.quantize(x)).to(x.dtype))

    @property
    def label(self) -> str:
        return f"{'' if self.signed else 'u'}Q{self.int_bits}.{self.frac_bits}"


class FixedOptions(FormatOptions):
    """``format: fixed``: Qm.n with ``int_bits`` m (default 0) and ``frac_bits`` n (default: what the
    width leaves after m and the sign bit)."""

    int_bits: int | None = None
    frac_bits: int | None = None

    def build(self, bits: int, signed: bool, granularity: Any) -> FixedPointFormat:
        m = self.int_bits if self.int_bits is not None else 0
        n = self.frac_bits if self.frac_bits is not None else bits - m - (1 if signed else 0)
        return FixedPointFormat(int_bits=m, frac_bits=n, signed=signed)
