"""Weights a parent multiplies through F.linear itself (nn.MultiheadAttention, Swin-style attention) run
the emulation too: no converted layer is silently left in float."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from effdnn.formats.float import FP8_152, FP16_169
from effdnn.lowp.gemm import GemmPolicy, LowpLinear, LowpMultiheadAttention, convert_layers

POLICY = GemmPolicy(weight=FP8_152, act=FP8_152, grad=FP8_152, out=FP16_169, acc=FP16_169, chunk=4)


class FunctionalAttention(nn.Module):  # as torchvision's ShiftedWindowAttention: F.linear on its layers' weights
    def __init__(self, functional: bool = True) -> None:
        super().__init__()
        self.qkv, self.proj, self.functional = nn.Linear(8, 24), nn.Linear(8, 8), functional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias) if self.functional else self.qkv(x)
        a = F.scaled_dot_product_attention(*qkv.chunk(3, -1))
        return F.linear(a, self.proj.weight, self.proj.bias) if self.functional else self.proj(a)


def test_functional_linear_on_an_emulated_weight_is_emulated():
    torch.manual_seed(0)
    func = FunctionalAttention()
    by_module = copy.deepcopy(func)
    by_module.functional = False
    for m in (func, by_module):
        convert_layers(m, lambda *_: POLICY)
    x = torch.randn(2, 5, 8, requires_grad=True)
    y, y_mod = func(x), by_module(x)
    assert torch.equal(y, y_mod) and func.qkv.lowp_calls == func.proj.lowp_calls == 1
    gx = torch.autograd.grad(y.sum(), x)[0]
    assert torch.equal(gx, torch.autograd.grad(y_mod.sum(), x)[0])
    assert F.linear is torch._C._nn.linear  # restored after the forward


def test_multihead_attention_projections_are_emulated():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    ref = copy.deepcopy(mha)
    convert_layers(nn.Sequential(mha), lambda *_: POLICY)
    assert isinstance(mha, LowpMultiheadAttention) and isinstance(mha.out_proj, LowpLinear)
    x = torch.randn(2, 5, 8)
    y, _ = mha(x, x, x, need_weights=False)
    assert mha.lowp_calls == 1 and mha.out_proj.lowp_calls == 1
    in_proj = convert_layers(nn.Sequential(nn.Linear(8, 24)), lambda *_: POLICY)[0]  # the same GEMM, by hand
    out_proj = convert_layers(nn.Sequential(nn.Linear(8, 8)), lambda *_: POLICY)[0]
    with torch.no_grad():
        in_proj.weight.copy_(ref.in_proj_weight), in_proj.bias.copy_(ref.in_proj_bias)
        out_proj.weight.copy_(ref.out_proj.weight), out_proj.bias.copy_(ref.out_proj.bias)
    q, k, v = (t.reshape(2, 5, 2, 4).transpose(1, 2) for t in in_proj(x).chunk(3, -1))
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), -1) @ v
    want = out_proj(a.transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(y, want, rtol=0, atol=1e-5)
    assert (y - ref(x, x, x, need_weights=False)[0]).abs().max() > 1e-3  # float32 MHA differs: rounding happened
    mha.eval()
    with torch.no_grad():  # no fused fast path in eval either
        mha(x, x, x, need_weights=False)
    assert mha.lowp_calls == 2
