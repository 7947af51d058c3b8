"""Low-precision accumulation: equal to a scalar reference, swamping, chunked-sum error bound."""
from __future__ import annotations

import math

import pytest
import torch

from effdnn.errors import EffdnnError
from effdnn.formats.float import FP8_152, FP16, FP16_169, FloatFormat
from effdnn.formats.float_reference import round_reference
from effdnn.lowp.accumulate import chunk_length, lowp_matmul, lowp_sum


def reference_dot(a: list[float], b: list[float], acc: FloatFormat, prod: FloatFormat | None, chunk: int | None) -> float:
    """One rounded addition at a time, in plain Python: chunks of CL, then the chunk sums in order."""
    cl = chunk_length(len(a), chunk)
    sums = []
    for start in range(0, len(a), cl):
        s = 0.0
        for x, y in zip(a[start:start + cl], b[start:start + cl]):
            p = x * y if prod is None else round_reference(x * y, prod)
            s = round_reference(s + p, acc)
        sums.append(s)
    total = sums[0]
    for s in sums[1:]:
        total = round_reference(total + s, acc)
    return total


@pytest.mark.parametrize("acc,prod,chunk", [(FP16_169, None, 4), (FP16_169, None, None), (FP16, FloatFormat(4, 3), 8),
                                            (FloatFormat(5, 2), None, 3)])
def test_matmul_equals_scalar_reference(acc, prod, chunk):
    gen = torch.Generator().manual_seed(0)
    a = FP8_152.round(torch.randn(3, 37, generator=gen) * 4)
    b = FP8_152.round(torch.randn(37, 2, generator=gen))
    got = lowp_matmul(a, b, acc, prod, chunk)
    want = torch.tensor([[reference_dot(a[i].tolist(), b[:, j].tolist(), acc, prod, chunk) for j in range(2)]
                         for i in range(3)])
    assert torch.equal(got, want)


def test_swamping_and_chunks():
    """1.0 followed by 4096 terms of 1e-4: each is below half an fp16 ulp of 1 (2^-11), so a sequential
    fp16 sum never moves; chunks of 64 first add the small terms among themselves."""
    terms = torch.cat([torch.ones(1), torch.full((4096,), 1e-4)])
    exact = 1.0 + 4096 * FP16.round(torch.tensor(1e-4)).item()
    assert lowp_sum(terms, FP16).item() == 1.0  # relative error 0.29
    chunked = lowp_sum(terms, FP16, chunk=64).item()
    # the chunk holding 1.0 still loses its 63 terms, and 64 chunk sums of 0.0064 are added to ~1.4
    # with a rounding error of at most half an ulp (2^-11) each: within 63e-4 + 64 * 2^-11
    assert abs(chunked - exact) <= 63e-4 + 64 * 2.0**-11
    assert abs(chunked - exact) / exact < 0.03
    assert lowp_sum(terms, FP16, chunk=8192).item() == 1.0  # one chunk = sequential


@pytest.mark.parametrize("n", [256, 4096])
def test_chunked_error_bound(n):
    """|error| <= gamma * sum|x| with gamma = (CL - 1 + n/CL) u for chunked and (n - 1) u for sequential
    (Higham 2002, eq. 4.4, applied per level); chunks beat the sequential sum on positive data."""
    u = 2.0**-11  # fp16 unit roundoff
    gen = torch.Generator().manual_seed(n)
    x = FP16.round(torch.rand(16, n, generator=gen))  # (rows, n), exact in fp16
    exact = x.double().sum(1)
    seq = lowp_sum(x, FP16).double()
    chk = lowp_sum(x, FP16, chunk=64).double()
    cl = 64
    assert ((chk - exact).abs() <= (cl - 1 + math.ceil(n / cl)) * u * exact).all()
    assert ((seq - exact).abs() <= (n - 1) * u * exact).all()
    assert (chk - exact).abs().mean() < (seq - exact).abs().mean()


def test_bad_shapes_and_chunk():
    with pytest.raises(EffdnnError):
        lowp_matmul(torch.ones(2, 3), torch.ones(2, 3), FP16)
    with pytest.raises(EffdnnError):
        lowp_matmul(torch.ones(2, 3), torch.ones(3, 3), FP16, chunk=-1)
    with pytest.raises(EffdnnError):
        lowp_matmul(torch.ones(2, 3), torch.ones(3, 3), FloatFormat(8, 23))


def test_compiled_chunked_matmul_equals_eager_for_two_shapes():
    """The torch.compile'd multiply-round-add kernels (plan integers folded in, sizes dynamic) give the
    eager kernels' bits, for a second shape too (no per-shape recompile needed for correctness)."""
    from effdnn.formats import float_bits
    from effdnn.formats.float import FP8_E5M2

    gen = torch.Generator().manual_seed(0)
    for m, k, n in [(64, 512, 128), (100, 300, 70)]:  # m * chunks * n >= the compile threshold
        a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
        float_bits.set_compile(True)
        compiled = lowp_matmul(a, b, FP16, FP8_E5M2, chunk=64)
        float_bits.set_compile(False)
        assert torch.equal(compiled, lowp_matmul(a, b, FP16, FP8_E5M2, chunk=64))
