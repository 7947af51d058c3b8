"""The fused fake-quant kernels against the reference autograd expressions: forward values bit-exact,
gradients equal (masks) or to float32 rounding of the sums (LSQ step, PACT clip, DoReFa), per tensor
and per channel, signed and unsigned, several bit widths, with values placed exactly on rounding ties
and on the clip bounds."""
import dataclasses

import pytest
import torch

from effdnn.formats import Granularity, IntFormat
from effdnn.formats.integer import IntParams
from effdnn.quant import fused_fq, kernels
from effdnn.quant.methods.dorefa import DoReFaWeightQuantizer, dorefa_weight, dorefa_weight_fused
from effdnn.quant.methods.lsq import LSQQuantizer
from effdnn.quant.methods.pact import pact_quantize
from effdnn.quant.qat_quantizers import DynamicWeightQuantizer, EMAActQuantizer

needs_kernels = pytest.mark.skipif(kernels.fq_lib() is None, reason="fused fake-quant kernels unavailable (no compiler)")
PER_CHANNEL = Granularity("per_channel", axis=0)


def _ties(shape: tuple[int, ...], s: float, seed: int) -> torch.Tensor:
    """Random values, a quarter of them exactly on half-steps k s / 2 (ties of the rounding), a few
    far outside any clip range."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 40 * s
    half = torch.randint(-600, 600, shape, generator=g).float() * (s / 2)
    pick = torch.rand(shape, generator=g) < 0.25
    return torch.where(pick, half, x)


def _grad(f, x: torch.Tensor, *params: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    y = f(x, *ps)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)))
    return y.detach(), [x.grad, *[p.grad for p in ps]]


@needs_kernels
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed,symmetric,narrow", [(True, True, False), (True, True, True), (False, True, False),
                                                     (True, False, False), (False, False, False)])
@pytest.mark.parametrize("gran", ["per_tensor", "per_channel"])
def test_int_fake_quant_is_the_reference(bits, signed, symmetric, narrow, gran):
    fmt = IntFormat(bits, signed=signed, symmetric=symmetric, narrow_range=narrow,
                    granularity=PER_CHANNEL if gran == "per_channel" else Granularity())
    x = _ties((16, 3, 5, 5), 0.05, bits)
    g = fmt.granularity.num_blocks(x.shape)
    scale = torch.tensor([0.05, 0.25] * 8)[:g]  # 0.25: x / s lands exactly on .5 ties; 0.05: next to them
    zp = torch.zeros(g) if symmetric else torch.full((g,), float(fmt.qmin + (fmt.qmax - fmt.qmin) // 3))
    params = IntParams(scale, zp)  # a range narrower than x: clipping on both sides
    ref, ref_g = _grad(lambda v: fmt.fake_quantize(v, params), x)
    out, out_g = _grad(lambda v: fused_fq.fake_quantize_int(fmt, v, params), x)
    assert torch.equal(out, ref)
    assert torch.equal(out_g[0], ref_g[0])
    assert 0 < int((out_g[0] == 0).sum()) < x.numel()  # the clip gate was exercised


@needs_kernels
def test_dynamic_and_ema_quantizers_use_the_kernel_with_reference_values():
    w = _ties((32, 64), 0.01, 3)
    fmt = IntFormat(4, granularity=PER_CHANNEL)
    q = DynamicWeightQuantizer(fmt)
    out, g = _grad(q, w)
    ref, ref_g = _grad(lambda v: fmt.fake_quantize(v, fmt.compute_params(v.detach())), w)
    assert torch.equal(out, ref) and torch.equal(g[0], ref_g[0])
    ema = EMAActQuantizer(IntFormat(8))
    ema._observe(torch.randn(1000))
    ema.finish_calibration()
    ema.train()
    x = torch.randn(64, 200) * 3
    lo, hi = ema.lo.clone(), ema.hi.clone()
    out = ema(x)
    lo.lerp_(x.min().clamp_max(0), ema.momentum)
    hi.lerp_(x.max().clamp_min(0), ema.momentum)
    assert torch.equal(ema.lo, lo) and torch.equal(ema.hi, hi)
    assert torch.equal(out, ema.fmt.fake_quantize(x, ema.fmt.params_from_range(lo.reshape(1), hi.reshape(1))))


def _lsq(fmt: IntFormat, role: str, w: torch.Tensor, step: torch.Tensor) -> LSQQuantizer:
    q = LSQQuantizer(fmt, role, w if role == "weight" else None)
    with torch.no_grad():
        q.step.data = step.clone()
    q.mode = "quantize"
    return q


@needs_kernels
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("case", ["weight per_tensor", "weight per_channel", "act signed", "act unsigned"])
def test_lsq_fused_is_the_papers_listing(bits, case):
    role = case.split()[0]
    gran = PER_CHANNEL if case.endswith("per_channel") else Granularity()
    fmt = IntFormat(bits, granularity=gran, signed=not case.endswith("unsigned"))
    shape = (8, 4, 3, 3) if role == "weight" else (16, 6, 7, 7)
    steps = torch.tensor([0.05, -0.07, 0.11, 0.02, 0.5, 1e-9, 0.09, 0.03]) if gran.kind == "per_channel" else torch.tensor([0.05])
    x = _ties(shape, 0.05, bits)
    if fmt.qmin == 0:
        x = x.abs()
    q = _lsq(fmt, role, x, steps)
    gfac = q.grad_factor(x)
    ref, ref_g = _grad(lambda v, s: _with_step(q, s, lambda: q.reference(v, gfac)), x, q.step)
    out, out_g = _grad(lambda v, s: _with_step(q, s, lambda: q(v)), x, q.step)
    assert torch.equal(out, ref)
    assert torch.equal(out_g[0], ref_g[0])  # the clip gate, eq. 5
    torch.testing.assert_close(out_g[1], ref_g[1], rtol=1e-5, atol=1e-7)  # eq. 3 times g, summed


def _with_step(q: LSQQuantizer, step: torch.Tensor, f):
    """Run ``f`` with ``q.step`` replaced by ``step`` (a leaf that collects the gradient)."""
    saved = q.step
    del q.step
    q.step = step  # a plain attribute for the call
    try:
        return f()
    finally:
        del q.step
        q.step = saved


@needs_kernels
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [False, True])
def test_pact_fused_is_eq1_to_eq3(bits, signed):
    a = torch.tensor(1.3)
    x = _ties((32, 8, 9, 9), 0.05, bits)
    x.view(-1)[:50] = a  # exactly on the clip: dy/da = 1 there (eq. 3)
    x.view(-1)[50:100] = -a
    ref, ref_g = _grad(lambda v, al: pact_quantize(v, al, bits, signed), x, a)
    out, out_g = _grad(lambda v, al: fused_fq.pact_quantize_fused(v, al, bits, signed), x, a)
    assert torch.equal(out, ref)
    assert torch.equal(out_g[0], ref_g[0])
    torch.testing.assert_close(out_g[1], ref_g[1], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bits", [1, 2, 4, 7])
@pytest.mark.parametrize("rescale", [True, False])
def test_dorefa_one_node_is_the_reference(bits, rescale):
    w = torch.randn(24, 50) * 0.2
    w[3, 7] = w.abs().max() * 1.5  # one clear max
    w[5, 1] = -w[3, 7]  # and a tie of |tanh| at the max: the max's gradient is shared
    ref, ref_g = _grad(lambda v: dorefa_weight(v, bits, rescale), w)
    out, out_g = _grad(lambda v: dorefa_weight_fused(v, bits, rescale), w)
    assert torch.equal(out, ref)
    torch.testing.assert_close(out_g[0], ref_g[0], rtol=1e-5, atol=1e-6)
    assert isinstance(DoReFaWeightQuantizer(bits, rescale)(w), torch.Tensor)


def test_kernels_decline_what_they_do_not_cover():
    fmt = IntFormat(8)
    x64 = torch.randn(10, dtype=torch.float64)
    assert fused_fq.fake_quantize_int(fmt, x64, fmt.compute_params(x64)) is None  # float64: the reference
    f1 = IntFormat(8, granularity=Granularity("per_channel", axis=1))
    x = torch.randn(4, 6)
    assert fused_fq.fake_quantize_int(f1, x, f1.compute_params(x)) is None  # blocks not rows of memory
    learn = dataclasses.replace(fmt.compute_params(x))
    learn.scale = learn.scale.clone().requires_grad_(True)
    assert fused_fq.fake_quantize_int(fmt, x, learn) is None  # a learned scale: autograd's path
    assert fused_fq.pact_quantize_fused(x, torch.ones(2), 4) is None


def test_quantizers_fall_back_to_the_reference_without_kernels(monkeypatch):
    monkeypatch.setitem(kernels._state, "fq", None)
    fmt = IntFormat(4, granularity=PER_CHANNEL)
    w = torch.randn(6, 20)
    assert torch.equal(DynamicWeightQuantizer(fmt)(w), fmt.fake_quantize(w, fmt.compute_params(w)))
    q = _lsq(IntFormat(4), "weight", w, torch.tensor([0.1]))
    assert torch.equal(q(w), q.reference(w, q.grad_factor(w)))
