"""Emulated GEMM layers: float32 policy equals torch's layers; rounding where the policy says."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effdnn.errors import EffdnnError
from effdnn.formats.float import FP8_152, FP16, FP16_169
from effdnn.lowp.accumulate import lowp_matmul
from effdnn.lowp.gemm import GemmPolicy, LowpConv2d, LowpLinear, LowpStats, convert_layers
from effdnn.lowp.fp8_training import fp8_policies


def _pair(layer: nn.Module, policy: GemmPolicy, stats=None):
    ref, emu = layer, copy.deepcopy(layer)
    seq = nn.Sequential(emu)
    convert_layers(seq, lambda *_: policy, stats)
    return ref, seq[0]


@pytest.mark.parametrize("layer,shape", [(nn.Linear(20, 7), (5, 20)), (nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 9, 9)),
                                         (nn.Conv2d(2, 5, (3, 2), dilation=2, bias=False), (3, 2, 10, 8))])
def test_float32_policy_equals_torch(layer, shape):
    ref, emu = _pair(layer, GemmPolicy())
    assert isinstance(emu, (LowpLinear, LowpConv2d))
    x = torch.randn(shape, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y_ref, y = ref(x), emu(x2)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y.backward(g)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(emu.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)


def test_fp16_linear_rounds_operands_outputs_and_errors():
    stats = LowpStats()
    ref, emu = _pair(nn.Linear(16, 8), GemmPolicy(FP16, FP16, FP16, FP16), stats)
    x = torch.randn(4, 16, requires_grad=True)
    y = emu(x)
    want = FP16.round(F.linear(FP16.round(x), FP16.round(ref.weight), ref.bias))
    assert torch.equal(y, want)
    g = torch.randn(4, 8) * 1e-9  # mostly below fp16's smallest subnormal (6e-8): underflows
    y.backward(g)
    assert torch.equal(x.grad, FP16.round(FP16.round(g) @ FP16.round(ref.weight)))
    assert stats.grad_underflow > 0 and stats.as_dict()["grad_underflow_frac"] > 0.5


def test_fp8_conv_uses_chunked_accumulation():
    policy = GemmPolicy(FP8_152, FP8_152, FP8_152, FP16_169, acc=FP16_169, chunk=4)
    ref, emu = _pair(nn.Conv2d(2, 3, 3, bias=False), policy)
    x = torch.randn(1, 2, 5, 5)
    y = emu(x)  # (1, 3, 3, 3)
    cols = F.unfold(FP8_152.round(x), 3).transpose(1, 2).reshape(9, 18)
    want = lowp_matmul(cols, FP8_152.round(ref.weight).reshape(3, 18).t(), FP16_169, None, 4)
    assert torch.equal(y, want.reshape(1, 3, 3, 3).permute(0, 3, 1, 2))
    y.sum().backward()
    assert torch.equal(FP16_169.round(emu.weight.grad), emu.weight.grad)  # gradients come out in FP16


def test_fp8_policies_keep_edges_fp16():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 3))
    convert_layers(model, fp8_policies("hfp8", FP16_169, 64))
    assert model[0].lowp_policy.weight == FP16_169 and model[3].lowp_policy.weight == FP16_169
    assert model[2].lowp_policy.weight.name == "fp8_e4m3" and model[2].lowp_policy.grad == FP8_152
    assert model[2].effdnn_precision().weight_bits == 8 and model[2].effdnn_precision().acc_bits == 16


def test_layers_the_emulation_cannot_reach_are_errors_naming_the_layer():
    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    for layer, what in [(nn.LSTM(4, 4), "fused recurrent"), (nn.Bilinear(2, 2, 3), "bilinear"), (MyLinear(2, 2), "subclass")]:
        with pytest.raises(EffdnnError, match=f"layer '1' .*{what}.*keep it in float"):
            convert_layers(nn.Sequential(nn.Linear(4, 4), layer), lambda *_: GemmPolicy())
    model = nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4))
    convert_layers(model, lambda *_: GemmPolicy(), keep_float=["1"])  # kept in float: the only skip
    assert isinstance(model[0], LowpLinear) and type(model[1]) is nn.LSTM
