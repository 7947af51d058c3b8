"""Rounding float32 tensors to an eXmY float format by integer manipulation of their bits.

The carrier is float32: a value of the target format is held as the float32 with the same value, so
the formats must fit inside float32 (exponent <= 8 bits, mantissa <= 23 bits, smallest normal >= 2^-126).

Algorithm (``round_bits``), per element, on ``a`` = the float32 bits of ``|x|`` as an int32:

* target-normal range (``|x| >= 2^emin``): the target keeps the top ``m`` of float32's 23 mantissa
  bits, so rounding drops the low ``s = 23 - m`` bits of ``a``: ``(a + r) & ~(2^s - 1)`` where
  ``r = 2^(s-1) - 1 + lsb`` (round to nearest, ties to even: ``lsb`` is bit ``s`` of ``a``) or
  ``r`` uniform in ``[0, 2^s)`` (stochastic rounding). A carry out of the mantissa increments the
  exponent field, which is exactly the next binade. For formats whose smallest normal is float32's
  (8 exponent bits, bias 127), this also covers subnormals, which float32 encodes linearly too.
* target-subnormal range (``|x| < 2^emin``): the quantum is fixed, ``q = 2^(emin - m)``. With the
  significand ``sig`` (implicit bit included) and ``|x| = sig * 2^(E - 150)``, the multiple of ``q``
  is ``k = (sig + r) >> sh`` with ``sh = (emin - m) - (E - 150)`` and ``r`` as above for ``sh`` bits;
  the result is ``k * q`` (exact: ``k <= 2^m`` and ``q`` is a power of two inside float32's range).
  Round to nearest even takes a shortcut here: float32 addition itself rounds ``|x| + C`` with
  ``C = 2^(emin - m + 23)`` to a multiple of ``q`` (the spacing of ``[C, 2C)``), ties to even, and
  subtracting ``C`` again is exact (two float ops instead of a dozen integer ones).
* then overflow (rounded magnitude above the format's largest finite value), infinities and NaNs
  are mapped by the format's rules (inf, NaN or saturation to the largest value), the sign is put back.

Every step is an elementwise integer op, so the function vectorises in eager torch and fuses into
one loop under ``torch.compile`` (``compiled_round``; ``encode_bits`` / ``compiled_encode`` also turn
the result into the format's bit patterns, one byte per value for 8-bit formats). Stochastic rounding draws its random bits
from a counter-based hash (``hash_uniform32``: Wellons' "lowbias32" applied to the element index
mixed with a per-call seed), so eager and compiled runs give identical results for the same seed.
It uses 32 random bits per element: exact probabilities for the ``s <= 23`` dropped bits of the
normal range; in the subnormal range, for shifts past 32 bits, probabilities are quantised to 2^-32.
"""
from __future__ import annotations

import itertools
import os
import types
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch

INT32_MIN = -0x80000000
ABS_MASK = 0x7FFFFFFF
INF_BITS = 0x7F800000
NAN_BITS = 0x7FC00000
M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class RoundingPlan:
    """Static description of a format that the rounding kernel needs (all plain ints)."""

    man_bits: int  # m
    emin: int  # unbiased exponent of the smallest normal
    max_bits: int  # float32 bits of the largest finite value
    overflow_bits: int  # what a finite value beyond max becomes (inf, NaN or max)
    inf_bits: int  # what +-inf becomes
    subnormals: bool  # False: results below 2^emin flush to (signed) zero
    stochastic: bool


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32): a constant of 2^31 or more is replaced by c - 2^32
    (the same residue), so |x * c| < 2^63 and the int64 product never overflows (one multiply)."""
    return (x * (c - (1 << 32) if c >= 1 << 31 else c)) & M32


def hash_uniform32(index: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Uniform pseudo-random 32-bit integers (int64 in [0, 2^32)) from element indices and a seed.

    Counter-based (no state, any order, same in eager and compiled code): two rounds of the
    lowbias32 integer hash (C. Wellons, "Prospecting for hash functions", 2018) of index ^ hash(seed).
    """
    s = seed & M32
    s = s ^ (s >> 16)
    s = _mul32(s, 0x21F0AAAD)
    s = s ^ (s >> 15)
    x = (index & M32) ^ s
    for _ in range(2):
        x = x ^ (x >> 16)
        x = _mul32(x, 0x7FEB352D)
        x = x ^ (x >> 15)
        x = _mul32(x, 0x846CA68B)
        x = x ^ (x >> 16)
    return x


def round_bits(x: torch.Tensor, plan: RoundingPlan, seed: torch.Tensor | None = None) -> torch.Tensor:
    """Round a contiguous float32 tensor to the format described by ``plan`` (see the module docstring)."""
    b = x.view(torch.int32)  # same shape as x
    a = b & ABS_MASK
    sign = b & INT32_MIN
    ac = torch.clamp(a, max=INF_BITS)  # NaN payloads never carry into the sign bit
    m = plan.man_bits
    s = 23 - m
    if plan.stochastic:
        assert seed is not None
        idx = torch.arange(x.numel(), device=x.device, dtype=torch.int64).view(x.shape)
        r32 = hash_uniform32(idx, seed)  # int64 in [0, 2^32), one per element
        rn = (r32 >> (32 - s)).to(torch.int32) if s > 0 else torch.zeros_like(ac)
    else:
        rn = ((ac >> s) & 1) + ((1 << (s - 1)) - 1) if s > 0 else torch.zeros_like(ac)
    mag = (ac + rn) & -(1 << s)  # target-normal range (-(2^s) = ~(2^s - 1): clears the low s bits)
    if plan.emin > -126:  # target subnormals are float32 normals: fixed quantum q = 2^(emin - m)
        if plan.stochastic:  # int64: shifts past 32 bits keep 32 random bits of probability
            e_field = ac >> 23
            sig = torch.where(e_field > 0, (ac & 0x7FFFFF) | 0x800000, ac)  # < 2^24
            sh = (plan.emin - m + 150) - torch.clamp(e_field, min=1)  # >= s + 1 here
            sig, sh = sig.to(torch.int64), torch.clamp(sh, min=1, max=62).to(torch.int64)
            rs = torch.where(sh >= 32, r32 << torch.clamp(sh - 32, min=0), r32 >> torch.clamp(32 - sh, min=0))
            k = (sig + rs) >> sh  # multiples of q, 0 .. 2^m
            sub = (k.to(torch.float32) * (2.0 ** (plan.emin - m))).view(torch.int32)
        else:  # float32's own round-to-nearest-even: |x| + C lies in [C, 2C), whose spacing is q
            c = 2.0 ** (plan.emin - m + 23)
            sub = ((ac.view(torch.float32) + c) - c).view(torch.int32)
        min_normal = (plan.emin + 127) << 23
        mag = torch.where(ac < min_normal, sub, mag)
        if not plan.subnormals:
            mag = torch.where(mag < min_normal, torch.zeros_like(mag), mag)
    elif not plan.subnormals:
        mag = torch.where(mag < (1 << 23), torch.zeros_like(mag), mag)
    mag = torch.where(mag > plan.max_bits, torch.full_like(mag, plan.overflow_bits), mag)
    mag = torch.where(a == INF_BITS, torch.full_like(mag, plan.inf_bits), mag)
    mag = torch.where(a > INF_BITS, torch.full_like(mag, NAN_BITS), mag)
    return (mag | sign).view(torch.float32)


@dataclass(frozen=True)
class CodePlan:
    """What ``encode_bits`` adds to a rounding plan: the target's bit layout (sign | exponent | mantissa)."""

    rounding: RoundingPlan
    exp_bits: int
    bias: int
    inf_code: int  # magnitude code of inf (ieee formats; else unused)
    nan_code: int  # magnitude code of NaN


def encode_bits(x: torch.Tensor, plan: CodePlan, seed: torch.Tensor | None = None) -> torch.Tensor:
    """The codes (int32, one per element, ``1 + exp_bits + man_bits`` bits used) of ``x`` rounded to the
    format: from the rounded float32 bits ``mag``, a normal value's code is ``(mag >> s) - ((127 - bias) << m)``
    (the float32 exponent field rebased, the top ``m`` mantissa bits kept); a subnormal's is its multiple
    ``k`` of the quantum ``2^(emin - m)`` (``k = 2^m`` is the smallest normal's code, so the two agree);
    inf and NaN get the format's codes; the sign goes to the top bit."""
    r = plan.rounding
    y = round_bits(x, r, seed).view(torch.int32)
    mag = y & ABS_MASK
    m, s = r.man_bits, 23 - r.man_bits
    code = (mag >> s) - ((127 - plan.bias) << m)
    if r.emin > -126:  # target subnormals (float32 normals): exact multiples of the quantum
        sub = (mag.view(torch.float32) * (2.0 ** (m - r.emin))).to(torch.int32)
        code = torch.where(mag < ((r.emin + 127) << 23), sub, code)
    code = torch.where(mag == INF_BITS, torch.full_like(code, plan.inf_code), code)
    code = torch.where(mag > INF_BITS, torch.full_like(code, plan.nan_code), code)
    return code | ((y < 0).to(torch.int32) << (plan.exp_bits + m))


# -- dispatch: one torch.compile'd kernel per plan, eager fallback ---------------------------------------
_compile_state = {"enabled": os.environ.get("EFFDNN_COMPILE", "1") != "0", "failed": False}
COMPILE_MIN_NUMEL = 1 << 15
_kernel_ids = itertools.count()  # smaller tensors run eagerly: not worth a compile (seconds) or a guard check


def compile_kernel(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """torch.compile with the plan's integers as constants and the tensors' sizes dynamic.

    Every rounding kernel closes over its plan. ``dynamic=True`` would turn those integers into
    symbols too (shift amounts, exponent bounds, powers of two computed at run time), which made the
    fused loop ~6x slower than with them folded in; so the tensors' dimensions are marked dynamic one
    by one instead (one compiled entry per plan and rank, not per shape). Dynamo's limit of 8
    entries per function is raised: beyond it dynamo silently runs the function eagerly."""
    import torch._dynamo as dynamo
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 1024)
    # Dynamo caches by code object: kernels made by one factory share theirs, and a second plan's
    # integers would then be recompiled as symbols (automatic dynamic). A code object per kernel keeps
    # each plan's integers constant (on torch 2.11 the symbolic shift also failed to compile on CUDA).
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{next(_kernel_ids)}")
    fn = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    compiled = torch.compile(fn, dynamic=None)

    def call(*tensors: torch.Tensor | None) -> torch.Tensor:
        for t in tensors:
            if t is not None and t.dim():
                dynamo.maybe_mark_dynamic(t, list(range(t.dim())))
        return compiled(*tensors)

    return call


def set_compile(enabled: bool) -> None:
    """Use torch.compile'd rounding kernels (default, unless EFFDNN_COMPILE=0) or eager torch ops."""
    _compile_state["enabled"] = bool(enabled)


def disable_compile(err: Exception) -> None:
    """After a failed torch.compile: eager kernels from now on, with one warning."""
    _compile_state["failed"] = True
    warnings.warn(f"effdnn: torch.compile of a rounding kernel failed ({type(err).__name__}: {err}); using eager "
                  "torch ops", RuntimeWarning, stacklevel=3)


def compile_enabled(numel: int | None = None) -> bool:
    """Whether to use the compiled kernels (for a tensor of ``numel`` elements, when given)."""
    big = numel is None or numel >= COMPILE_MIN_NUMEL
    return big and _compile_state["enabled"] and not _compile_state["failed"]


@lru_cache(maxsize=None)
def compiled_round(plan: RoundingPlan) -> Callable[..., torch.Tensor]:
    """``round_bits`` for this plan, fused by torch.compile (dynamic sizes: compiled once per plan)."""

    def fn(x: torch.Tensor, seed: torch.Tensor | None) -> torch.Tensor:
        return round_bits(x, plan, seed)

    return compile_kernel(fn)


@lru_cache(maxsize=None)
def compiled_encode(plan: CodePlan, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    """``encode_bits`` cast to ``dtype`` in the same fused loop (a 1-byte output for 8-bit formats)."""

    def fn(x: torch.Tensor, seed: torch.Tensor | None) -> torch.Tensor:
        return _narrow(encode_bits(x, plan, seed), dtype)

    return compile_kernel(fn)


def _narrow(code: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int32 codes < 2^16 as uint8 (< 2^8) or as int16 holding the same 16 bits."""
    if dtype == torch.int16:
        code = code - ((code >> 15) << 16)  # 0x8000..0xFFFF -> negative: the same 16 bits, no overflow
    return code.to(dtype)


def _run(compiled: Callable[[], Callable[..., torch.Tensor]], eager: Callable[..., torch.Tensor],
         x: torch.Tensor, stochastic: bool, seed: torch.Tensor | None) -> torch.Tensor:
    """Run a kernel on the flattened float32 ``x``: compiled when possible, else eager; same shape out."""
    flat = x.detach().contiguous().reshape(-1)
    if stochastic and seed is None:
        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64).to(x.device)
    if compile_enabled(flat.numel()):
        try:
            return compiled()(flat, seed).reshape(x.shape)
        except Exception as err:  # no C++ compiler, unsupported backend: stay correct, only slower
            disable_compile(err)
    return eager(flat, seed).reshape(x.shape)


def round_tensor(x: torch.Tensor, plan: RoundingPlan, seed: torch.Tensor | None = None) -> torch.Tensor:
    """Round any float32 tensor (any shape) to the plan's format; compiled when possible, else eager."""
    return _run(lambda: compiled_round(plan), lambda f, s: round_bits(f, plan, s), x, plan.stochastic, seed)


def encode_tensor(x: torch.Tensor, plan: CodePlan, dtype: torch.dtype, seed: torch.Tensor | None = None) -> torch.Tensor:
    """Codes of any float32 tensor in ``dtype`` (uint8 or int16); compiled when possible, else eager."""
    return _run(lambda: compiled_encode(plan, dtype), lambda f, s: _narrow(encode_bits(f, plan, s), dtype),
                x, plan.rounding.stochastic, seed)
