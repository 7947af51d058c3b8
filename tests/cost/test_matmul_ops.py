"""effdnn.cost counts every matmul-like op against hand counts: einsum, bmm, baddbmm, addmm, matmul
with broadcasting, scaled_dot_product_attention, nn.MultiheadAttention (fast path and not), a weight
used by F.linear outside its module, grouped and transposed convolutions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import effdnn
from effdnn.cost import trace_ops


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)  # used through F.linear(x, self.qkv.weight), never called
        self.w = nn.Parameter(torch.randn(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (2, 3, 8)
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias)  # 2*3 rows x 8 x 24 = 1152
        q, k, v = qkv.chunk(3, -1)  # (2, 3, 8) each
        s = torch.einsum("bld,bmd->blm", q, k)  # 2 * 3 * 3 * 8 = 144
        a = torch.bmm(s, v)  # 2 * 3 * 8 * 3 = 144
        a = torch.baddbmm(a, s, v)  # 144
        y = a @ self.w  # broadcast (2, 3, 8) @ (8, 5): 2 * 3 * 5 * 8 = 240
        z = torch.addmm(torch.zeros(3, 5), x[0], self.w)  # 3 * 5 * 8 = 120
        t = torch.matmul(torch.randn(4, 1, 3, 8), x.transpose(1, 2))  # (4, 2, 3, 3) x 8 = 576
        o = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1))  # 2*3*3*(8+8) = 288
        return y.sum() + z.sum() + t.sum() + o.sum()


def test_functional_matmuls_match_hand_counts() -> None:
    records = trace_ops(Functional(), torch.randn(2, 3, 8))
    assert sum(r.macs for r in records) == 1152 + 144 + 144 + 144 + 240 + 120 + 576 + 288
    qkv = [r for r in records if r.module == "qkv"]  # charged to the layer whose weight it uses
    assert [r.macs for r in qkv] == [1152] and qkv[0].weight_numel == 24 * 8


def test_multihead_attention_fast_and_slow_paths() -> None:
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    rows = 2 * 5
    hand = 3 * rows * 16 * 16 + 2 * rows * 5 * 16 + rows * 16 * 16
    with torch.no_grad():
        fast = sum(r.macs for r in trace_ops(_NeedWeights(mha, False), x))  # inference fast path: one fused kernel
    slow = sum(r.macs for r in trace_ops(_NeedWeights(mha, True), x))  # need_weights: the Python path
    assert fast == hand and slow == hand


class _NeedWeights(nn.Module):
    def __init__(self, mha: nn.MultiheadAttention, need_weights: bool) -> None:
        super().__init__()
        self.mha, self.need_weights = mha, need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=self.need_weights)[0]


def test_encoder_layer_fast_path() -> None:
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    rows = 10
    hand = 4 * rows * 16 * 16 + 2 * rows * 5 * 16 + 2 * rows * 16 * 32
    assert sum(r.macs for r in trace_ops(layer, x)) == hand


def test_grouped_and_transposed_convolutions() -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1), nn.ConvTranspose2d(4, 2, 2, stride=2))
    x = torch.randn(1, 8, 6, 6)
    hand = 8 * 36 * 9 + 4 * 36 * 8 + (4 * 36) * 2 * 4
    assert sum(r.macs for r in trace_ops(model, x)) == hand
    assert effdnn.cost(model, x).macs == hand
