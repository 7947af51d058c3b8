"""Each QAT straight-through estimator against its paper's definition on hand-made inputs."""
import math

import pytest
import torch

from effdnn.formats import IntFormat, KMeansFormat
from effdnn.quant.methods.dorefa import DoReFaFormat, dorefa_weight
from effdnn.quant.methods.lsq import LSQQuantizer, grad_scale
from effdnn.quant.methods.pact import PACTActQuantizer, pact_quantize
from effdnn.quant.qat_quantizers import CodebookWeightQuantizer, EMAActQuantizer


def test_pact_value_is_eq1_eq2_and_alpha_gradient_is_eq3():
    x = torch.tensor([-1.0, 0.0, 0.3, 0.9, 1.0, 1.5, 4.0], requires_grad=True)
    a = torch.tensor(1.0, requires_grad=True)
    y = pact_quantize(x, a, bits=2)
    clip = 0.5 * (x.abs() - (x - a).abs() + a)  # eq. 1
    ref = torch.round(clip * 3 / a) * a / 3  # eq. 2
    assert torch.equal(y.detach(), ref.detach())
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    y.backward(g)
    # eq. 3: dy_q/da = 1 where x >= a: x = 1.0, 1.5, 4.0 -> 5 + 6 + 7
    assert a.grad.item() == pytest.approx(18.0)
    # the clip gate: dy_q/dx = 1 on [0, a), 0 outside
    assert torch.equal(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0]))


def test_pact_signed_variant_gradient():
    x = torch.tensor([-3.0, -0.5, 0.5, 2.0], requires_grad=True)
    a = torch.tensor(1.0, requires_grad=True)
    pact_quantize(x, a, bits=3, signed=True).backward(torch.tensor([1.0, 10.0, 100.0, 1000.0]))
    assert a.grad.item() == pytest.approx(1000.0 - 1.0)
    assert torch.equal(x.grad, torch.tensor([0.0, 10.0, 100.0, 0.0]))


def test_pact_quantizer_static_conversion_is_exact():
    q = PACTActQuantizer(3)
    q._observe(torch.rand(100) * 5)
    q.finish_calibration()
    assert not q.signed and q.alpha.item() == pytest.approx(float(q.obs_max), rel=1e-6)
    x = torch.randn(1000) * 3
    assert torch.equal(q(x), q.to_static()(x))


def test_lsq_step_gradient_is_eq3_times_gradient_scale():
    fmt = IntFormat(bits=3)  # Q_N = 4, Q_P = 3
    w = torch.tensor([[-2.1, -0.26, 0.1, 0.74, 0.5, 3.0]])
    q = LSQQuantizer(fmt, "weight", w)
    assert q.step.item() == pytest.approx(2 * w.abs().mean().item() / math.sqrt(3))  # initial step
    with torch.no_grad():
        q.step.fill_(0.5)
    v = w.clone().requires_grad_(True)
    out = q(v)
    s = 0.5
    ref = torch.clamp(torch.round(w / s), -4, 3) * s
    assert torch.equal(out.detach(), ref)
    out.sum().backward()
    r = w / s
    expect = torch.where(r <= -4, -4.0, torch.where(r >= 3, 3.0, -r + torch.round(r)))  # eq. 3
    g = 1 / math.sqrt(w.numel() * 3)
    assert q.step.grad.item() == pytest.approx(float(expect.sum()) * g, rel=1e-6)
    # the clip gate on the input
    assert torch.equal(v.grad, ((r > -4) & (r < 3)).float())


def test_lsq_activation_gradient_scale_uses_features_per_example():
    q = LSQQuantizer(IntFormat(bits=4), "act")
    q._observe(torch.rand(8, 3, 5))
    q.finish_calibration()
    assert q.fmt.signed is False and q.q_p == 15
    x = torch.rand(8, 3, 5)
    assert q.grad_factor(x) == pytest.approx(1 / math.sqrt(15 * 15))
    assert q.step.item() == pytest.approx(2 * q.first_mean_abs / math.sqrt(15))


def test_grad_scale_keeps_value_scales_gradient():
    s = torch.tensor(2.0, requires_grad=True)
    y = grad_scale(s, 0.25)
    (3 * y).backward()
    assert y.item() == 2.0 and s.grad.item() == pytest.approx(0.75)


def test_dorefa_weights_on_their_grid_with_ste():
    w = torch.tensor([-0.8, -0.1, 0.0, 0.05, 0.4, 0.8], requires_grad=True)
    wq = dorefa_weight(w, bits=2, rescale=False)
    t = torch.tanh(w.detach())
    r = t / (2 * t.abs().max()) + 0.5
    ref = 2 * torch.round(r * 3) / 3 - 1
    assert torch.allclose(wq.detach(), ref)
    assert set(torch.round(wq.detach() * 3).tolist()) <= {-3.0, -1.0, 1.0, 3.0}
    fmt = DoReFaFormat(2)
    scaled = dorefa_weight(w, 2).detach()
    p = fmt.compute_params(scaled)
    assert torch.allclose(fmt.dequantize(fmt.quantize(scaled, p), p), scaled)
    wq.sum().backward()  # straight through the rounding: d/dw of 2 (t / 2max + 1/2) - 1 = t / max
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_codebook_gradient_is_the_sum_over_each_cluster():
    fmt = KMeansFormat(bits=2, iters=10)
    w = torch.tensor([0.0, 0.1, 1.0, 1.1, 2.0, 2.1, 3.0, 3.1])
    q = CodebookWeightQuantizer(fmt, w)
    assert torch.allclose(q.codebook.detach(), torch.tensor([[0.05, 1.05, 2.05, 3.05]]))
    out = q(w)
    g = torch.arange(1.0, 9.0)
    out.backward(g)
    assert torch.allclose(q.codebook.grad, torch.tensor([[1 + 2, 3 + 4, 5 + 6, 7 + 8.0]]))
    static = q.to_static()
    assert torch.equal(static(out.detach()), out.detach())


def test_ema_range_moves_by_momentum_and_gates_gradient():
    q = EMAActQuantizer(IntFormat(bits=8), momentum=0.5)
    q._observe(torch.tensor([0.0, 2.0]))
    q.finish_calibration()
    assert q.fmt.signed is False and q.hi.item() == 2.0
    x = torch.tensor([0.0, 1.0, 4.0], requires_grad=True)
    q.train()
    y = q(x)
    assert q.hi.item() == pytest.approx(3.0)  # 0.5 * 2 + 0.5 * 4
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 1.0, 0.0]))  # 4 > 3: clipped, no gradient
