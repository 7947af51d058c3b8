"""QDQ ONNX export of PTQ and converted QAT models, run in onnxruntime and compared with the fake-quantized PyTorch model."""
from __future__ import annotations

import pytest
import torch

import effdnn
from effdnn.context import ExperimentContext
from effdnn.export import int8_fusion_saturates, op_counts, ort_fused_ops, prediction_agreement
from effdnn.models import build_model
from effdnn.quant.qat_quantizers import QATQuantizer
from effdnn.registry import QUANTIZE
from effdnn.train import TrainSpec, evaluate
from tests.quant.digits_model import trained_digits_lenet


@pytest.fixture(scope="module")
def digits_lenet():
    return trained_digits_lenet()


@pytest.mark.parametrize("spec, qs, dqs", [
    # 5 layers x (input Q/DQ, int8 weight initializer -> DQ) + each layer output that reaches the next
    # Q through MaxPool / Flatten / Clip quantized where the integer layer ends (2 convs; 6 bits: the 2
    # hidden fcs' Clip too)
    ({"act": {"calibrator": "kl"}}, 7, 12),
    ({"weight": {"bits": 4, "granularity": "per_channel"}, "act": {"bits": 6, "calibrator": "mse"}}, 9, 14),
    # codebook weights: float constants, so no integer layer
    ({"weight": {"format": "kmeans", "bits": 4}, "act": {"bits": 8}}, 5, 5),
])
def test_qdq_onnx_agrees_with_pytorch(tmp_path, digits_lenet, spec, qs, dqs) -> None:
    m, data = digits_lenet
    calib = torch.utils.data.DataLoader(data.train, batch_size=64)
    q = effdnn.quantize(m, {"method": "ptq", **spec}, calib)
    path = effdnn.export_onnx(q, next(iter(calib))[0][:2], tmp_path / "q.onnx")
    ops = op_counts(path)
    assert ops.get("QuantizeLinear") == qs and ops.get("DequantizeLinear") == dqs
    test = torch.utils.data.DataLoader(data.test, batch_size=128)
    if int8_fusion_saturates():  # fused u8 x s8 kernels saturate here: the graph itself must be exact
        agree, worst = prediction_agreement(q, path, test, optimize=False)
        assert agree == 1.0 and worst < 0.05
        return
    agree, worst = prediction_agreement(q, path, test)
    assert agree >= 0.995
    assert worst < 0.5  # a few codes may flip where float rounding of the conv differs


def test_seven_bit_weights_agree_fused_on_every_cpu(tmp_path, digits_lenet) -> None:
    """onnxruntime's reduce-range case: 7-bit weights cannot saturate its int16 pair sums."""
    m, data = digits_lenet
    calib = torch.utils.data.DataLoader(data.train, batch_size=64)
    q = effdnn.quantize(m, {"method": "ptq", "weight": {"bits": 7}, "act": {"calibrator": "kl"}}, calib)
    path = effdnn.export_onnx(q, next(iter(calib))[0][:2], tmp_path / "q7.onnx")
    assert ort_fused_ops(path, tmp_path / "q7_opt.onnx").get("QLinearConv", 0) >= 1
    agree, worst = prediction_agreement(q, path, torch.utils.data.DataLoader(data.test, batch_size=128))
    assert agree >= 0.995 and worst < 0.5


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


@pytest.mark.parametrize("spec", [
    {"method": "qat", "weight": {"bits": 4, "granularity": "per_channel"}, "act": {"bits": 4}},
    {"method": "lsq", "weight": {"bits": 4}, "act": {"bits": 4}},  # first / last layers at 8 bits
    {"method": "pact", "weight": {"bits": 4}, "act": {"bits": 4}},  # DoReFa weights: constants
], ids=lambda s: s["method"])
def test_qat_model_converted_by_its_finalizer_exports_as_qdq(tmp_path, digits_lenet, spec) -> None:
    """The runner's path: transform -> a few fine-tuning steps -> finalizers (convert_qat) -> ONNX."""
    m, data = digits_lenet
    ctx = ExperimentContext(data=data, device=torch.device("cpu"), batch_size=64, calib_batches=4)
    config = QUANTIZE.parse(spec)
    q = QUANTIZE.method_of(config).transform(m, config, ctx)
    assert any(isinstance(mod, QATQuantizer) for mod in q.modules())
    ctx.fit(q, TrainSpec(epochs=1, lr=5e-4, max_batches=8), desc=spec["method"])
    for fin in ctx.finalizers:
        q = fin(q)
    assert not any(isinstance(mod, QATQuantizer) for mod in q.modules())
    x = torch.stack([data.test[i][0] for i in range(2)])
    path = effdnn.export_onnx(q, x, tmp_path / "qat.onnx")
    ops = op_counts(path)
    # 5 layers x (input Q / DQ, int8 weight initializer -> DQ) + each layer output reaching a Q through
    # MaxPool / Flatten / Clip (4-bit inputs) quantized where the integer layer ends: 4 (qat), 3 (lsq: the
    # last layer's 8-bit input has no Clip), 2 (pact: its 8-bit DoReFa first / last weights (odd codes up
    # to 255) are float constants, so the first conv is no integer layer)
    qs = {"qat": 9, "lsq": 8, "pact": 7}[spec["method"]]
    dqs = qs + (3 if spec["method"] == "pact" else 5)
    assert ops.get("QuantizeLinear") == qs and ops.get("DequantizeLinear") == dqs
    test = torch.utils.data.DataLoader(data.test, batch_size=128)
    if not int8_fusion_saturates():
        agree, _ = prediction_agreement(q, path, test)  # fused by onnxruntime into QLinearConv / QLinearMatMul
        assert agree >= 0.995
    agree, worst = prediction_agreement(q, path, test, optimize=False)  # the graph as exported: same values
    # Same values up to float rounding, except where an input lands on a half step (x / s = k + 0.5): there the
    # two sides' last-bit differences (onnxruntime's threaded sums, x / s against torch's) may round it to
    # neighbouring codes. One such flip in the classifier's input moves a logit by s * |w| at most.
    last = [mod for mod in q.modules() if hasattr(mod, "input_quant")][-1]
    with torch.no_grad():
        one_code = float(last.input_quant.scale.max() * last.weight_quant(last.weight).abs().max())
    assert agree == 1.0 and worst <= one_code + 1e-4, (worst, one_code)
    assert evaluate(q, data.test) > 0.9  # still a working classifier after QAT + conversion


def test_every_lenet_convolution_fuses_and_the_layer_output_pairs_change_no_value(tmp_path) -> None:
    """Conv -> ReLU -> MaxPool -> Flatten -> Q: the Q copied to the convolution's end lets onnxruntime fuse
    both convolutions (it moves a Q over MaxPool, not over Flatten); unfused, the codes are the same."""
    import numpy as np
    import onnx

    from effdnn.export.onnx import run_onnx, onnx_session
    from effdnn.export.qdq_placement import quantize_layer_outputs
    from effdnn.models.lenet5 import LeNet5

    torch.manual_seed(0)
    calib = [torch.randn(32, 1, 28, 28) for _ in range(2)]
    q = effdnn.quantize(LeNet5().eval(), {"method": "ptq", "weight": {"granularity": "per_channel"},
                                          "act": {"symmetric": False, "signed": False}}, calib)
    path = effdnn.export_onnx(q, calib[0][:2], tmp_path / "l.onnx")
    assert ort_fused_ops(path, tmp_path / "l_opt.onnx").get("QLinearConv", 0) == 2
    g = onnx.load(str(path))
    assert quantize_layer_outputs(g) == 0  # idempotent: each layer output is quantized once
    before = effdnn.export_onnx(q, calib[0][:2], tmp_path / "b.onnx", int8_weights=False)  # no graph passes
    x = torch.randn(64, 1, 28, 28)
    a = run_onnx(onnx_session(before, optimize=False), x)
    b = run_onnx(onnx_session(path, optimize=False), x)
    assert np.array_equal(a, b)
