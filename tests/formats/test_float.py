"""FloatFormat: bit-exact with torch's casts, equal to the exact reference, unbiased stochastic rounding."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from effdnn.errors import EffdnnError
from effdnn.formats import float_bits
from effdnn.formats.float import BF16, FP8_E4M3, FP8_E5M2, FP16, FP16_169, FP32, PRESETS, TORCH_DTYPES, FloatFormat
from effdnn.formats.float_reference import all_values, round_reference, stochastic_reference


@pytest.fixture(autouse=True)
def _eager():
    """The eager kernel (the compiled one is checked against it in test_compiled_kernel_matches_eager)."""
    float_bits.set_compile(False)
    yield
    float_bits.set_compile(True)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def assert_bit_exact(y: torch.Tensor, ref: torch.Tensor) -> None:
    same = (bits(y) == bits(ref)) | (torch.isnan(y) & torch.isnan(ref))
    bad = (~same).nonzero().flatten()[:5]
    assert bool(same.all()), f"{int((~same).sum())} mismatches, e.g. got {y[bad].tolist()} want {ref[bad].tolist()}"


def sweep(keep_bits: int, low: list[int]) -> torch.Tensor:
    """Every float32 whose top ``keep_bits`` bits take all values, with the low bits from ``low``.

    Keeping sign + 8 exponent bits + the target's mantissa bits enumerates every pattern of the target
    format (and every binade outside its range); the low bits probe exact values, ties, near-ties."""
    hi = torch.arange(2**keep_bits, dtype=torch.int64) << (32 - keep_bits)  # (2^k,)
    lo = torch.tensor(low, dtype=torch.int64)
    pattern = (hi[:, None] | lo[None, :]).reshape(-1)
    return ((pattern + 2**31) % 2**32 - 2**31).to(torch.int32).view(torch.float32)


def low_probes(drop: int) -> list[int]:
    half = 1 << (drop - 1)
    gen = torch.Generator().manual_seed(drop)
    rand = torch.randint(0, 1 << drop, (3,), generator=gen).tolist()
    return sorted({0, 1, half - 1, half, half + 1, (1 << drop) - 1, *rand})


@pytest.mark.parametrize("name", sorted(TORCH_DTYPES))
def test_bit_exact_with_torch_on_every_pattern(name):
    """All 2^16 fp16 / bf16 (and 2^8 fp8) patterns in every float32 binade, with ties and near-ties."""
    fmt, dtype = PRESETS[name], TORCH_DTYPES[name]
    keep = 1 + 8 + fmt.man_bits
    x = sweep(keep, low_probes(32 - keep))
    assert_bit_exact(fmt.round(x), x.to(dtype).to(torch.float32))


@pytest.mark.parametrize("name", sorted(TORCH_DTYPES))
def test_bit_exact_with_torch_on_random_float32(name):
    fmt, dtype = PRESETS[name], TORCH_DTYPES[name]
    gen = torch.Generator().manual_seed(1)
    raw = torch.randint(-2**31, 2**31 - 1, (1 << 20,), dtype=torch.int32, generator=gen).view(torch.float32)
    scaled = torch.randn(1 << 18, generator=gen) * torch.exp2(torch.randint(-40, 40, (1 << 18,), generator=gen).float())
    for x in (raw, scaled):
        assert_bit_exact(fmt.round(x), x.to(dtype).to(torch.float32))


def test_specials_and_signed_zero():
    x = torch.tensor([math.inf, -math.inf, math.nan, -0.0, 1e-30, -1e-30, 70000.0, -1e6])
    assert FP16.round(x).tolist()[:2] == [math.inf, -math.inf]
    assert math.isnan(FP16.round(x)[2])
    assert bits(FP16.round(x[3:6])).tolist() == bits(torch.tensor([-0.0, 0.0, -0.0])).tolist()
    assert FP8_E4M3.round(x).tolist()[:2] == [448.0, -448.0]  # saturating, like torch's cast
    assert FloatFormat(4, 3, specials="fn").round(torch.tensor([500.0])).isnan().all()
    assert FloatFormat(5, 2, saturate=True).round(x[6:]).tolist() == [57344.0, -57344.0]
    assert FloatFormat(2, 1, specials="none").round(torch.tensor([100.0, math.inf])).tolist() == [6.0, 6.0]


def test_format_properties():
    assert (FP16.max_value, FP16.min_normal, FP16.min_subnormal) == (65504.0, 2.0**-14, 2.0**-24)
    assert (FP8_E4M3.max_value, FP8_E5M2.max_value, BF16.bits, FP8_E4M3.bits) == (448.0, 57344.0, 16, 8)
    assert FP16_169.max_value == (2 - 2**-9) * 2.0**31 and FP32.max_value == torch.finfo(torch.float32).max
    assert FloatFormat(2, 1, specials="none").max_value == 6.0  # OCP MX fp4 e2m1
    assert FloatFormat.from_name("e3m2") == FloatFormat(3, 2) and FloatFormat.from_name("bf16") is BF16
    for bad in (dict(exp_bits=0), dict(exp_bits=9), dict(man_bits=24), dict(exp_bits=8, bias=130)):
        with pytest.raises(EffdnnError):
            FloatFormat(**bad)
    with pytest.raises(EffdnnError, match="unknown float format"):
        FloatFormat.from_name("fp7")


OTHER_FORMATS = [
    FloatFormat(3, 2), FloatFormat(4, 3), FloatFormat(2, 1, specials="none"), FloatFormat(6, 9),
    FloatFormat(5, 2, subnormals=False), FloatFormat(4, 3, bias=4), FloatFormat(3, 4, specials="fn"),
    FloatFormat(5, 2, saturate=True), FloatFormat(8, 4, subnormals=False), FloatFormat(1, 4, specials="none"),
    FloatFormat(7, 0), FloatFormat(4, 0, specials="fn", saturate=True),
]


@pytest.mark.parametrize("fmt", OTHER_FORMATS, ids=lambda f: f"{f.name}-{f.specials}-b{f.bias}-sub{int(f.subnormals)}")
def test_matches_reference_on_grid_and_midpoints(fmt):
    """Every value of the format, the midpoints between neighbours and just either side of them."""
    vals = all_values(fmt)
    mids = [(a + b) / 2 for a, b in zip(vals, vals[1:])]
    pts = torch.tensor(vals + mids + [vals[-1] * 1.01, vals[-1] * 4, 1e-40, 3e38], dtype=torch.float32)
    near = torch.cat([pts, torch.nextafter(pts, torch.tensor(math.inf)), torch.nextafter(pts, torch.tensor(0.0))])
    x = torch.cat([near, -near, torch.tensor([math.inf, -math.inf, math.nan])])
    want = torch.tensor([round_reference(v, fmt) for v in x.tolist()], dtype=torch.float32)
    assert_bit_exact(fmt.round(x), want)


formats = st.one_of(  # 8 exponent bits without an inf/NaN binade would reach 2^128: not a valid format
    st.builds(FloatFormat, exp_bits=st.integers(2, 8), man_bits=st.integers(0, 12), subnormals=st.booleans(),
              specials=st.just("ieee"), saturate=st.booleans()),
    st.builds(FloatFormat, exp_bits=st.integers(2, 7), man_bits=st.integers(0, 12), subnormals=st.booleans(),
              specials=st.sampled_from(["fn", "none"]), saturate=st.booleans()),
)


@settings(max_examples=60, deadline=None)
@given(fmt=formats, words=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_property_any_format_any_float32_matches_reference(fmt, words):
    x = torch.tensor([w - 2**32 if w >= 2**31 else w for w in words], dtype=torch.int32).view(torch.float32)
    want = torch.tensor([round_reference(v, fmt) for v in x.tolist()], dtype=torch.float32)
    assert_bit_exact(fmt.round(x), want)


@pytest.mark.parametrize("fmt", [FP8_E5M2, FP8_E4M3, BF16, FloatFormat(3, 2)], ids=lambda f: f.name)
def test_stochastic_rounding_is_unbiased(fmt):
    """E[SR(x)] = x (Gupta et al. 2015): the mean of 2^18 draws is within 5 standard errors of x,
    in the normal range and the subnormal range, and each draw is one of the two neighbours."""
    tiny = fmt.min_normal * 0.3137
    for v in (1.0 + 0.3 * fmt.eps, -3.7 * 1.001, tiny, fmt.min_subnormal * 0.01):
        lo, hi, p = stochastic_reference(v, fmt)
        y = fmt.round(torch.full((1 << 18,), v), rounding="stochastic")
        assert set(y.unique().tolist()) <= {lo, hi}
        frac_up = (y == hi).double().mean().item()
        se = math.sqrt(max(p * (1 - p), 1e-12) / y.numel())
        assert abs(frac_up - p) < 5 * se + 1e-9, (v, frac_up, p)


def test_stochastic_rounding_unbiased_on_random_data_and_reproducible():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1 << 20, generator=gen)
    seed = torch.tensor([1234])
    y = FP8_E5M2.round(x, rounding="stochastic", seed=seed)
    assert torch.equal(y, FP8_E5M2.round(x, rounding="stochastic", seed=seed))
    err = (y - x).double()
    rne_err = (FP8_E5M2.round(x) - x).abs().mean().item()
    assert abs(err.mean().item()) < 5 * err.std().item() / math.sqrt(x.numel())
    assert err.abs().mean().item() > rne_err  # SR trades variance for unbiasedness
    ulp_pos = ((y - FP8_E5M2.round(x)) != 0).double().mean().item()
    assert 0.1 < ulp_pos < 0.5  # it does round away from the nearest value a fair share of the time


def test_stochastic_hash_is_uniform():
    u = float_bits.hash_uniform32(torch.arange(1 << 20), torch.tensor([7])).double() / 2**32
    hist = torch.histc(u.float(), bins=16, min=0, max=1)
    expected = u.numel() / 16
    chi2 = float(((hist - expected) ** 2 / expected).sum())
    assert chi2 < 40  # 15 degrees of freedom: p ~ 5e-4
    assert abs(u.mean().item() - 0.5) < 1e-3


def wide_random(n: int, seed: int) -> torch.Tensor:
    """n normal values scaled by random powers of two in [2^-20, 2^19] (every binade of fp8 / fp16)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=gen) * torch.exp2(torch.randint(-20, 20, (n,), generator=gen).float())


def test_compiled_kernel_matches_eager():
    """The torch.compile'd kernel gives the same bits as the eager one (nearest and stochastic)."""
    float_bits.set_compile(True)
    x = wide_random(float_bits.COMPILE_MIN_NUMEL, 2)
    seed = torch.tensor([99])
    fmt = FP8_E5M2
    compiled_nearest, compiled_sr = fmt.round(x), fmt.round(x, rounding="stochastic", seed=seed)
    float_bits.set_compile(False)
    assert_bit_exact(compiled_nearest, fmt.round(x))
    assert_bit_exact(compiled_sr, fmt.round(x, rounding="stochastic", seed=seed))


def test_dtypes_and_fake_quantize_gradient():
    x = torch.tensor([0.1, 1000.0, -3.3], dtype=torch.float64, requires_grad=True)
    y = FP8_E4M3.fake_quantize(x)
    assert y.dtype == torch.float64 and y.tolist() == [0.1015625, 448.0, -3.25]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]
    assert FP16.round(torch.tensor([1.0001], dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(EffdnnError):
        FP16.round(torch.tensor([1, 2]))


# -- bit patterns: encode / decode -------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TORCH_DTYPES))
def test_encode_equals_torch_bit_patterns(name):
    """encode() writes the very bits of torch's float8 / fp16 / bf16 (every pattern, ties, near-ties)."""
    fmt, dtype = PRESETS[name], TORCH_DTYPES[name]
    keep = 1 + 8 + fmt.man_bits
    x = sweep(keep, low_probes(32 - keep))
    x = x[~torch.isnan(x)]  # NaN payloads differ; NaN is checked below
    codes = fmt.encode(x)
    assert codes.dtype == fmt.code_dtype == (torch.uint8 if fmt.bits <= 8 else torch.int16)
    assert torch.equal(codes, x.to(dtype).view(codes.dtype))
    assert torch.isnan(fmt.decode(fmt.encode(torch.tensor([math.nan])))).all()


@pytest.mark.parametrize("fmt", OTHER_FORMATS, ids=lambda f: f"{f.name}-{f.specials}-b{f.bias}-sub{int(f.subnormals)}")
def test_decode_of_encode_is_round_and_codes_round_trip(fmt):
    """decode(encode(x)) == round(x) bit for bit; every non-NaN code decodes to a value that encodes back
    to that code (so the code table and the encoder agree on the layout)."""
    vals = all_values(fmt)
    mids = [(a + b) / 2 for a, b in zip(vals, vals[1:])]
    pts = torch.tensor(vals + mids + [vals[-1] * 4, 1e-40, 3e38], dtype=torch.float32)
    x = torch.cat([pts, -pts, torch.tensor([math.inf, -math.inf])])
    assert_bit_exact(fmt.decode(fmt.encode(x)), fmt.round(x))
    codes = torch.arange(2 ** int(fmt.bits))
    values = fmt.decode(codes)
    ok = ~torch.isnan(values)
    if not fmt.subnormals:  # subnormal codes exist in the layout but rounding never produces them
        field = (codes >> fmt.man_bits) & (2**fmt.exp_bits - 1)
        ok &= (field > 0) | ((codes & (2**fmt.man_bits - 1)) == 0)
    assert torch.equal(fmt.encode(values[ok]).to(torch.int64) & (2 ** int(fmt.bits) - 1), codes[ok])


def test_encode_compiled_matches_eager_and_rejects_bad_input():
    float_bits.set_compile(True)
    x = wide_random(float_bits.COMPILE_MIN_NUMEL, 3)
    seed = torch.tensor([5])
    fmt = FloatFormat(4, 3, bias=4)
    got = [fmt.encode(x), fmt.encode(x, rounding="stochastic", seed=seed), FP16.encode(x)]
    float_bits.set_compile(False)
    want = [fmt.encode(x), fmt.encode(x, rounding="stochastic", seed=seed), FP16.encode(x)]
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    assert_bit_exact(fmt.decode(got[1]), fmt.round(x, rounding="stochastic", seed=seed))
    with pytest.raises(EffdnnError, match="at most 16 bits"):
        FP32.encode(x)
    with pytest.raises(EffdnnError, match="NaN has no code"):
        FloatFormat(2, 1, specials="none").encode(torch.tensor([math.nan]))
