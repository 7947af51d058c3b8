"""PTQ int8 and its QDQ export on small torchvision models (random weights, BN statistics set on the
calibration batches): PTQ runs (Swin's functional qkv / proj weights included), its output stays close
to FP32, and onnxruntime running the exported QDQ graph computes what effdnn's model computes.
The full table on all 80 models: benchmarks/ptq_zoo.py."""
from __future__ import annotations

import pytest
import torch

import effdnn
from effdnn.export.onnx import export_onnx
from effdnn.export.qdq_divergence import first_divergence

torchvision = pytest.importorskip("torchvision")
pytest.importorskip("onnxruntime")

# (model, input size, min PTQ cosine vs FP32: measured at these seeds (0.70, 0.70, 0.78, 0.85, 0.30, 0.999)
# less a margin; random-weight nets at 32 px with BN statistics from 8 images are badly conditioned)
MODELS = [("mobilenet_v3_small", 32, 0.6), ("shufflenet_v2_x0_5", 32, 0.6), ("mnasnet0_5", 32, 0.7),
          ("regnet_x_400mf", 32, 0.8), ("efficientnet_b0", 32, 0.2), ("swin_t", 32, 0.99)]
# the QDQ file run by onnxruntime against effdnn's own model, quantizer by quantizer: every code equal up to
# the first one float summation order flips (one code off by one, its x/s within a few ulps of k + 1/2: the
# convolution before it summed in another order); a deep random-weight net then spreads that flip (here
# efficientnet_b0 ends at 0.985 and shufflenet_v2_x0_5 at 0.997, as far as effdnn's own channels-last run
# is from its contiguous one), so the output cosine is checked only where no code flipped


def _cos(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(torch.as_tensor(a).double().flatten(),
                                                       torch.as_tensor(b).double().flatten(), dim=0))


@pytest.mark.parametrize("name,size,min_cos", MODELS)
def test_ptq_and_qdq_export(name: str, size: int, min_cos: float, tmp_path, capsys) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 3, size, size, generator=g) for _ in range(2)]
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        for x in calib:
            model(x)  # train mode: BN statistics = the calibration batches' averages
    model.eval()
    q = effdnn.quantize(model, {"method": "ptq", "weight": {"granularity": "per_channel"}}, calib_data=calib)
    x = torch.randn(8, 3, size, size, generator=g)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert _cos(out, ref) >= min_cos
    if name == "swin_t":  # qkv / proj weights reach F.linear outside their modules: quantized in place
        rows = {r["layer"]: r for r in q.effdnn_report["ptq_layers"]}
        assert rows["features.1.0.attn.qkv"]["act"].startswith("fp32 (weight used outside")
        assert "features.1.0.attn.qkv (and 23 more layers)" in capsys.readouterr().err
    path = export_onnx(q, x, tmp_path / "q.onnx")
    d = first_divergence(q, path, x)
    assert d.unmatched == 0 and len(d.layers) >= 10
    assert d.float_order, f"{d.first}: x/s {d.boundary_distance:.2e} from a rounding boundary"
    if d.first is None:
        assert _cos(_ort_unfused(path, x), out) >= 0.9999


def _ort_unfused(path, x: torch.Tensor):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
