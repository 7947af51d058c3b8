"""Slow, obviously-correct reference for FloatFormat rounding: exact rational arithmetic on scalars.

Used by the tests to check the bit-manipulation kernel (effdnn/formats/float_bits.py) on formats
torch has no cast for. ``round_reference(x, fmt)`` rounds one Python float (holding a float32 value)
to nearest-even; ``stochastic_reference(x, fmt)`` gives the two neighbours and the probability of
rounding up (Gupta et al. 2015, eq. 3), from which any draw follows.
"""
from __future__ import annotations

import math
from fractions import Fraction

from .float import FloatFormat


def _overflow(sign: float, fmt: FloatFormat, is_inf_input: bool) -> float:
    if is_inf_input and fmt.specials == "ieee":
        return sign * math.inf
    if fmt.saturate or fmt.specials == "none":
        return sign * fmt.max_value
    return sign * math.inf if fmt.specials == "ieee" else math.nan


def _neighbours(ax: float, fmt: FloatFormat) -> tuple[Fraction, Fraction, Fraction]:
    """(lower, upper, fraction of the way from lower to upper) on the format's grid, ignoring range."""
    e = math.frexp(ax)[1] - 1  # ax in [2^e, 2^(e+1))
    q = Fraction(2) ** (max(e, fmt.emin) - fmt.man_bits)  # spacing of the grid around ax
    n = Fraction(ax) / q
    lo = math.floor(n)
    return lo * q, (lo + 1) * q, n - lo


def _code_is_odd(v: Fraction, q: Fraction, fmt: FloatFormat) -> bool:
    """Is the last bit of ``v``'s encoding 1? (the mantissa's last bit; for m = 0 the exponent's)"""
    if fmt.man_bits == 0 and v >= Fraction(2) ** fmt.emin:
        return (math.frexp(float(v))[1] - 1 + int(fmt.bias)) % 2 == 1  # type: ignore[arg-type]
    return (v / q) % 2 == 1


def _finish(sign: float, r: Fraction, fmt: FloatFormat) -> float:
    if not fmt.subnormals and r < Fraction(2) ** fmt.emin:
        r = Fraction(0)
    if r > Fraction(fmt.max_value):
        return _overflow(sign, fmt, False)
    return math.copysign(float(r), sign)


def round_reference(x: float, fmt: FloatFormat) -> float:
    """``x`` rounded to nearest, ties to even, in ``fmt`` (with its overflow and special-value rules)."""
    if math.isnan(x):
        return math.nan
    sign = math.copysign(1.0, x)
    if math.isinf(x):
        return _overflow(sign, fmt, True)
    ax = abs(x)
    if ax == 0:
        return math.copysign(0.0, sign)
    lo, hi, frac = _neighbours(ax, fmt)
    up = frac > Fraction(1, 2) or (frac == Fraction(1, 2) and _code_is_odd(lo, hi - lo, fmt))
    return _finish(sign, hi if up else lo, fmt)


def stochastic_reference(x: float, fmt: FloatFormat) -> tuple[float, float, float]:
    """(round-down result, round-up result, probability of rounding up) for a finite ``x``."""
    sign = math.copysign(1.0, x)
    ax = abs(x)
    if ax == 0:
        z = math.copysign(0.0, sign)
        return z, z, 0.0
    lo, hi, frac = _neighbours(ax, fmt)
    return _finish(sign, lo, fmt), _finish(sign, hi, fmt), float(frac)


def all_values(fmt: FloatFormat) -> list[float]:
    """Every finite non-negative value of ``fmt``, ascending (from its exponent/mantissa fields)."""
    out = set()
    m = fmt.man_bits
    for e_field in range(2**fmt.exp_bits):
        for f in range(2**m):
            if e_field == 0:
                v = (Fraction(f, 2**m) * Fraction(2) ** fmt.emin) if fmt.subnormals else Fraction(0)
            else:
                v = (1 + Fraction(f, 2**m)) * Fraction(2) ** (e_field - int(fmt.bias))  # type: ignore[arg-type]
            if v <= Fraction(fmt.max_value):
                out.add(v)
    return [float(v) for v in sorted(out)]
