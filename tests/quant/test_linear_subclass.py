"""Subclasses of Linear / Conv: those that keep the base's forward (torch's NonDynamicallyQuantizableLinear,
MultiheadAttention's out_proj) are quantized as the base; those with a forward of their own are refused
in one line naming the layer (keep_fp keeps them in float)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import effdnn
import effdnn.techniques  # noqa: F401
from effdnn.errors import EffdnnError
from effdnn.quant.modules import QuantLinear, dense_type


class SameForward(nn.Linear):
    pass


class OwnForward(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class Attn(nn.Module):
    def __init__(self, lin: type = nn.Linear) -> None:
        super().__init__()
        self.inp = lin(8, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.head(self.mha(h, h, h, need_weights=False)[0])


DATA = [torch.randn(4, 5, 8) for _ in range(2)]


def test_dense_type_of_subclasses():
    assert dense_type(nn.modules.linear.NonDynamicallyQuantizableLinear(2, 2)) is nn.Linear
    assert dense_type(SameForward(2, 2)) is nn.Linear
    assert dense_type(OwnForward(2, 2)) is OwnForward


def test_out_proj_and_same_forward_subclasses_are_quantized():
    torch.manual_seed(0)
    model = Attn(SameForward).eval()
    q = effdnn.quantize(model, {"method": "ptq", "weight": {"granularity": "per_channel"}}, calib_data=DATA)
    assert type(q.mha.out_proj) is QuantLinear and type(q.inp) is QuantLinear
    rows = {r["layer"]: r for r in q.effdnn_report["ptq_layers"]}
    assert rows["mha.out_proj"]["weight"] == "int8 per_channel"
    w = q.mha.out_proj.weight.detach()  # used by F.multi_head_attention_forward: quantized in place
    scale = w.abs().amax(1, keepdim=True) / 127
    assert torch.allclose(w / scale, (w / scale).round(), atol=1e-3)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(x).flatten(), q(x).flatten(), dim=0)
    assert cos > 0.99


def test_a_subclass_with_its_own_forward_is_refused_in_one_line_naming_it():
    model = Attn(OwnForward).eval()
    with pytest.raises(EffdnnError, match=r"ptq: layer 'inp' \(OwnForward\) subclasses nn.Linear with a forward of its "
                                          r"own.*keep_fp: \['inp'\]"):
        effdnn.quantize(model, {"method": "ptq"}, calib_data=DATA)
    q = effdnn.quantize(model, {"method": "ptq", "keep_fp": ["inp"]}, calib_data=DATA)
    assert type(q.inp) is OwnForward and type(q.head) is QuantLinear
