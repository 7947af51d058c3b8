"""Per-channel scales of the binary / ternary / DoReFa weights against slow per-channel references, and
the depthwise precision policy (int8 by default, overridable per layer, reported, warned about)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import effdnn
import effdnn.techniques  # noqa: F401
from effdnn.quant.methods.binary import BinaryConv2d
from effdnn.quant.methods.bwn import ScaledSignWeight
from effdnn.quant.methods.dorefa import DoReFaFormat, DoReFaWeightQuantizer, dorefa_weight
from effdnn.quant.methods.ttq import TTQWeight
from effdnn.quant.methods.twn import TernaryWeight
from effdnn.quant.modules import QuantConv2d
from effdnn.quant.plan import is_depthwise

SHAPES = [(6, 3, 3, 3), (8, 1, 3, 3), (5, 7)]


def _w(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * torch.linspace(0.05, 2.0, shape[0]).reshape(-1, *[1] * (len(shape) - 1))


# -- slow references: one output channel at a time, the paper's per-layer formula on that channel -------
def _bwn_ref(w):
    return torch.stack([c.abs().mean() * torch.where(c >= 0, 1.0, -1.0) for c in w])


def _twn_ref(w):
    out = []
    for c in w:
        delta = 0.7 * c.abs().sum() / c.numel()  # eq. 10
        big = c.abs() > delta
        alpha = c.abs()[big].sum() / big.sum()  # eq. 8
        out.append(alpha * ((c > delta).float() - (c < -delta).float()))
    return torch.stack(out)


@pytest.mark.parametrize("shape", SHAPES)
def test_bwn_alpha_per_filter_and_per_tensor_match_the_slow_reference(shape):
    w = _w(shape)
    assert torch.allclose(ScaledSignWeight(per_channel=True)(w), _bwn_ref(w))
    assert torch.allclose(ScaledSignWeight(per_channel=False)(w), w.abs().mean() * torch.where(w >= 0, 1.0, -1.0))


@pytest.mark.parametrize("shape", SHAPES)
def test_twn_per_channel_matches_the_slow_reference(shape):
    w = _w(shape, 1)
    assert torch.allclose(TernaryWeight(per_channel=True)(w), _twn_ref(w))


@pytest.mark.parametrize("shape", SHAPES)
def test_ttq_per_channel_forward_and_gradients_match_the_slow_reference(shape):
    w = _w(shape, 2).requires_grad_(True)
    q = TTQWeight(w, t=0.05, per_channel=True)
    with torch.no_grad():
        q.wp.copy_(torch.rand(shape[0]) + 0.1)
        q.wn.copy_(torch.rand(shape[0]) + 0.1)
    g = torch.randn(shape)
    out = q(w)
    out.backward(g)
    for c in range(shape[0]):
        wc, gc = w[c].detach(), g[c]
        d = 0.05 * wc.abs().max()  # eq. 9 on this channel
        pos, neg = wc > d, wc < -d
        ref = torch.where(pos, q.wp[c], torch.where(neg, -q.wn[c], torch.zeros_like(wc)))
        assert torch.allclose(out[c], ref)
        assert torch.allclose(q.wp.grad[c], gc[pos].sum())  # eq. 7
        assert torch.allclose(q.wn.grad[c], -gc[neg].sum())
        scale = torch.where(pos, q.wp[c], torch.where(neg, q.wn[c], torch.ones_like(wc)))  # eq. 8
        assert torch.allclose(w.grad[c], gc * scale)


def test_ttq_per_channel_initial_scales_are_each_channels_twn_alphas():
    w = _w((4, 2, 3, 3), 3)
    q = TTQWeight(w, t=0.05, per_channel=True)
    for c in range(4):
        d = 0.05 * w[c].abs().max()
        assert q.wp[c].item() == pytest.approx(w[c][w[c] > d].mean().item())
        assert q.wn[c].item() == pytest.approx((-w[c][w[c] < -d]).mean().item())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rescale", [True, False])
def test_dorefa_per_channel_is_eq9_on_each_channel(shape, rescale):
    w = _w(shape, 4)
    pc = dorefa_weight(w, 3, rescale, per_channel=True)
    for c in range(shape[0]):
        assert torch.allclose(pc[c], dorefa_weight(w[c:c + 1], 3, rescale, per_channel=False)[0])


def test_dorefa_per_channel_static_format_is_exact_on_the_trained_weight():
    w = _w((6, 2, 3, 3), 5)
    q = DoReFaWeightQuantizer(3, rescale=True, per_channel=True)
    w_hat = q(w).detach()
    static = q.to_static(w_hat)
    assert static.params.scale.shape == (6,)
    assert torch.allclose(static(w_hat), w_hat, atol=1e-6)
    assert DoReFaFormat(3, True).storage_bits(w.numel(), static.params) == w.numel() * 3 + 32 * 6


# -- the policy -------------------------------------------------------------------------------------------
def _dw_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),  # depthwise: "2"
                         nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),  # grouped, not depthwise: "4"
                         nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 10))


DATA = [torch.randn(16, 1, 6, 6) for _ in range(2)]
LOW = {"weight": {"bits": 4}, "act": {"bits": 4}}


def test_is_depthwise():
    m = _dw_net()
    assert [n for n, x in m.named_modules() if is_depthwise(x)] == ["2"]


def test_qat_keeps_depthwise_at_8_bits_by_default_and_reports_it():
    q = effdnn.quantize(_dw_net(), {"method": "lsq", **LOW}, calib_data=DATA)
    assert q.effdnn_report["depthwise_policy"] == {"policy": "keep_8bit", "layers": ["2"]}
    rows = {r["layer"]: r for r in q.effdnn_report["qat_layers"]}
    assert rows["2"]["policy"] == "depthwise keep_8bit" and "8" in rows["2"]["weight"] and "8" in rows["2"]["act"]
    assert "4" in rows["4"]["weight"] and "policy" not in rows["4"]  # grouped conv: not depthwise
    assert q[2].weight_quant.fmt.bits == 8 and q[4].weight_quant.fmt.bits == 4


def test_qat_policy_off_keep_fp_and_overrides_decide_depthwise_layers():
    q = effdnn.quantize(_dw_net(), {"method": "lsq", "depthwise": "quantize", **LOW}, calib_data=DATA)
    assert q[2].weight_quant.fmt.bits == 4 and q.effdnn_report["depthwise_policy"]["layers"] == []
    q = effdnn.quantize(_dw_net(), {"method": "lsq", "depthwise": "keep_fp", **LOW}, calib_data=DATA)
    assert type(q[2]) is nn.Conv2d
    with pytest.warns(UserWarning, match="depthwise layer '2' quantized to 3-bit weights by an override"):
        q = effdnn.quantize(_dw_net(), {"method": "lsq", **LOW, "overrides": {"2": {"weight": {"bits": 3}}}}, calib_data=DATA)
    assert q[2].weight_quant.fmt.bits == 3 and q.effdnn_report["depthwise_policy"]["layers"] == []


def test_ptq_low_bit_keeps_depthwise_at_8_bits_and_int8_ptq_is_unchanged():
    q = effdnn.quantize(_dw_net(), {"method": "ptq", "weight": {"bits": 4, "granularity": "per_channel"}}, calib_data=DATA)
    assert q[2].weight_quant.fmt.bits == 8 and q[4].weight_quant.fmt.bits == 4
    assert q.effdnn_report["depthwise_policy"]["layers"] == ["2"]
    q = effdnn.quantize(_dw_net(), {"method": "ptq"}, calib_data=DATA)
    assert q.effdnn_report["depthwise_policy"]["layers"] == []


@pytest.mark.parametrize("method", ["bwn", "twn", "ttq", "xnor"])
def test_binary_methods_keep_depthwise_int8_by_default(method):
    exp = effdnn.Experiment(_dw_net(), {"quantize": {"method": method}}, data=DATA)
    q = exp.model
    assert type(q[2]) is QuantConv2d and q[2].weight_quant.fmt.bits == 8 and q[2].input_quant is None
    assert exp.ctx.extra["depthwise_policy"] == {"policy": "keep_8bit", "layers": ["2"]}
    w8 = q[2].weight_quant(q[2].weight).detach()
    scale = q[2].weight.detach().abs().flatten(1).amax(1) / 127  # int8 per output channel
    assert torch.allclose(w8 / scale.reshape(-1, 1, 1, 1), (w8 / scale.reshape(-1, 1, 1, 1)).round(), atol=1e-4)


def test_binarizing_depthwise_layers_anyway_warns_in_one_line_and_keep_8bit_still_wins():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        exp = effdnn.Experiment(_dw_net(), {"quantize": {"method": "bwn", "depthwise": "binarize"}}, data=DATA)
    lines = [str(w.message) for w in rec if "depthwise" in str(w.message)]
    assert lines == ["bwn: depthwise layers binarised (depthwise: binarize): 2; expect a large accuracy loss "
                     "(the default keeps them at 8 bits)"]
    assert type(exp.model[2]) is BinaryConv2d
    exp = effdnn.Experiment(_dw_net(), {"quantize": {"method": "bwn", "depthwise": "binarize", "keep_8bit": ["4"]}},
                            data=DATA)
    assert type(exp.model[4]) is QuantConv2d and type(exp.model[2]) is BinaryConv2d
    exp = effdnn.Experiment(_dw_net(), {"quantize": {"method": "twn", "depthwise": "keep_fp"}}, data=DATA)
    assert type(exp.model[2]) is nn.Conv2d


def test_binary_int8_layers_convert_to_static_weights_at_finish():
    exp = effdnn.Experiment(_dw_net(), {"quantize": {"method": "bwn"}}, data=DATA)
    model = exp.finish()
    from effdnn.quant.qat_quantizers import QATQuantizer
    assert not any(isinstance(m, QATQuantizer) for m in model.modules())
    layers = {c.name: c for c in effdnn.cost(model, DATA[0][:1]).layers}
    assert layers["2"].weight_bits == 8 and layers["4"].weight_bits == 1  # depthwise int8, the rest binary


@pytest.mark.parametrize("method", ["xnor", "bnn"])
def test_binary_inputs_of_small_fan_in_warn_and_min_binary_fan_in_keeps_them_real(method):
    """Layer "6" (a 1x1 conv of 8 inputs: 9 levels per output) gets binary inputs by default, with one
    warning line naming it; ``min_binary_fan_in: 16`` keeps its inputs real and its weights binary, and
    its output is then the binary weights applied to the real input."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        exp = effdnn.Experiment(_dw_net(), {"quantize": {"method": method}}, data=DATA)
    lines = [str(w.message) for w in rec if "fan-in" in str(w.message)]
    assert lines == [f"{method}: binary inputs to 1 layer of fan-in below 64 (6): their dot products take few "
                     "values; min_binary_fan_in keeps their inputs real"]
    assert exp.model[6].input_quant is not None
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        exp = effdnn.Experiment(_dw_net(), {"quantize": {"method": method, "min_binary_fan_in": 16}}, data=DATA)
    assert not [w for w in rec if "fan-in" in str(w.message)]
    layer = exp.model[6]
    assert type(layer) is BinaryConv2d and layer.input_quant is None
    row = next(r for r in exp.ctx.extra["binary_layers"] if r["layer"] == "6")
    assert row["act"] == "fp32" and row["weight"] in ("binary", "ternary") and "fan-in 8 < min_binary_fan_in 16" in row["why"]
    x = torch.randn(2, 8, 6, 6)
    w = layer.weight_quant(layer.weight).detach()
    assert set(torch.unique(w.flatten(1) / w.flatten(1).abs().amax(1, keepdim=True)).tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(layer(x), nn.functional.conv2d(x, w, layer.bias))


def test_min_binary_fan_in_is_refused_by_methods_with_real_inputs():
    with pytest.raises(Exception, match="min_binary_fan_in"):
        effdnn.Experiment(_dw_net(), {"quantize": {"method": "bwn", "min_binary_fan_in": 16}}, data=DATA)
