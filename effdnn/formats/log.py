"""Logarithmic (power-of-two) quantization: Miyashita et al. 2016, "Convolutional Neural Networks using
Logarithmic Data Representation", eq. 3:

    LogQuant(x) = 0 if x = 0, else sign(x) * 2^Clip(round(log2 |x|), e_max - M + 2, e_max)

(``rounding="linear"`` rounds to the nearest power of two in value instead, the midpoint 1.5 * 2^e of
INQ, Zhou et al. 2017, which lowers the squared error), with M magnitude codes (2^(bits-1) with a sign bit, 2^bits without): code 0 is zero and codes
1..M-1 are the exponents e_max-M+2 .. e_max. ``e_max`` (the full-scale range FSR) is chosen from the
data per block: e_max = round(log2 max|x|). Exponents below the smallest code underflow to zero.
Codes are sign-magnitude integers ``sign(x) * m`` (monotone in x).

round(log2 |x|) is computed exactly from the float's exponent and mantissa (torch.frexp): |x| = f 2^e
with f in [0.5, 1) rounds up to 2^e when f >= sqrt(1/2) (the geometric midpoint), else down to 2^(e-1).
Storage: ``bits`` per code + one int8 e_max per block.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..errors import EffdnnError
from .base import FormatOptions, NumberFormat
from .granularity import PER_TENSOR, Granularity
from .ste import ste

HALF_OCTAVE = torch.tensor(math.sqrt(0.5), dtype=torch.float32).item()  # geometric midpoint of [0.5, 1)


def round_log2(a: torch.Tensor, linear: bool = False) -> torch.Tensor:
    """round(log2(a)) for a > 0 (float result; -inf for a = 0), without evaluating a logarithm.
    ``linear``: the nearest power of two in value instead (midpoint 1.5 * 2^e, as INQ, Zhou et al. 2017)."""
    f, e = torch.frexp(a.float())  # a = f * 2^e, f in [0.5, 1)
    r = torch.where(f >= (0.75 if linear else HALF_OCTAVE), e, e - 1).float()
    return torch.where(a > 0, r, torch.full_like(r, float("-inf")))


@dataclass
class LogParams:
    e_max: torch.Tensor  # (G,) float32 holding integers


@dataclass(frozen=True)
class LogFormat(NumberFormat):
    bits: int = 4  # type: ignore[assignment]
    signed: bool = True
    granularity: Granularity = field(default=PER_TENSOR)
    rounding: str = "log"  # log: round(log2|x|) (Miyashita eq. 3); linear: nearest power of two in value
    name = "log"

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise EffdnnError(f"log format: bits must be an integer in 2..8, got {self.bits!r}")
        if self.rounding not in ("log", "linear"):
            raise EffdnnError(f"log format: rounding must be log or linear, got {self.rounding!r}")
        if isinstance(self.granularity, str):
            object.__setattr__(self, "granularity", Granularity.of(self.granularity))

    @property
    def levels(self) -> int:
        """M: magnitude codes, zero included."""
        return 2 ** (self.bits - 1) if self.signed else 2**self.bits

    def params_from_range(self, lo: torch.Tensor, hi: torch.Tensor) -> LogParams:
        amax = torch.maximum(lo.abs(), hi.abs()).float()
        e = round_log2(amax)
        return LogParams(torch.where(torch.isfinite(e), e, torch.zeros_like(e)).clamp(-126, 127))

    def compute_params(self, x: torch.Tensor) -> LogParams:
        b = self.granularity.to_blocks(x.detach())
        return self.params_from_range(b.amin(1), b.amax(1))

    def quantize(self, x: torch.Tensor, params: LogParams | None = None) -> torch.Tensor:
        p = params or self.compute_params(x)
        b = self.granularity.to_blocks(x.detach())  # (G, N)
        m = round_log2(b.abs(), self.rounding == "linear") - p.e_max.reshape(-1, 1) + (self.levels - 1)  # magnitude code before clip
        m = torch.where(m >= 1, m.clamp_max(self.levels - 1), torch.zeros_like(m))  # underflow -> 0
        sign = torch.sign(b) if self.signed else (b > 0).to(b.dtype)
        return self.granularity.from_blocks((sign * m).to(torch.int32), x.shape)

    def dequantize(self, codes: torch.Tensor, params: LogParams | None = None) -> torch.Tensor:
        if params is None:
            raise EffdnnError("log format: dequantize needs the params the codes were made with")
        b = self.granularity.to_blocks(codes).float()
        e = params.e_max.reshape(-1, 1) - (self.levels - 1) + b.abs()
        out = torch.where(b != 0, torch.sign(b) * torch.exp2(e), torch.zeros_like(b))
        return self.granularity.from_blocks(out, codes.shape)

    def fake_quantize(self, x: torch.Tensor, params: LogParams | None = None) -> torch.Tensor:
        p = params or self.compute_params(x)
        return ste(x, self.dequantize(self.quantize(x, p), p).to(x.dtype))

    def storage_bits(self, numel: int, params: LogParams | None = None) -> int:
        g = 1 if params is None else int(params.e_max.numel())
        return int(numel * self.bits + g * 8)

    @property
    def label(self) -> str:
        return f"log{self.bits} {self.granularity}"


class LogOptions(FormatOptions):
    """``format: log``: ``log_rounding``: round in the log domain (Miyashita et al.) or in value."""

    log_rounding: Literal["log", "linear"] = "log"

    def build(self, bits: int, signed: bool, granularity: Granularity) -> LogFormat:
        return LogFormat(bits=bits, signed=signed, granularity=granularity, rounding=self.log_rounding)
