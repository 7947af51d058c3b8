"""Binary / ternary weight and activation quantizers: exact values, the papers' threshold rules on
hand-made tensors, straight-through gates, stochastic binarisation's expectation, TTQ's gradients."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import effdnn
import effdnn.techniques  # noqa: F401
from effdnn.errors import EffdnnError
from effdnn.models import build_model
from effdnn.quant.methods.bc import BinaryConnectWeight, hard_sigmoid
from effdnn.quant.methods.binary import (BinaryConv2d, BinaryLinear, ClipLatentWeights, SignActivation, clip_latent,
                                         glorot_h, sign_pm1)
from effdnn.quant.methods.bwn import ScaledSignWeight
from effdnn.quant.methods.ttq import TTQWeight
from effdnn.quant.methods.twn import TernaryWeight, twn_threshold

shapes = st.sampled_from([(4, 3, 3, 3), (8, 5), (1, 7), (6, 2, 5, 5)])
seeds = st.integers(0, 2**31 - 1)


def _w(shape, seed, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


@settings(max_examples=25, deadline=None)
@given(shapes, seeds)
def test_bwn_every_weight_is_plus_minus_alpha_per_channel(shape, seed):
    w = _w(shape, seed)
    q = ScaledSignWeight()(w)
    alpha = w.abs().flatten(1).mean(1)  # eq. 4: ||W||_l1 / n per filter
    for c in range(shape[0]):
        vals = q[c].flatten()
        assert torch.all((vals == alpha[c]) | (vals == -alpha[c]))
        assert torch.equal(torch.sign(vals), torch.where(w[c].flatten() >= 0, 1.0, -1.0))


@settings(max_examples=25, deadline=None)
@given(shapes, seeds, st.booleans())
def test_twn_every_weight_in_minus_alpha_zero_alpha(shape, seed, per_channel):
    w = _w(shape, seed)
    q = TernaryWeight(per_channel)(w)
    delta, alpha = twn_threshold(w, per_channel)
    rows = q.flatten(1) if per_channel else q.reshape(1, -1)
    for r, a in zip(rows, alpha):
        assert torch.all((r == a) | (r == 0) | (r == -a))


def test_twn_threshold_rule_on_a_hand_made_tensor():
    w = torch.tensor([[0.1, -0.2, 0.5, -1.0, 0.05]])
    delta, alpha = twn_threshold(w)
    assert delta.item() == pytest.approx(0.7 * 1.85 / 5)  # 0.259
    assert alpha.item() == pytest.approx((0.5 + 1.0) / 2)  # mean |W| over |W| > delta
    assert torch.equal(TernaryWeight()(w), torch.tensor([[0.0, 0.0, 0.75, -0.75, 0.0]]))


def test_bwn_alpha_on_a_hand_made_tensor():
    w = torch.tensor([[1.0, -3.0], [0.0, -0.5]])
    assert torch.equal(ScaledSignWeight()(w), torch.tensor([[2.0, -2.0], [0.25, -0.25]]))  # sign(0) = +1


@settings(max_examples=25, deadline=None)
@given(shapes, seeds)
def test_ttq_every_weight_in_minus_wn_zero_wp(shape, seed):
    w = _w(shape, seed)
    q = TTQWeight(w, t=0.05)
    with torch.no_grad():
        q.wp.fill_(0.37)
        q.wn.fill_(0.21)
    out = q(w)
    assert torch.all((out == 0.37 * torch.ones(1)) | (out == 0) | (out == -0.21 * torch.ones(1)))
    d = 0.05 * w.abs().max()
    assert torch.equal(out != 0, w.abs() > d)


def test_ttq_threshold_and_gradients_on_a_hand_made_tensor():
    w = torch.tensor([1.0, 0.04, -0.03, -0.5, 0.2], requires_grad=True)  # delta = 0.05 * 1.0
    q = TTQWeight(w.detach(), t=0.05)
    assert q.wp.item() == pytest.approx(0.6) and q.wn.item() == pytest.approx(0.5)  # init: means of I_p, I_n
    with torch.no_grad():
        q.wp.fill_(2.0)
        q.wn.fill_(3.0)
    out = q(w)
    assert torch.equal(out.detach(), torch.tensor([2.0, 0.0, 0.0, -3.0, 2.0]))
    g = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    out.backward(g)
    assert q.wp.grad.item() == pytest.approx(0.1 + 0.5)  # eq. 7: sum over I_p
    assert q.wn.grad.item() == pytest.approx(-0.4)  # eq. 7 with w_t = -W_n
    assert torch.allclose(w.grad, torch.tensor([0.2, 0.2, 0.3, 1.2, 1.0]))  # eq. 8: W_p g, 1 g, W_n g


def test_bc_deterministic_values_and_identity_gradient():
    w = torch.tensor([[0.3, -0.01, 0.0, 2.0]], requires_grad=True)
    q = BinaryConnectWeight(h=0.5)(w)
    assert torch.equal(q.detach(), torch.tensor([[0.5, -0.5, 0.5, 0.5]]))
    q.backward(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert torch.equal(w.grad, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))  # dC/dw := dC/dw_b


def test_bc_stochastic_expectation_is_hard_sigmoid():
    torch.manual_seed(0)
    h = 0.5
    values = torch.tensor([-0.7, -0.25, 0.0, 0.1, 0.4, 0.9])
    w = values.repeat(40000, 1)  # (40000, 6): many draws of each value
    q = BinaryConnectWeight(h, stochastic=True).train()(w)
    assert torch.all((q == h) | (q == -h))
    mean = q.mean(0)
    expected = h * (2 * hard_sigmoid(values / h) - 1)  # E[w_b] = H (2p - 1) = H clip(w / H, -1, 1)
    assert torch.allclose(mean, expected, atol=4 * h / math.sqrt(40000))
    assert torch.equal(BinaryConnectWeight(h, stochastic=True).eval()(values), h * sign_pm1(values))  # inference: sign


def test_glorot_h_and_latent_clipping():
    conv = nn.Conv2d(3, 8, 5)
    assert glorot_h(conv.weight) == pytest.approx(math.sqrt(1.5 / (3 * 25 + 8 * 25)))
    model = build_model("mlp", 1, 3, (4, 4))
    q = effdnn.Experiment(model, {"quantize": {"method": "bc", "h": 0.01}}).model  # bc clips in training
    layers = [m for m in q.modules() if isinstance(m, BinaryLinear)]
    assert layers and all(m.weight.abs().max() <= 0.01 for m in layers)  # clipped at conversion
    with torch.no_grad():
        for m in layers:
            m.weight.mul_(100)
    ClipLatentWeights().after_step(q, None)  # type: ignore[arg-type]
    assert all(m.weight.abs().max() <= 0.01 for m in layers)


def test_sign_activation_gated_ste():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    y = SignActivation.binarize(x)
    assert torch.equal(y.detach(), torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]))
    y.backward(torch.full_like(x, 2.0))
    assert torch.equal(x.grad, torch.tensor([0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0]))  # 1_{|x| <= 1}


def test_bwn_gradient_is_the_chain_rule_of_alpha_sign():
    w = torch.tensor([[0.5, -1.5, 0.25, -0.75]], requires_grad=True)
    g = torch.tensor([[1.0, 2.0, -1.0, 0.5]])
    ScaledSignWeight()(w).backward(g)
    s = torch.sign(w.detach())
    alpha = w.detach().abs().mean()
    expected = s / 4 * (g * s).sum() + g * alpha * (w.detach().abs() <= 1)  # eq. 7 (full chain rule)
    assert torch.allclose(w.grad, expected)


def test_xnor_k_map_matches_a_slow_reference():
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2, bias=False)
    layer = effdnn.quantize(nn.Sequential(nn.Identity(), conv, nn.Flatten()), {"method": "xnor", "keep_fp": [],
                                                                                 "bn_init_batches": 0})[1]
    assert isinstance(layer, BinaryConv2d)
    a = torch.randn(2, 3, 6, 5)
    K = layer.k_map(a)
    A = torch.nn.functional.pad(a.abs().mean(1), (1, 1, 1, 1))  # (B, H + 2, W + 2)
    ref = torch.empty(2, 1, 3, 3)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                ref[b, 0, i, j] = A[b, 2 * i:2 * i + 3, 2 * j:2 * j + 3].sum() / 9
    assert torch.allclose(K, ref, atol=1e-6)


def test_xnor_forward_is_sign_conv_times_k_alpha():
    conv = nn.Conv2d(2, 3, 3, bias=True)
    model = effdnn.quantize(nn.Sequential(nn.Identity(), conv), {"method": "xnor", "keep_fp": [], "bn_init_batches": 0})
    layer = model[1].eval()
    x = torch.randn(2, 2, 5, 5)
    a = layer.input_quant.normalize(x)
    alpha = layer.weight.abs().flatten(1).mean(1)
    ref = torch.nn.functional.conv2d(sign_pm1(a), sign_pm1(layer.weight)) * alpha.view(1, -1, 1, 1) * layer.k_map(a)
    assert torch.allclose(layer(x), ref + layer.bias.view(1, -1, 1, 1), atol=1e-5)


def test_bnn_defaults_first_last_fp_and_bn_before_sign():
    model = build_model("lenet5", 1, 10, (28, 28))
    data = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    q = effdnn.Experiment(model, {"quantize": {"method": "bnn"}}, data=data).model
    assert type(q.features[0]) is nn.Conv2d and type(q.classifier[-1]) is nn.Linear  # higher precision
    inner = [m for m in q.modules() if isinstance(m, (BinaryConv2d, BinaryLinear))]
    assert len(inner) == 3
    for m in inner:
        assert isinstance(m.input_quant, SignActivation) and m.input_quant.bn.num_batches_tracked > 0
        out = m.input_quant(torch.randn(4, m.weight.shape[1], *([6, 6] if isinstance(m, BinaryConv2d) else [])))
        assert torch.all((out == 1) | (out == -1))
        assert torch.all(m.weight_quant(m.weight).abs() == m.weight_quant.h)


def test_bad_input_is_one_clear_error():
    model = build_model("mlp", 1, 3, (4, 4))
    with pytest.raises(EffdnnError, match="keep_fp .* leave no layer to binarise"):
        effdnn.quantize(model, {"method": "bwn", "keep_fp": ["*"]})
    with pytest.raises(EffdnnError, match="quantize.tt"):
        effdnn.quantize(model, {"method": "ttq", "tt": 0.1})
    with pytest.raises(EffdnnError, match="calibration data"):
        effdnn.quantize(model, {"method": "xnor", "keep_fp": []})
    with pytest.raises(EffdnnError, match="no Conv2d / Linear"):
        effdnn.quantize(nn.Sequential(nn.ReLU()), {"method": "twn"})


def test_clip_latent_ignores_unclipped_methods():
    model = effdnn.quantize(build_model("mlp", 1, 3, (4, 4)), {"method": "twn"})
    before = [p.clone() for p in model.parameters()]
    clip_latent(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_batch_norm_option_wraps_binarised_layers_starting_at_the_float_output_statistics():
    """``batch_norm: true`` (BinaryConnect's normalised layers) puts a BatchNorm after each binarised
    layer whose affine part is the float layer's per-channel output mean / std, so the eval-mode output
    of each wrapped layer has the float layer's statistics on the calibration batches."""
    from effdnn.quant.methods.binary import OutputBatchNorm

    torch.manual_seed(0)
    model = build_model("lenet5", 1, 10, (28, 28))
    data = [torch.randn(32, 1, 28, 28) for _ in range(4)]
    spec = {"method": "bc", "batch_norm": True, "bn_init_batches": 4}
    q = effdnn.Experiment(model, {"quantize": spec}, data=data).model.eval()  # bc clips in training: hooks
    wrapped = [m for m in q.modules() if isinstance(m, OutputBatchNorm)]
    assert len(wrapped) == 5 and all(isinstance(w[0], (BinaryConv2d, BinaryLinear)) for w in wrapped)
    conv_f, conv_q = model.features[0].eval(), q.features[0]
    x = torch.cat(data)
    with torch.no_grad():
        f, b = conv_f(x), conv_q(x)
    dims = (0, 2, 3)
    torch.testing.assert_close(b.mean(dims), f.mean(dims), atol=0.05 * float(f.std()), rtol=0.05)
    torch.testing.assert_close(b.std(dims), f.std(dims), atol=0.05 * float(f.std()), rtol=0.05)
    packed = effdnn.Experiment(model, {"quantize": {"method": "bc", "batch_norm": True, "packed": True}}, data=data).model
    assert sum(isinstance(m, OutputBatchNorm) for m in packed.modules()) == 5
