"""The int8 engine path (torch x86 quantized kernels fed with our params) against the fake-quant model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import effdnn
from effdnn.errors import EffdnnError
from effdnn.models import build_model
from effdnn.quant.deploy_int8 import to_int8


def _agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x).argmax(1) == b(x).argmax(1)).float().mean())


@pytest.mark.parametrize("act", [{"calibrator": "kl"}, {"symmetric": False, "signed": False}])
def test_lenet_int8_engine_matches_fake_quant(act) -> None:
    torch.manual_seed(0)
    m = build_model("lenet5", 1, 10, (28, 28)).eval()
    calib = [torch.randn(32, 1, 28, 28) for _ in range(2)]
    q = effdnn.quantize(m, {"method": "ptq", "act": act}, calib)
    i8 = to_int8(q)
    kinds = {type(mod).__name__ for mod in i8.modules()}
    assert {"ConvReLU2d", "LinearReLU", "Linear"} <= kinds
    x = torch.randn(128, 1, 28, 28)
    with torch.no_grad():
        assert (i8(x) - q(x)).abs().max() < 0.1 * q(x).abs().max()
    assert _agreement(q, i8, x) >= 0.95


def test_resnet_int8_engine_fuses_bn_relu_and_residual_add() -> None:
    torch.manual_seed(0)
    m = build_model("resnet", 1, 10, (8, 8), depth=8, width=8).eval()
    q = effdnn.quantize(m, {"method": "ptq"}, [torch.randn(32, 1, 8, 8) for _ in range(2)])
    i8 = to_int8(q)
    code = i8.code
    assert code.count(".add_relu(") == 3
    assert type(i8.fc).__name__ == "FloatOutLinear"  # the classifier's int32 sums leave as fp32 logits
    n_relu_conv = sum(type(mod).__name__ == "ConvReLU2d" for mod in i8.modules())
    assert n_relu_conv == 4  # stem + each block's conv1 (BN folded to Identity in between)
    x = torch.randn(64, 1, 8, 8)
    assert _agreement(q, i8, x) >= 0.9


def test_unsupported_formats_are_errors() -> None:
    m = build_model("lenet5", 1, 10, (8, 8)).eval()
    q = effdnn.quantize(m, {"method": "ptq", "weight": {"format": "kmeans", "bits": 4}}, [torch.randn(4, 1, 8, 8)])
    with pytest.raises(EffdnnError, match="signed symmetric integer weights"):
        to_int8(q)
    q = effdnn.quantize(m, {"method": "ptq", "act": None}, [torch.randn(4, 1, 8, 8)])
    with pytest.raises(EffdnnError, match="float inputs"):
        to_int8(q)


def test_relu6_runs_on_codes_and_float_consumers_get_fp32_sums() -> None:
    """ReLU6 commutes with quantization (runs on the uint8 codes); a convolution read by a float residual
    add outputs its int32 sums as fp32, so the engine computes its fake-quantized model to one code."""
    from effdnn.quant.deploy_int8 import int8_plan

    torch.manual_seed(0)
    m = build_model("mobilenetv2", 1, 10, (16, 16), width=0.35).eval()
    q = effdnn.quantize(m, {"method": "ptq", "act": {"symmetric": False, "signed": False}},
                        [torch.randn(32, 1, 16, 16) for _ in range(2)])
    i8 = to_int8(q, reduce_range="weight")  # exact on every CPU
    kinds = [type(mod).__name__ for mod in i8.modules()]
    assert "ReLU6" in kinds and "FloatOutConv2d" in kinds and "FloatOutLinear" in kinds
    assert i8.code.count("dequantize") < kinds.count("ReLU6") // 2  # was one dequantize / quantize pair per ReLU6
    x = torch.randn(64, 1, 16, 16)
    ref = int8_plan(i8).reference
    assert _agreement(ref, i8, x) >= 0.98
