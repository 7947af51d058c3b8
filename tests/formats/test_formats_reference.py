"""Every format bit-exact against a slow, element-by-element reference written from the definitions."""
from __future__ import annotations

import math

import pytest
import torch

from effdnn.errors import EffdnnError
from effdnn.formats import FixedPointFormat, Granularity, IntFormat, KMeansFormat, LogFormat
from effdnn.formats.integer import IntParams


def ref_round(v: float) -> float:
    return float(round(v))  # Python's round is half-to-even


def ref_int_codes(x: torch.Tensor, fmt: IntFormat, scale: list[float], zp: list[float]) -> torch.Tensor:
    blocks = fmt.granularity.to_blocks(x)
    out = torch.empty_like(blocks, dtype=torch.int32)
    for g in range(blocks.shape[0]):
        s = torch.tensor(scale[g], dtype=torch.float32)
        for n in range(blocks.shape[1]):
            v = float(torch.tensor(float(blocks[g, n]), dtype=torch.float32) / s)  # the float32 division
            out[g, n] = int(min(max(ref_round(v) + zp[g], fmt.qmin), fmt.qmax))
    return fmt.granularity.from_blocks(out, x.shape)


@pytest.mark.parametrize("fmt", [
    IntFormat(8), IntFormat(4, granularity=Granularity("per_channel")), IntFormat(8, signed=False),
    IntFormat(5, symmetric=False), IntFormat(16), IntFormat(2, narrow_range=True),
    IntFormat(3, symmetric=False, granularity=Granularity("per_group", 0, 3)),
])
def test_int_bit_exact(fmt: IntFormat) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 3, generator=g) * 2
    x[0, 0, 0] = 0.0
    p = fmt.compute_params(x)
    blocks = fmt.granularity.to_blocks(x)
    # reference params from the definitions
    for gi in range(blocks.shape[0]):
        lo, hi = float(blocks[gi].min()), float(blocks[gi].max())
        if fmt.symmetric:
            amax = max(abs(lo), abs(hi)) if fmt.signed else max(hi, 0.0)
            assert p.scale[gi].item() == pytest.approx(amax / fmt.qmax, rel=1e-6)
            assert p.zero_point[gi].item() == 0
        else:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            s = (hi - lo) / (fmt.qmax - fmt.qmin)
            assert p.scale[gi].item() == pytest.approx(s, rel=1e-6)
            assert p.zero_point[gi].item() == min(max(fmt.qmin - round(lo / p.scale[gi].item()), fmt.qmin), fmt.qmax)
    codes = fmt.quantize(x, p)
    ref = ref_int_codes(x, fmt, p.scale.tolist(), p.zero_point.tolist())
    assert torch.equal(codes, ref)
    deq = fmt.dequantize(codes, p)
    sb, zb = p.scale.reshape(-1, 1), p.zero_point.reshape(-1, 1)
    ref_deq = fmt.granularity.from_blocks((fmt.granularity.to_blocks(ref).float() - zb) * sb, x.shape)
    assert torch.equal(deq, ref_deq)
    assert torch.equal(fmt.fake_quantize(x, p), deq)


def test_int_codes_match_torch_fake_quantize() -> None:
    x = torch.randn(1000) * 3
    fmt = IntFormat(8, symmetric=False)
    p = fmt.compute_params(x)
    ours = fmt.fake_quantize(x, p)
    theirs = torch.fake_quantize_per_tensor_affine(x, float(p.scale), int(p.zero_point), -128, 127)
    assert (ours - theirs).abs().max() <= float(p.scale) * 1e-5 + 1e-7 or (ours != theirs).float().mean() < 0.01


def test_fixed_bit_exact() -> None:
    fmt = FixedPointFormat(2, 5)  # Q2.5: 8 bits, step 1/32, range [-4, 4 - 1/32]
    assert fmt.bits == 8 and fmt.step == 1 / 32
    xs = [-5.0, -4.0, -0.015625, 0.015625, 0.046875, 1.23, 3.99, 4.5]
    codes = fmt.quantize(torch.tensor(xs))
    ref = [int(min(max(ref_round(v * 32), -128), 127)) for v in xs]
    assert codes.tolist() == ref
    assert fmt.dequantize(codes).tolist() == [c / 32 for c in ref]


def ref_log(v: float, e_max: float, levels: int, linear: bool = False) -> int:
    if v == 0:
        return 0
    e = math.floor(math.log2(abs(v)))
    mant = abs(v) / 2.0**e  # in [1, 2)
    mid = 1.5 if linear else 2 * torch.tensor(math.sqrt(0.5), dtype=torch.float32).item()  # as float32, like frexp's f
    e = e + 1 if mant >= mid else e
    m = e - e_max + levels - 1
    m = 0 if m < 1 else min(m, levels - 1)
    return int(math.copysign(m, v)) if m else 0


@pytest.mark.parametrize("fmt", [LogFormat(4), LogFormat(3, signed=False), LogFormat(5, granularity=Granularity("per_channel")),
                                 LogFormat(4, rounding="linear")])
def test_log_bit_exact(fmt: LogFormat) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 50, generator=g) * torch.tensor([[0.1], [1.0], [10.0]])
    if not fmt.signed:
        x = x.abs()
    x[0, 0] = 0.0
    p = fmt.compute_params(x)
    blocks = fmt.granularity.to_blocks(x)
    ref_e = [round(math.log2(float(b.abs().max()))) for b in blocks]
    assert p.e_max.tolist() == [float(e) for e in ref_e]
    codes = fmt.granularity.to_blocks(fmt.quantize(x, p))
    for gi in range(blocks.shape[0]):
        for n in range(blocks.shape[1]):
            assert codes[gi, n].item() == ref_log(float(blocks[gi, n]), ref_e[gi], fmt.levels, fmt.rounding == "linear")
    deq = fmt.granularity.to_blocks(fmt.dequantize(fmt.quantize(x, p), p))
    for gi in range(blocks.shape[0]):
        for n in range(blocks.shape[1]):
            c = codes[gi, n].item()
            want = 0.0 if c == 0 else math.copysign(2.0 ** (ref_e[gi] - fmt.levels + 1 + abs(c)), c)
            assert deq[gi, n].item() == want


def lloyd_reference(x: list[float], init: list[float], iters: int) -> list[float]:
    """Plain Lloyd iterations with nearest-centroid assignment (ties to the lower centroid)."""
    c = sorted(init)
    for _ in range(iters):
        groups: list[list[float]] = [[] for _ in c]
        for v in x:
            d = [abs(v - ci) for ci in c]
            groups[d.index(min(d))].append(v)
        new = sorted(sum(gr) / len(gr) if gr else ci for gr, ci in zip(groups, c))
        if new == c:
            break
        c = new
    return c


@pytest.mark.parametrize("init", ["linear", "density"])
def test_kmeans_matches_plain_lloyd(init: str) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, generator=g, dtype=torch.float64).float()
    fmt = KMeansFormat(3, init=init, iters=50)
    p = fmt.fit(x)
    init_c = fmt._init(torch.sort(x.double().reshape(1, -1))[0], torch.tensor([300])).squeeze(0).tolist()
    ref = lloyd_reference(x.double().tolist(), init_c, 50)
    assert p.codebook.squeeze(0).tolist() == pytest.approx(ref, abs=1e-6)
    codes = fmt.quantize(x, p)
    c = p.codebook.squeeze(0)
    brute = (x.unsqueeze(1) - c.unsqueeze(0)).abs().argmin(1)  # argmin picks the lower index on ties
    assert torch.equal(codes, brute)
    assert torch.equal(fmt.dequantize(codes, p), c[brute])


def test_kmeans_inits_and_mask() -> None:
    x = torch.randn(8, 200)
    for init in ("linear", "density", "random", "kmeans++"):
        p = KMeansFormat(2, init=init, granularity=Granularity("per_channel")).fit(x)
        assert p.codebook.shape == (8, 4)
        assert (p.codebook[:, 1:] >= p.codebook[:, :-1]).all()
    mask = x.abs() > 1.0
    p = KMeansFormat(2, granularity=Granularity("per_channel")).fit(x, mask)
    assert (p.codebook.abs() >= 1.0 - 1e-6).all()  # only kept weights (|x| > 1) are clustered
    # storage: indices + fp32 codebook per channel
    assert KMeansFormat(2).storage_bits(1600, p) == 1600 * 2 + 8 * 4 * 32


def test_kmeans_linear_init_is_deep_compression() -> None:
    x = torch.tensor([-1.0, 0.0, 3.0])
    fmt = KMeansFormat(2, iters=0)
    assert fmt.fit(x).codebook.squeeze(0).tolist() == pytest.approx([-1.0, 1 / 3, 5 / 3, 3.0])


@pytest.mark.parametrize("bad", [
    lambda: IntFormat(1), lambda: IntFormat(17), lambda: IntFormat(8, signed=False, narrow_range=True),
    lambda: FixedPointFormat(20, 20), lambda: LogFormat(9), lambda: KMeansFormat(0), lambda: KMeansFormat(4, init="foo"),
    lambda: Granularity("per_row"), lambda: Granularity("per_group"),
])
def test_bad_formats_raise_one_line(bad) -> None:
    with pytest.raises(EffdnnError) as e:
        bad()
    assert "\n" not in str(e.value)


def test_granularity_round_trip() -> None:
    x = torch.randn(6, 4, 3, 3)
    for gran in (Granularity(), Granularity("per_channel", 0), Granularity("per_channel", 1),
                 Granularity("per_group", 0, 9), Granularity("per_group", 1, 3)):
        b = gran.to_blocks(x)
        assert b.shape[0] == gran.num_blocks(x.shape)
        assert torch.equal(gran.from_blocks(b, x.shape), x)
    assert Granularity("per_channel", 1).to_blocks(x)[2].tolist() == x[:, 2].flatten().tolist()
    with pytest.raises(EffdnnError):
        Granularity("per_group", 0, 5).to_blocks(x)


def test_int_fake_quantize_straight_through_gradient_on_hand_made_values():
    """Fixed scale / zero point: the value is the quantize-dequantize round trip, the gradient is 1 where
    the code lands inside [qmin, qmax] and 0 where it is clamped (STE with the clip gate); a learnable
    scale takes the autograd path and gets a gradient too."""
    fmt = IntFormat(bits=3, symmetric=False, signed=False)  # codes 0..7
    params = IntParams(torch.tensor([0.5]), torch.tensor([2.0]))  # values -1.0 .. 2.5
    x = torch.tensor([-3.0, -1.0, -0.74, 0.2, 1.26, 2.5, 2.8, 9.0], requires_grad=True)
    y = fmt.fake_quantize(x, params)
    assert torch.equal(y.detach(), torch.tensor([-1.0, -1.0, -0.5, 0.0, 1.5, 2.5, 2.5, 2.5]))
    y.backward(torch.arange(1.0, 9.0))
    assert torch.equal(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0]))
    scale = torch.tensor([0.5], requires_grad=True)
    fmt.fake_quantize(x.detach(), IntParams(scale, torch.tensor([2.0]))).sum().backward()
    assert scale.grad is not None and torch.isfinite(scale.grad).all()
