"""QDQ ONNX models: what the exporter wrote, what onnxruntime fuses, and whether it agrees with PyTorch.

``effdnn.export_onnx`` on a fake-quantized model already writes QDQ: each integer quantizer of <= 8
bits exports as QuantizeLinear -> DequantizeLinear (activations uint8 after a ReLU, int8 otherwise;
per-channel int8 weights), so onnxruntime's graph optimizer can fuse Q -> DQ -> Conv -> Q into
QLinearConv. These helpers inspect and check such a file.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..utils.batches import iter_inputs, move
from ..utils.cpu import int8_pairs_saturate


def int8_fusion_saturates() -> bool:
    """Whether onnxruntime's fused int8 kernels (QLinearConv, QGemm) can saturate on this CPU.

    On x86 without VNNI (AVX2, or AVX-512 without VNNI) onnxruntime's u8 x s8 GEMM adds pairs of
    products in int16 (vpmaddubsw, ``effdnn.utils.cpu``), which saturates when 8-bit weights meet large
    activation codes; its own quantizer uses ``reduce_range`` (7-bit weights) there. Weights of at most 7
    bits are exact on every CPU; the unfused graph (``prediction_agreement(..., optimize=False)``) is
    exact everywhere."""
    return int8_pairs_saturate()


def op_counts(path: str | Path) -> dict[str, int]:
    """Node types of an ONNX file and how many of each."""
    import onnx

    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node))


def ort_fused_ops(path: str | Path, optimized_path: str | Path) -> dict[str, int]:
    """Node types after onnxruntime's CPU graph optimizations (QLinearConv etc. where it fused)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(optimized_path)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return op_counts(optimized_path)


@torch.no_grad()
def prediction_agreement(model: nn.Module, path: str | Path, data: Iterable[Any], max_batches: int | None = None,
                         threads: int | None = None, optimize: bool = True) -> tuple[float, float]:
    """(top-1 agreement, max |logit difference|) between ``model`` and the ONNX file on ``data``.

    ``optimize=False`` runs the graph as written (no QLinearConv fusion): a QDQ graph then computes the
    fake-quantized model's values to float rounding; fused, onnxruntime quantizes the bias to int32 at
    scale S_x S_w and requantizes, which moves a few codes at 4 bits."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    model.eval()
    agree = total = 0
    worst = 0.0
    for x in iter_inputs(data, max_batches):
        ref = model(move(x, "cpu")).float()
        out = torch.from_numpy(sess.run(None, {name: x.numpy().astype(np.float32)})[0])
        agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
        total += ref.shape[0]
        worst = max(worst, float((out - ref).abs().max()))
    return agree / max(total, 1), worst
