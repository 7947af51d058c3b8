"""QDQ ONNX export of PTQ models, run in onnxruntime and compared with the fake-quantized PyTorch model."""
from __future__ import annotations

import pytest
import torch

import effdnn
from effdnn.export import op_counts, ort_fused_ops, prediction_agreement
from effdnn.models import build_model
from tests.quant.digits_model import trained_digits_lenet


@pytest.fixture(scope="module")
def digits_lenet():
    return trained_digits_lenet()


@pytest.mark.parametrize("spec, qdq_pairs", [
    ({"act": {"calibrator": "kl"}}, 10),  # 5 layers x (input, weight)
    ({"weight": {"bits": 4, "granularity": "per_channel"}, "act": {"bits": 6, "calibrator": "mse"}}, 10),
    ({"weight": {"format": "kmeans", "bits": 4}, "act": {"bits": 8}}, 5),  # codebook weights: constants
])
def test_qdq_onnx_agrees_with_pytorch(tmp_path, digits_lenet, spec, qdq_pairs) -> None:
    m, data = digits_lenet
    calib = torch.utils.data.DataLoader(data.train, batch_size=64)
    q = effdnn.quantize(m, {"method": "ptq", **spec}, calib)
    path = effdnn.export_onnx(q, next(iter(calib))[0][:2], tmp_path / "q.onnx")
    ops = op_counts(path)
    assert ops.get("QuantizeLinear") == qdq_pairs and ops.get("DequantizeLinear") == qdq_pairs
    test = torch.utils.data.DataLoader(data.test, batch_size=128)
    agree, worst = prediction_agreement(q, path, test)
    assert agree >= 0.995
    assert worst < 0.5  # a few codes may flip where float rounding of the conv differs


def test_resnet_qdq_with_residual_add_fuses_in_onnxruntime(tmp_path) -> None:
    torch.manual_seed(0)
    m = build_model("resnet", 1, 10, (8, 8), depth=8, width=8).eval()
    calib = [torch.randn(16, 1, 8, 8) for _ in range(2)]
    q = effdnn.quantize(m, {"method": "ptq"}, calib)
    path = effdnn.export_onnx(q, calib[0][:2], tmp_path / "r.onnx")
    agree, worst = prediction_agreement(q, path, [torch.randn(64, 1, 8, 8)])
    assert agree >= 0.95 and worst < 0.05
    fused = ort_fused_ops(path, tmp_path / "r_opt.onnx")
    assert fused.get("QLinearConv", 0) >= 1
