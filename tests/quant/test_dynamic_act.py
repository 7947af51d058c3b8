"""Dynamic activation quantization: per-token / per-tensor scales at run time, chosen per layer in the
TensorSpec language; the PTQ report states the activation scheme (and when it is the default)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import effdnn
from effdnn.errors import EffdnnError
from effdnn.quant.config import TensorSpec
from effdnn.quant.dynamic import DynamicQuantizer
from tests.quant.tiny_bert import batches, tiny_bert


def test_per_token_scales_rows_independently() -> None:
    x = torch.tensor([[[1.0, -2.0, 0.5], [100.0, 3.0, -50.0]]])  # (1, 2 tokens, 3)
    y = DynamicQuantizer(8, "per_token")(x)
    s0, s1 = 2.0 / 127, 100.0 / 127
    assert torch.allclose(y[0, 0], torch.round(x[0, 0] / s0) * s0)
    assert torch.allclose(y[0, 1], torch.round(x[0, 1] / s1) * s1)
    assert y[0, 0, 1] == -2.0 and y[0, 1, 0] == 100.0  # each row's max is exact
    t = DynamicQuantizer(8, "per_tensor")(x)
    assert torch.allclose(t, torch.round(x / s1) * s1)  # one scale: the small row loses its detail
    assert (t[0, 0] - x[0, 0]).abs().max() > 5 * (y[0, 0] - x[0, 0]).abs().max()


def test_straight_through_gradient() -> None:
    x = torch.randn(4, 8, requires_grad=True)
    DynamicQuantizer(4, "per_token")(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("spec,msg", [
    ({"dynamic": "per_row"}, "dynamic"),
    ({"format": "float", "dynamic": "per_token"}, "symmetric int formats"),
    ({"symmetric": False, "dynamic": "per_token"}, "symmetric int formats"),
])
def test_spec_validation(spec: dict, msg: str) -> None:
    with pytest.raises(Exception, match=msg):
        TensorSpec.model_validate(spec)


def test_ptq_dynamic_per_layer_and_report() -> None:
    m, data = tiny_bert(), batches()
    q = effdnn.quantize(m, {"method": "ptq", "act": {"bits": 8, "dynamic": "per_token"},
                            "overrides": {"encoder.layer.1.output.dense": {"act": {"dynamic": "per_tensor"}},
                                          "pooler.dense": {"act": {"dynamic": None, "bits": 8}}}}, data)
    kinds = {n: getattr(l.input_quant, "kind", "static") for n, l in q.named_modules() if hasattr(l, "input_quant")}
    assert kinds["encoder.layer.0.attention.self.query"] == "per_token"
    assert kinds["encoder.layer.1.output.dense"] == "per_tensor"
    assert kinds["pooler.dense"] == "static"
    rows = {r["layer"]: r["act"] for r in q.effdnn_report["ptq_layers"]}
    assert rows["encoder.layer.0.attention.self.query"] == "int8 dynamic per_token"
    assert q.effdnn_report["ptq_act"] == "int8 dynamic per_token"
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(q(**data[0]).last_hidden_state.flatten(1),
                                                    m(**data[0]).last_hidden_state.flatten(1))
    assert cos.min() > 0.999


def test_act_default_is_stated() -> None:
    m, data = tiny_bert(), batches(2)
    default = effdnn.quantize(m, {"method": "ptq"}, data).effdnn_report["ptq_act"]
    assert default == "int8 static per_tensor, calibrator max (the default: act not given)"
    none = effdnn.quantize(m, {"method": "ptq", "act": None}, data).effdnn_report["ptq_act"]
    assert none == "float activations (act: null)"
    explicit = effdnn.quantize(m, {"method": "ptq", "act": {"bits": 8}}, data).effdnn_report["ptq_act"]
    assert "default" not in explicit


def test_dynamic_weights_refused() -> None:
    with pytest.raises(EffdnnError, match="dynamic scales are for activations"):
        effdnn.quantize(nn.Sequential(nn.Linear(4, 4)), {"method": "ptq", "weight": {"dynamic": "per_token"}}, [torch.randn(2, 4)])


def test_per_token_beats_static_on_token_outliers() -> None:
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(32, 16))
    x = torch.randn(64, 32)
    x[::8] *= 40  # a few tokens with large norms (the [SEP] / [CLS] pattern)
    y = lin(x)
    err = {}
    for name, act in {"static": {"bits": 8}, "token": {"bits": 8, "dynamic": "per_token"}}.items():
        q = effdnn.quantize(lin, {"method": "ptq", "act": act}, [x])
        err[name] = float((q(x) - y).detach()[1::8].pow(2).mean())
    assert err["token"] < 0.01 * err["static"]
