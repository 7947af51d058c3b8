"""Where a QDQ file run by onnxruntime first computes other codes than the fake-quantized PyTorch model.

Every activation QuantizeLinear of the file (the exporter names it after the quantizer's module scope,
``/model/features/features.1/.../input_quant/QuantizeLinear``) is made a graph output, and each one is
compared, code by code, with what the matching ``Quantizer`` computes on the same batch (its
``fmt.quantize`` of the input it saw). The first quantizer whose codes differ tells what the difference
is:

- float summation order: a handful of codes, each one off by one, at inputs whose x / s lies within a
  few float32 ulps of a rounding boundary k + 1/2 (the convolution before it summed in another order,
  and one side rounded up, the other down); a deep random-weight network then spreads it layer by layer;
- an export error (a Q / DQ misplaced, a scale or zero point written wrong, an op computed differently):
  codes off at values nowhere near a boundary.

``first_divergence`` returns the per-quantizer flip counts and that first quantizer's boundary distance.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..quant.fake_quant import Quantizer


@dataclasses.dataclass
class QuantizerFlips:
    name: str  # the quantizer's module name in the PyTorch model
    flipped: int  # codes that differ
    total: int
    max_codes: int  # the largest difference, in codes


@dataclasses.dataclass
class Divergence:
    layers: list[QuantizerFlips]  # graph order; unmatched Q nodes left out
    unmatched: int  # activation Q nodes with no quantizer of that scope
    first: QuantizerFlips | None  # the first quantizer whose codes differ (None: every code agrees)
    boundary_distance: float  # max over its flipped codes of |x/s - (k + 1/2)|, PyTorch's and onnxruntime's x

    @property
    def float_order(self) -> bool:
        """Whether the first difference is float order alone: one-code flips at rounding boundaries."""
        return self.first is None or (self.first.max_codes == 1 and self.boundary_distance < 1e-4)


def _module_name(node_name: str) -> str | None:
    """``/model/a/a.1/b/in_q/QuantizeLinear`` -> ``a.1.b.in_q`` (scopes repeat their parent's prefix)."""
    parts = node_name.split("/")
    if len(parts) < 4 or not re.fullmatch(r"QuantizeLinear(_\d+)?(_reader\d+)?", parts[-1]):
        return None  # not the exporter's node (the graph passes' own Q nodes: _at_layer)
    full: list[str] = []
    for seg in parts[2:-1]:  # past "" and the export wrapper's "model"
        if full and seg.startswith(full[-1] + "."):
            full[-1] = seg
        else:
            full.append(seg)
    return ".".join(full)


@torch.no_grad()
def first_divergence(model: nn.Module, path: str | Path, x: torch.Tensor, optimize: bool = False) -> Divergence:
    """Compare every activation quantizer's codes between ``model`` and the QDQ file at ``path`` on ``x``
    (``optimize``: with onnxruntime's graph optimizations; the float inputs are then not compared)."""
    import onnx
    import onnxruntime as ort

    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    quantizers = {n: m for n, m in model.named_modules() if isinstance(m, Quantizer)}

    def hook(name: str):
        def record(mod: Quantizer, args: tuple, out: torch.Tensor) -> None:
            if mod.role == "act" and mod.mode == "quantize":
                seen.setdefault(name, []).append((args[0].detach().clone(), mod.fmt.quantize(args[0].detach(), mod.params)))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in quantizers.items()]
    try:
        model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    info = {v.name: v for v in graph.graph.value_info}
    named = [n for n in graph.graph.node if n.op_type == "QuantizeLinear" and _module_name(n.name) is not None]
    nodes = [n for n in named if _module_name(n.name) in seen]
    unmatched = len(named) - len(nodes)
    outputs = {o.name for o in graph.graph.output}
    zp_type = {i.name: i.data_type for i in graph.graph.initializer}
    zp_type.update({c.output[0]: c.attribute[0].t.data_type for c in graph.graph.node if c.op_type == "Constant" and c.attribute})
    for n in nodes:
        for t, kind in ((n.output[0], zp_type.get(n.input[2], onnx.TensorProto.UINT8)), (n.input[0], onnx.TensorProto.FLOAT)):
            if t in outputs or (optimize and kind == onnx.TensorProto.FLOAT and t == n.input[0]):
                continue
            known = info.get(t)
            graph.graph.output.append(known if known is not None and known.type.tensor_type.elem_type else
                                      onnx.helper.make_tensor_value_info(t, kind, None))
            outputs.add(t)
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x.numpy()})))
    calls: dict[str, int] = {}
    call_of: dict[str, int] = {}  # node name -> which call of its quantizer it is
    layers, first, distance = [], None, 0.0
    for n in nodes:
        name, base = _module_name(n.name), n.name.split("_reader")[0]
        if base in call_of:  # a copy of one Q per reader (int8_graph.unshare_activation_quantizers):
            i = call_of[base]  # the quantizers it stands for computed the same codes (same input and scale)
        else:
            i = call_of[base] = calls[name] = calls.get(name, -1) + 1
        if i >= len(seen[name]):
            unmatched += 1
            continue
        x_torch, codes = seen[name][i]
        ort_codes = torch.from_numpy(got[n.output[0]].astype(np.int64))
        if ort_codes.shape != codes.shape:
            unmatched += 1
            continue
        diff = (ort_codes - codes).abs()
        row = QuantizerFlips(name if base == n.name else f"{name} (a reader's copy)", int((diff > 0).sum()), diff.numel(), int(diff.max()) if diff.numel() else 0)
        layers.append(row)
        if first is None and row.flipped:
            first = row
            scale = quantizers[name].params.scale
            s = scale.reshape(-1)[0].double() if scale.numel() == 1 else None
            if s is None or optimize:
                distance = float("inf")  # per-channel activations or no float inputs: not measured
            else:
                where = diff > 0
                t = torch.cat([x_torch.double()[where], torch.from_numpy(got[n.input[0]]).double()[where]]) / s
                distance = float((t - t.floor() - 0.5).abs().max())
    return Divergence(layers, unmatched, first, distance)


__all__ = ["Divergence", "QuantizerFlips", "first_divergence"]
