"""Arbitrary floating-point formats eXmY: fp32, fp16, bf16, fp8 (e4m3 / e5m2) and any (exponent, mantissa).

A value of a format is ``(-1)^s * 2^(E - bias) * (1 + f / 2^m)`` for exponent fields ``E >= 1``
and ``(-1)^s * 2^(1 - bias) * (f / 2^m)`` for ``E = 0`` (subnormals; IEEE 754-2019 section 3.4).
The top exponent field is, by ``specials``:

* ``"ieee"``: reserved for inf (f = 0) and NaN (IEEE 754; fp32, fp16, bf16, fp8 e5m2);
* ``"fn"``: finite values, except f = all ones, which is NaN (the "FN" fp8 of Micikevicius et al.
  2022, "FP8 Formats for Deep Learning": e4m3fn, largest value 448; torch.float8_e4m3fn);
* ``"none"``: finite values only (every code is a number; overflow always saturates).

Rounding is to nearest, ties to even (IEEE default) or stochastic (Gupta et al. 2015, "Deep learning
with limited numerical precision", eq. 3: round up with probability equal to the distance from the
lower neighbour, in units of the gap, so E[round(x)] = x). A finite value beyond the largest one
becomes inf (ieee), NaN (fn) or, with ``saturate=True``, the largest value (torch's cast to
float8_e4m3fn saturates, so the e4m3 preset does; with saturation an fn or none format maps +-inf to
the largest value too, an ieee format keeps inf).

Rounded values are held in float32 (the carrier): ``quantize`` returns them, ``dequantize`` is the
identity. The presets are bit-exact with torch's own casts (tests/formats/test_float.py).
"""
from __future__ import annotations

import dataclasses
import math
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import torch

from ..errors import EffdnnError
from .base import FormatOptions, NumberFormat
from .float_bits import INF_BITS, NAN_BITS, CodePlan, RoundingPlan, encode_tensor, round_tensor

Specials = Literal["ieee", "fn", "none"]
Rounding = Literal["nearest", "stochastic"]


def _f32_bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


@dataclass(frozen=True)
class FloatFormat(NumberFormat):
    """A binary floating-point format with ``exp_bits`` exponent and ``man_bits`` mantissa bits.

    ``bias`` defaults to ``2^(exp_bits - 1) - 1``. ``subnormals=False`` flushes results below the
    smallest normal to signed zero (after rounding). Formats must fit in float32 (the carrier).
    """

    exp_bits: int = 8
    man_bits: int = 23
    bias: int | None = None
    subnormals: bool = True
    specials: Specials = "ieee"
    saturate: bool = False
    rounding: Rounding = "nearest"
    label: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.exp_bits, int) or not 1 <= self.exp_bits <= 8:
            raise EffdnnError(f"float format: exp_bits must be an integer in 1..8, got {self.exp_bits!r}")
        if not isinstance(self.man_bits, int) or not 0 <= self.man_bits <= 23:
            raise EffdnnError(f"float format: man_bits must be an integer in 0..23, got {self.man_bits!r}")
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exp_bits - 1) - 1)
        if self.specials not in ("ieee", "fn", "none"):
            raise EffdnnError(f"float format: specials must be ieee, fn or none, got {self.specials!r}")
        if self.rounding not in ("nearest", "stochastic"):
            raise EffdnnError(f"float format: rounding must be nearest or stochastic, got {self.rounding!r}")
        if self.specials == "ieee" and self.exp_bits == 1:
            raise EffdnnError("float format: an ieee format needs at least 2 exponent bits (one is reserved for inf/NaN)")
        if self.specials == "fn" and self.exp_bits + self.man_bits < 2:
            raise EffdnnError("float format: an fn format needs at least 2 exponent+mantissa bits")
        if self.emin < -126 or self.emax > 127:
            raise EffdnnError(f"float format e{self.exp_bits}m{self.man_bits} bias {self.bias}: exponent range "
                              f"[{self.emin}, {self.emax}] does not fit in float32's [-126, 127]")

    # -- the format's numbers -------------------------------------------------------------------------
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.label or f"e{self.exp_bits}m{self.man_bits}"

    @property
    def bits(self) -> float:
        return 1 + self.exp_bits + self.man_bits

    @property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal number."""
        return 1 - int(self.bias)  # type: ignore[arg-type]

    @property
    def emax(self) -> int:
        """Unbiased exponent of the largest finite number."""
        top = 2**self.exp_bits - 1
        return (top - 1 if self.specials == "ieee" else top) - int(self.bias)  # type: ignore[arg-type]

    @property
    def max_value(self) -> float:
        m = self.man_bits
        top_frac = 2**m - 1
        if self.specials == "fn":  # all-ones mantissa in the top binade is NaN
            top_frac -= 1
            if top_frac < 0:  # m = 0: the whole top binade is NaN, the largest value is one binade down
                return 2.0 ** (self.emax - 1)
        return (1 + top_frac / 2**m) * 2.0**self.emax

    @property
    def min_normal(self) -> float:
        return 2.0**self.emin

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.man_bits) if self.subnormals else self.min_normal

    @property
    def eps(self) -> float:
        """Gap between 1 and the next larger number (unit roundoff is eps / 2)."""
        return 2.0**-self.man_bits

    @property
    def has_inf(self) -> bool:
        return self.specials == "ieee"

    def plan(self, rounding: Rounding | None = None) -> RoundingPlan:
        max_bits = _f32_bits(self.max_value)
        if self.saturate or self.specials == "none":
            overflow, inf = max_bits, (INF_BITS if self.specials == "ieee" else max_bits)
        elif self.specials == "ieee":
            overflow, inf = INF_BITS, INF_BITS
        else:
            overflow, inf = NAN_BITS, NAN_BITS
        return RoundingPlan(self.man_bits, self.emin, max_bits, overflow, inf, self.subnormals,
                            (rounding or self.rounding) == "stochastic")

    def with_rounding(self, rounding: Rounding) -> "FloatFormat":
        return dataclasses.replace(self, rounding=rounding)

    # -- bit patterns (sign | exponent | mantissa, as IEEE 754 and torch's float8 dtypes lay them out) --------
    @property
    def code_dtype(self) -> torch.dtype:
        """uint8 for formats of at most 8 bits (one byte per value), int16 (the same 16 bits) up to 16."""
        return torch.uint8 if self.bits <= 8 else torch.int16

    def code_plan(self, rounding: Rounding | None = None) -> CodePlan:
        e, m = self.exp_bits, self.man_bits
        # NaN: all ones (fn's only NaN; a quiet NaN of an ieee format); inf: top exponent, zero mantissa
        return CodePlan(self.plan(rounding), e, int(self.bias), ((1 << e) - 1) << m, (1 << (e + m)) - 1)  # type: ignore[arg-type]

    def encode(self, x: torch.Tensor, rounding: Rounding | None = None, seed: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` rounded to this format, as its bit patterns in ``code_dtype`` (1 byte per value for 8-bit
        formats: e5m2 / e4m3 codes equal torch's float8 bits). Same rounding as ``round``, fused into one
        kernel that writes the narrow codes (a quarter of the float32 carrier's memory traffic)."""
        if self.bits > 16:
            raise EffdnnError(f"float format {self.name}: encode needs at most 16 bits, the format has {self.bits:g}")
        if not torch.is_floating_point(x):
            raise EffdnnError(f"float format {self.name}: expected a floating-point tensor, got {x.dtype}")
        if self.specials == "none" and bool(torch.isnan(x).any()):
            raise EffdnnError(f"float format {self.name}: NaN has no code in a format without specials")
        return encode_tensor(x.to(torch.float32), self.code_plan(rounding), self.code_dtype, seed)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """float32 values of bit patterns made by ``encode`` (a table lookup over the 2^bits codes)."""
        table = _code_table(self).to(codes.device)
        return table[codes.to(torch.int64) & ((1 << int(self.bits)) - 1)]

    # -- NumberFormat ---------------------------------------------------------------------------------
    def compute_params(self, x: torch.Tensor) -> Any:
        return None  # a float format needs no data-dependent parameters

    def round(self, x: torch.Tensor, rounding: Rounding | None = None, seed: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` rounded to this format (same dtype as ``x``; computed in float32).

        ``rounding`` overrides the format's default; ``seed`` (an int64 tensor of one element) fixes
        the stochastic draws, else one is drawn from torch's global generator."""
        if not torch.is_floating_point(x):
            raise EffdnnError(f"float format {self.name}: expected a floating-point tensor, got {x.dtype}")
        if self.exp_bits == 8 and self.man_bits == 23 and self.bias == 127 and self.specials == "ieee" and self.subnormals:
            return x.to(torch.float32).to(x.dtype) if x.dtype == torch.float64 else x.clone()
        y = round_tensor(x.to(torch.float32), self.plan(rounding), seed)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def quantize(self, x: torch.Tensor, params: Any = None) -> torch.Tensor:
        return self.round(x)

    def dequantize(self, codes: torch.Tensor, params: Any = None) -> torch.Tensor:
        return codes

    # -- names ----------------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "FloatFormat":
        """A preset (fp32, fp16, bf16, fp8_e4m3, fp8_e5m2, fp16_169, ...) or ``eXmY`` (ieee, bias 2^(X-1)-1)."""
        key = name.lower().replace("-", "_")
        if key in PRESETS:
            return dataclasses.replace(PRESETS[key], **overrides) if overrides else PRESETS[key]
        match = re.fullmatch(r"e(\d)m(\d+)", key)
        if match:
            return cls(int(match.group(1)), int(match.group(2)), **overrides)
        raise EffdnnError(f"unknown float format {name!r} (known: {', '.join(sorted(PRESETS))}, or eXmY such as e5m2)")


@lru_cache(maxsize=64)
def _code_table(fmt: FloatFormat) -> torch.Tensor:
    """float32 value of every code of ``fmt`` (at most 16 bits), from its fields (module docstring)."""
    e, m, bias = fmt.exp_bits, fmt.man_bits, int(fmt.bias)  # type: ignore[arg-type]
    codes = torch.arange(1 << (1 + e + m), dtype=torch.int64)
    f = (codes & ((1 << m) - 1)).double()
    field = (codes >> m) & ((1 << e) - 1)
    normal = (1 + f / 2**m) * torch.exp2((field - bias).double())
    sub = f / 2**m * 2.0**fmt.emin
    v = torch.where(field == 0, sub, normal)
    top = field == (1 << e) - 1
    if fmt.specials == "ieee":
        v = torch.where(top, torch.where(f == 0, math.inf, math.nan), v)
    elif fmt.specials == "fn":
        v = torch.where(top & (f == 2**m - 1), math.nan, v)
    v = torch.where((codes >> (e + m)) == 1, -v, v)
    return v.to(torch.float32)


FP32 = FloatFormat(8, 23, label="fp32")
FP16 = FloatFormat(5, 10, label="fp16")
BF16 = FloatFormat(8, 7, label="bf16")
# torch.float8_e4m3fn: no inf, max 448; torch's cast saturates (finite overflow and +-inf -> +-448)
FP8_E4M3 = FloatFormat(4, 3, specials="fn", saturate=True, label="fp8_e4m3")
FP8_E5M2 = FloatFormat(5, 2, label="fp8_e5m2")  # torch.float8_e5m2: IEEE-like, max 57344
# Wang et al. 2018 (FP8 training): FP8 (1,5,2) operands, FP16 (1,6,9) accumulation and updates.
FP8_152 = dataclasses.replace(FP8_E5M2, label="fp8_152")
FP16_169 = FloatFormat(6, 9, label="fp16_169")

PRESETS: dict[str, FloatFormat] = {
    "fp32": FP32, "fp16": FP16, "bf16": BF16, "fp8_e4m3": FP8_E4M3, "e4m3fn": FP8_E4M3, "fp8_e4m3fn": FP8_E4M3,
    "fp8_e5m2": FP8_E5M2, "fp8_152": FP8_152, "fp16_169": FP16_169,
}

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16, "bf16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2,
}


class FloatOptions(FormatOptions):
    """``format: float``: a ``preset`` (fp32 | fp16 | bf16 | fp8_e4m3 | fp8_e5m2 | eXmY), or ``exp_bits`` +
    ``man_bits``, or the width alone (8: e4m3, 16: fp16, 32: fp32); ``rounding`` nearest or stochastic."""

    preset: str | None = None
    exp_bits: int | None = None
    man_bits: int | None = None
    rounding: Rounding = "nearest"

    def build(self, bits: int, signed: bool, granularity: Any) -> FloatFormat:
        if self.preset is not None:
            return FloatFormat.from_name(self.preset, rounding=self.rounding)
        if self.exp_bits is not None and self.man_bits is not None:
            return FloatFormat(self.exp_bits, self.man_bits, rounding=self.rounding)
        if (self.exp_bits is None) != (self.man_bits is None):
            raise EffdnnError("float format: give exp_bits and man_bits together")
        by_width = {8: "fp8_e4m3", 16: "fp16", 32: "fp32"}
        if bits not in by_width:
            raise EffdnnError(f"float format: give preset or exp_bits + man_bits for {bits} bits")
        return FloatFormat.from_name(by_width[bits], rounding=self.rounding)
