"""Adaptive average pooling of any input size in ONNX: two MatMuls with constant pooling matrices.

ONNX has no adaptive pooling; torch's exporter writes ``adaptive_avg_pool2d`` as GlobalAveragePool
(output 1 x 1) or as an AveragePool when the input size is a multiple of the output size, and refuses
the rest ("Unsupported: ONNX export of operator adaptive_avg_pool2d"), e.g. VGG's and AlexNet's 7 x 7 /
6 x 6 pool on a small input, where it replicates or overlaps bins. Output bin i of an axis of length n
into m bins averages inputs floor(i n / m) .. ceil((i + 1) n / m) - 1 (torch's definition), so the
pooling is y = P_h x P_w^T with P[i, j] = 1 / |bin i| for j in bin i: an exact rewrite for the static
spatial size of the example input (the exported graph's spatial size is static anyway).
"""
from __future__ import annotations

from typing import Any

import torch


def pooling_matrix(n: int, m: int) -> torch.Tensor:
    """(m, n): row i averages torch's adaptive bin i of an axis of length n."""
    p = torch.zeros(m, n)
    for i in range(m):
        lo, hi = (i * n) // m, -((-(i + 1) * n) // m)
        p[i, lo:hi] = 1.0 / (hi - lo)
    return p


def _symbolic(g: Any, x: Any, output_size: Any) -> Any:
    from torch.onnx import symbolic_helper, symbolic_opset9

    sizes = symbolic_helper._get_tensor_sizes(x)
    out = symbolic_helper._maybe_get_const(output_size, "is")
    static = sizes is not None and len(sizes) == 4 and all(isinstance(v, int) for v in sizes[2:]) \
        and isinstance(out, (list, tuple)) and len(out) == 2
    if not static:
        return symbolic_opset9.adaptive_avg_pool2d(g, x, output_size)
    (h, w), (oh, ow) = sizes[2:], [s if s is not None else d for s, d in zip(out, sizes[2:])]
    if h % oh == 0 and w % ow == 0:  # torch's own export (GlobalAveragePool / AveragePool) is exact here
        return symbolic_opset9.adaptive_avg_pool2d(g, x, output_size)
    rows = g.op("MatMul", g.op("Constant", value_t=pooling_matrix(h, oh)), x)  # (oh, h) @ (N, C, h, w)
    return g.op("MatMul", rows, g.op("Constant", value_t=pooling_matrix(w, ow).t().contiguous()))  # @ (w, ow)


def register_adaptive_pool(opset: int) -> None:
    """Route ``aten::adaptive_avg_pool2d`` of torch's TorchScript exporter through :func:`_symbolic`."""
    torch.onnx.register_custom_op_symbolic("aten::adaptive_avg_pool2d", _symbolic, opset)


__all__ = ["pooling_matrix", "register_adaptive_pool"]
