"""Low-precision accumulation: sums and matrix products whose every addition is rounded to a format.

A hardware multiply-accumulate unit with a narrow accumulator computes ``acc <- round_A(acc +
round_P(a_k * b_k))`` one ``k`` at a time. Once ``|acc|`` is large, addends below half its ulp are
lost ("swamping"). Wang et al. 2018 ("Training Deep Neural Networks with 8-bit Floating Point
Numbers", NeurIPS, section 3 and Fig. 2) bound the damage with chunk-based accumulation: sum chunks
of ``CL`` consecutive terms in the narrow format, then add the chunk sums, again in the narrow
format, one at a time. The error of a sequential sum of n terms grows like n * u; the chunked sum's
like (CL + n / CL) * u (u: unit roundoff).

Emulation: the sum is sequential only along K. ``K`` is reshaped into ``(n_chunks, CL)``; a Python
loop over the ``CL`` positions updates every chunk of every output element at once (one fused
multiply-round-add-round kernel per position), then a loop over the chunks adds the chunk sums.
Every addition is done in float32 and rounded to the accumulation format: for formats with at most
11 significant bits (fp16, bf16, fp16 (1,6,9), fp8), float32's 24 bits make this double rounding
innocuous (Figueroa 1995: 24 >= 2p + 2), so each step equals the correctly rounded narrow addition.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import EffdnnError
from ..formats.float import FloatFormat
from ..formats.float_bits import RoundingPlan, compile_enabled, compile_kernel, round_bits


def _mac(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, prod: RoundingPlan | None, accp: RoundingPlan) -> torch.Tensor:
    p = a * b
    if prod is not None:
        p = round_bits(p, prod)
    return round_bits(acc + p, accp)


def _add(acc: torch.Tensor, t: torch.Tensor, accp: RoundingPlan) -> torch.Tensor:
    return round_bits(acc + t, accp)


@lru_cache(maxsize=None)
def _kernel(name: str, compiled: bool, *plans: RoundingPlan | None) -> Callable[..., torch.Tensor]:
    base = {"mac": _mac, "add": _add}[name]

    def fn(*tensors: torch.Tensor) -> torch.Tensor:
        return base(*tensors, *plans)

    return compile_kernel(fn) if compiled else fn


def _plan(fmt: FloatFormat | None) -> RoundingPlan | None:
    return None if fmt is None else fmt.plan("nearest")


def _check(acc_fmt: FloatFormat) -> None:
    if acc_fmt.man_bits > 10:
        raise EffdnnError(f"accumulation format {acc_fmt.name}: emulated accumulation needs at most 10 mantissa bits "
                          "(wider formats would be double-rounded through float32)")


def chunk_length(k: int, chunk: int | None) -> int:
    """The chunk length used for a reduction of length ``k`` (``None`` or 0: one chunk, sequential)."""
    if chunk is not None and chunk < 0:
        raise EffdnnError(f"chunk length must be >= 0, got {chunk}")
    return k if not chunk or chunk >= k else chunk


def lowp_sum(terms: torch.Tensor, acc_fmt: FloatFormat, chunk: int | None = None, dim: int = -1) -> torch.Tensor:
    """Sum ``terms`` along ``dim`` in ``acc_fmt``, one rounded addition at a time (chunked if ``chunk``)."""
    _check(acc_fmt)
    t = terms.float().movedim(dim, -1)  # (..., K)
    ones = torch.ones(t.shape[-1], 1, device=t.device)
    out = lowp_matmul(t.reshape(-1, t.shape[-1]), ones, acc_fmt, prod_fmt=None, chunk=chunk)  # (rows, 1)
    return out.reshape(t.shape[:-1])


def lowp_matmul(a: torch.Tensor, b: torch.Tensor, acc_fmt: FloatFormat, prod_fmt: FloatFormat | None = None,
                chunk: int | None = None) -> torch.Tensor:
    """``a @ b`` for (M, K) @ (K, N), or batched (G, M, K) @ (G, K, N) (one product per group, as in a
    grouped convolution), with products rounded to ``prod_fmt`` and sums in ``acc_fmt``.

    ``chunk`` = CL: chunk-based accumulation (Wang et al. 2018); ``None`` / 0: plain sequential sum.
    Returns float32 (M, N) / (G, M, N) holding ``acc_fmt`` values."""
    _check(acc_fmt)
    batched = a.dim() == 3
    if a.dim() not in (2, 3) or b.dim() != a.dim() or a.shape[-1] != b.shape[-2] or a.shape[:-2] != b.shape[:-2]:
        raise EffdnnError(f"lowp_matmul: expected (M, K) @ (K, N) or (G, M, K) @ (G, K, N), "
                          f"got {tuple(a.shape)} @ {tuple(b.shape)}")
    a, b = a.float().reshape(-1, *a.shape[-2:]), b.float().reshape(-1, *b.shape[-2:])  # (G, M, K), (G, K, N)
    out = _batched_matmul(a, b, acc_fmt, prod_fmt, chunk)
    return out if batched else out[0]


def _batched_matmul(a: torch.Tensor, b: torch.Tensor, acc_fmt: FloatFormat, prod_fmt: FloatFormat | None,
                    chunk: int | None) -> torch.Tensor:
    (g, m, k), n = a.shape, b.shape[2]
    if k == 0:
        return a.new_zeros(g, m, n)
    cl = chunk_length(k, chunk)
    n_chunks = math.ceil(k / cl)
    pad = n_chunks * cl - k
    if pad:  # zero terms leave a sum unchanged
        a, b = F.pad(a, (0, pad)), F.pad(b, (0, 0, 0, pad))
    a3 = a.reshape(g, m, n_chunks, cl).permute(3, 0, 1, 2).unsqueeze(-1).contiguous()  # (CL, G, M, C, 1)
    b3 = b.reshape(g, n_chunks, cl, n).permute(2, 0, 1, 3).unsqueeze(2).contiguous()  # (CL, G, 1, C, N)
    compiled = compile_enabled(g * m * n_chunks * n)
    accp = _plan(acc_fmt)
    mac = _kernel("mac", compiled, _plan(prod_fmt), accp)
    acc = a.new_zeros(g, m, n_chunks, n)  # (G, M, C, N): one running sum per chunk per output
    for i in range(cl):  # sequential within every chunk, all chunks and outputs at once
        acc = mac(acc, a3[i].clone(), b3[i].clone())  # clones: offset-0 inputs, one compiled graph
    sums = acc.permute(2, 0, 1, 3).contiguous()  # (C, G, M, N)
    out = sums[0].clone()  # (G, M, N)
    add = _kernel("add", compiled, accp)
    for c in range(1, n_chunks):  # then the chunk sums, one at a time
        out = add(out, sums[c].clone())
    return out
