"""Integer deployment of QuantLinear layers (no torch.fx): int8 x int8 GEMMs (fbgemm, torch._int_mm)
and weight-only int8 / int4 kernels, checked against the exact integer arithmetic and against the
fake-quantized model; the state_dict holds the integer codes (real bytes)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import effdnn
from effdnn.errors import EffdnnError
from effdnn.quant.deploy_linear import DEQUANT_ROWS, Int8Linear, IntWeightLinear, deploy_linears, model_bytes
from effdnn.quant.modules import QuantLinear
from tests.quant.tiny_bert import SENTENCES, batches, embed, minilm, tiny_bert


def _lin(inp: int = 64, out: int = 32, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inp, out))


def _x(rows: int, inp: int = 64) -> torch.Tensor:
    x = torch.randn(rows, inp, generator=torch.Generator().manual_seed(1))
    x[:, 5] *= 20  # an outlier channel
    return x


@pytest.mark.parametrize("wbits,act,kernel", [
    (8, {"bits": 8, "dynamic": "per_token"}, "int_mm"),    # 8 x 8 bits could saturate fbgemm's int16 pairs
    (8, {"bits": 7, "dynamic": "per_token"}, "fbgemm"),
    (7, {"bits": 8, "dynamic": "per_token"}, "fbgemm"),
    (8, {"bits": 7, "dynamic": "per_tensor"}, "fbgemm"),
    (8, {"bits": 8}, "int_mm"),                            # static per-tensor, calibrated
    (6, {"bits": 8}, "fbgemm"),
])
def test_int8_linear_matches_fake_quant_and_integer_math(wbits: int, act: dict, kernel: str) -> None:
    x = _x(40)
    q = effdnn.quantize(_lin(), {"method": "ptq", "weight": {"bits": wbits, "granularity": "per_channel"}, "act": act}, [x])
    d = deploy_linears(q)
    layer = d[0]
    assert isinstance(layer, Int8Linear) and layer.kernel == kernel
    with torch.no_grad():
        ref, got = q(x), d(x)
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max())
        codes = torch.round(layer._codes(layer._smooth(x))[0])
        exact = (codes.double() @ layer.weight_codes.double().t()) * layer.weight_scale.double()
        assert torch.allclose(layer._gemm(codes).double(), exact, rtol=1e-6, atol=1e-6 * exact.abs().max())
    assert layer.weight_codes.dtype == torch.int8 and not any(t.dtype == torch.float32 and t.numel() == 64 * 32
                                                              for t in d.state_dict().values())


@pytest.mark.parametrize("bits,gran,kernel", [(8, {"granularity": "per_channel"}, "int8pack"),
                                              (4, {"granularity": "per_group", "group_size": 32}, "int4pack"),
                                              (3, {"granularity": "per_group", "group_size": 32}, "int4pack"),
                                              (4, {"granularity": "per_group", "group_size": 16}, "dequant")])
def test_weight_only_kernels(bits: int, gran: dict, kernel: str) -> None:
    q = effdnn.quantize(_lin(), {"method": "ptq", "weight": {"bits": bits, **gran}, "act": None}, [_x(8)])
    d = deploy_linears(q)
    layer = d[0]
    assert isinstance(layer, IntWeightLinear) and layer.kernel == kernel
    with torch.no_grad():
        for rows in (5, DEQUANT_ROWS + 6):  # the packed kernel, then dequantize + fp32 GEMM
            x = _x(rows)
            ref, got = q(x), d(x)
            assert torch.allclose(got, ref, rtol=1e-4, atol=2e-4 * ref.abs().max()), (rows, (got - ref).abs().max())
        assert torch.equal(layer.dequantized_weight(), q[0].weight_quant(q[0].weight))


def test_state_dict_is_the_real_bytes() -> None:
    q = effdnn.quantize(_lin(128, 64), {"method": "ptq", "weight": {"bits": 4, "granularity": "per_group", "group_size": 32},
                                       "act": None}, [_x(8, 128)])
    d = deploy_linears(q)
    sd = d.state_dict()
    assert sd["0.weight_codes"].dtype == torch.uint8 and sd["0.weight_codes"].shape == (64, 64)
    assert model_bytes(d) == 64 * 128 // 2 + 64 * 4 * 4 + 64 * 4  # int4 codes + fp32 group scales + fp32 bias
    w8 = deploy_linears(effdnn.quantize(_lin(128, 64), {"method": "ptq", "act": {"dynamic": "per_token"}}, [_x(8, 128)]))
    assert model_bytes(w8) == 64 * 128 + 64 * 4 + 64 * 4
    d.load_state_dict(sd)  # round trip


def test_deploy_tiny_bert_swaps_every_layer() -> None:
    m, data = tiny_bert(), batches()
    for spec in ({"method": "smoothquant", "act": {"bits": 7, "dynamic": "per_token"}},
                 {"method": "gptq", "weight": {"bits": 4, "granularity": "per_group", "group_size": 32}, "embedding": {"bits": 8}}):
        q = effdnn.quantize(m, spec, data)
        d = deploy_linears(q)
        assert not any(isinstance(x, QuantLinear) for x in d.modules())
        assert sum(isinstance(x, (Int8Linear, IntWeightLinear)) for x in d.modules()) == 13
        with torch.no_grad():
            ref, got = q(**data[0]).last_hidden_state, d(**data[0]).last_hidden_state
        assert torch.allclose(got, ref, atol=1e-3), (got - ref).abs().max()
        assert model_bytes(d) < 0.5 * model_bytes(m)
        reported = effdnn.cost(d, data[0]).size_bytes  # the cost model counts the same integer bytes
        assert abs(reported - model_bytes(d)) < 0.02 * model_bytes(d), (reported, model_bytes(d))


def test_deploy_refusals() -> None:
    with pytest.raises(EffdnnError, match="no quantized Linear layer"):
        deploy_linears(tiny_bert())
    q = effdnn.quantize(_lin(), {"method": "ptq", "weight": {"bits": 8, "symmetric": False, "granularity": "per_channel"}, "act": None}, [_x(8)])
    with pytest.raises(EffdnnError, match="layer 0: affine"):
        deploy_linears(q)


def test_minilm_int8_weights_and_int4_gptq() -> None:
    model, tok = minilm()
    batch = dict(tok(SENTENCES, return_tensors="pt", padding=True))
    ref = embed(model, batch)
    q = effdnn.quantize(model, {"method": "ptq", "act": None, "embedding": {"bits": 8}}, [batch])
    d = deploy_linears(q)
    cos = torch.nn.functional.cosine_similarity(embed(d, batch), ref)
    assert cos.min() > 0.999
    assert model_bytes(d) < 0.27 * model_bytes(model)
