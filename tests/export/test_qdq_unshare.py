"""Layers that read one tensor get their own QuantizeLinear (so onnxruntime fuses each), and every one of
them keeps the model's exact scale: set apart by the axis attribute a per-tensor scale ignores, not by a
scale moved an ulp (which flips the codes whose x / s lies at a rounding boundary)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import effdnn
from effdnn.export.onnx import export_onnx
from effdnn.export.qdq_divergence import first_divergence
from effdnn.quant.fake_quant import Quantizer

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


class TwoReaders(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.a(h) + self.b(h)


def test_readers_of_one_tensor_keep_the_models_scale(tmp_path) -> None:
    torch.manual_seed(0)
    calib = [torch.randn(4, 3, 12, 12) for _ in range(2)]
    q = effdnn.quantize(TwoReaders().eval(), {"method": "ptq", "act": {"calibrator": "max"}}, calib_data=calib)
    assert float(q.a.input_quant.scale) == float(q.b.input_quant.scale)  # one tensor, one calibrated scale
    x = torch.randn(8, 3, 12, 12)
    path = export_onnx(q, x, tmp_path / "q.onnx")
    model = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"}
    act_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    readers = [n for n in act_q if n.input[0] == act_q[-1].input[0]]
    assert len(readers) == 2 and len({tuple(a.i for a in n.attribute) for n in readers}) == 2
    scales = {np.float32(m.scale.reshape(-1)[0]).tobytes() for m in q.modules() if isinstance(m, Quantizer) and m.role == "act"}
    for n in act_q:
        assert np.asarray({**inits, **consts}[n.input[1]], dtype=np.float32).tobytes() in scales
    d = first_divergence(q, path, x)
    assert d.first is None and len(d.layers) == 3


def test_file_is_topologically_sorted_after_the_graph_passes(tmp_path) -> None:
    """The Q / DQ pair put where a layer ends (before MaxPool / Flatten) reads its consumer's scale, which
    the exporter emits later: the written nodes are sorted again, so the checker and shape inference pass."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 5 * 5, 4)).eval()
    calib = [torch.randn(4, 3, 12, 12) for _ in range(2)]
    q = effdnn.quantize(model, {"method": "ptq", "act": {"calibrator": "max"}}, calib_data=calib)
    path = export_onnx(q, torch.randn(2, 3, 12, 12), tmp_path / "q.onnx")
    m = onnx.load(str(path))
    assert any(n.name.endswith("_at_layer") for n in m.graph.node)
    onnx.checker.check_model(m)
    typed = onnx.shape_inference.infer_shapes(m).graph.value_info
    assert typed and all(v.type.tensor_type.elem_type for v in typed)
