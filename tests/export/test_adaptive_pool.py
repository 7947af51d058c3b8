"""Adaptive average pooling exports at input sizes torch's exporter refuses (not a multiple of the output:
replicated or overlapping bins), and onnxruntime computes torch's values."""
from __future__ import annotations

import pytest
import torch

from effdnn.export.adaptive_pool import pooling_matrix
from effdnn.export.onnx import export_onnx, run_onnx


def test_pooling_matrix_is_torchs_adaptive_pool() -> None:
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    for oh, ow in [(3, 2), (6, 6), (5, 7), (1, 4)]:
        y = pooling_matrix(5, oh).double() @ x @ pooling_matrix(7, ow).double().t()
        torch.testing.assert_close(y, torch.nn.functional.adaptive_avg_pool2d(x, (oh, ow)), rtol=0, atol=1e-7)


@pytest.mark.parametrize("size,out", [((1, 1), (6, 6)), ((5, 7), (3, 2)), ((8, 8), (4, 4))])
def test_export_matches_torch(size, out, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.AdaptiveAvgPool2d(out), torch.nn.Flatten()).eval()
    x = torch.randn(2, 3, *size)
    path = export_onnx(model, x, tmp_path / "m.onnx")
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(run_onnx(path, x)), model(x), rtol=1e-5, atol=1e-6)
