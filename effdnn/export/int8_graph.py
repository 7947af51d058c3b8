"""Integer initializers in an exported ONNX graph: the file stores int8 weights, not floats.

torch's exporter writes a fake-quantized weight as ``float initializer -> QuantizeLinear ->
DequantizeLinear``: the file is as large as FP32's and onnxruntime quantizes the weights again at load.
:func:`fold_weight_quantizers` evaluates each such QuantizeLinear once, as ONNX defines it,

    q = saturate(round_half_even(w / s) + z)          (ONNX QuantizeLinear, per tensor or per axis)

and stores q as an int8 / uint8 initializer feeding the DequantizeLinear directly; the graph computes
the same values, and activation Q / DQ pairs stay as they are. A ``Transpose`` right after such a
DequantizeLinear (torch's ``F.linear`` on 3-D inputs exports as ``MatMul(x, Transpose(W))``) is folded
into the initializer and the DequantizeLinear's axis, so onnxruntime's QDQ selectors see
``DQ(x) -> MatMul <- DQ(W)`` and fuse it into an integer kernel (MatMulIntegerToFloat / QLinearMatMul).

:func:`quantize_embedding_tables` stores every ``Gather`` table (embeddings) as int8 rows with one
scale per row, s_r = max_j |E_rj| / 127 (symmetric, zero point 0), and rewrites the lookup as
``Gather(Q, ids) * Gather(s, ids)``: only the gathered rows are dequantized at run time.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

INT_TYPES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


class Graph:
    """Lookups over an onnx GraphProto: initializers, Constant outputs, each tensor's consumers."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.g, self.nh = graph, numpy_helper
        self.inits = {i.name: i for i in graph.initializer}
        self.consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for n in graph.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.outputs = {o.name for o in graph.output}

    def value(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return self.nh.to_array(self.inits[name])
        node = self.consts.get(name)
        if node is not None:
            for a in node.attribute:
                if a.name == "value":
                    return self.nh.to_array(a.t)
        return None

    def add_init(self, array: np.ndarray, name: str) -> str:
        while name in self.inits:
            name += "_"
        t = self.nh.from_array(array, name)
        self.g.initializer.append(t)
        self.inits[name] = t
        return name

    def drop_unused_inits(self) -> None:
        used = {i for n in self.g.node for i in n.input} | self.outputs
        keep = [i for i in self.g.initializer if i.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(keep)


def _axis(node: Any, default: int = 1) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), default)


def quantize_linear(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear on the host: per tensor, or per ``axis`` for 1-D scales."""
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * w.ndim
        shape[axis % w.ndim] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    lo, hi = INT_TYPES[zero.dtype]
    q = np.rint(w.astype(np.float32) / scale.astype(np.float32)) + zero.astype(np.int32)
    return np.clip(q, lo, hi).astype(zero.dtype)


def _constant_input(g: Graph, name: str) -> np.ndarray | None:
    """The value of ``name`` when it is an initializer, or a Clip of one by constant bounds (weights
    of fewer than 8 bits export as Clip -> QuantizeLinear)."""
    if name in g.inits:
        return g.value(name)
    clip = next((n for n in g.g.node if n.op_type == "Clip" and n.output[0] == name), None)
    if clip is None or clip.input[0] not in g.inits:
        return None
    bounds = [g.value(i) if i else None for i in list(clip.input[1:3]) + [""] * (3 - len(clip.input))]
    if any(i and b is None for i, b in zip(list(clip.input[1:3]), bounds)):
        return None
    lo, hi = bounds[0], bounds[1]
    return np.clip(g.value(clip.input[0]), lo if lo is not None else -np.inf, hi if hi is not None else np.inf)


def _drop_dead_nodes(model: Any) -> None:
    """Remove nodes none of whose outputs is read (a Clip left behind by the folding), repeatedly."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if n.op_type in ("Clip", "Constant") and not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            model.graph.node.remove(n)


def fold_weight_quantizers(model: Any) -> int:
    """Replace ``float initializer [-> Clip] -> QuantizeLinear`` by an integer initializer (see the module
    doc); returns how many weights were folded."""
    g = Graph(model.graph)
    drop, folded = [], 0
    for q in list(model.graph.node):
        if q.op_type != "QuantizeLinear" or len(q.input) < 3:
            continue
        w, s, z = _constant_input(g, q.input[0]), g.value(q.input[1]), g.value(q.input[2])
        if w is None or s is None or z is None or w.dtype != np.float32 or z.dtype not in INT_TYPES:
            continue
        name = g.add_init(quantize_linear(w, s, z, _axis(q)), q.input[0] + "_quantized")
        for consumer in g.consumers[q.output[0]]:
            for k, i in enumerate(consumer.input):
                if i == q.output[0]:
                    consumer.input[k] = name
        drop.append(q)
        folded += 1
    for q in drop:
        model.graph.node.remove(q)
    _drop_dead_nodes(model)
    _fold_transposes(model)
    Graph(model.graph).drop_unused_inits()
    return folded


def _fold_transposes(model: Any) -> None:
    """``DQ(int init, axis a) -> Transpose(perm)`` -> ``DQ(transposed init, axis perm.index(a))``."""
    g = Graph(model.graph)
    drop = []
    for dq in model.graph.node:
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in g.inits or len(g.consumers[dq.input[0]]) != 1:
            continue
        users = g.consumers[dq.output[0]]
        if len(users) != 1 or users[0].op_type != "Transpose" or dq.output[0] in g.outputs:
            continue
        tr = users[0]
        q = g.value(dq.input[0])
        perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), list(range(q.ndim))[::-1])
        init = g.inits[dq.input[0]]
        init.CopyFrom(g.nh.from_array(np.ascontiguousarray(q.transpose(perm)), init.name))
        s = g.value(dq.input[1])
        if s is not None and s.size > 1:
            axis = perm.index(_axis(dq) % q.ndim)
            for a in dq.attribute:
                if a.name == "axis":
                    a.i = axis
        dq.output[0] = tr.output[0]
        drop.append(tr)
    for tr in drop:
        model.graph.node.remove(tr)


def quantize_embedding_tables(model: Any, min_rows: int = 2) -> int:
    """Store every float ``Gather`` table as int8 rows with per-row scales (see the module doc)."""
    from onnx import TensorProto, helper

    g = Graph(model.graph)
    done = 0
    for node in list(model.graph.node):
        if node.op_type != "Gather" or node.input[0] not in g.inits or _axis(node, 0) != 0:
            continue
        table = g.value(node.input[0])
        if table is None or table.dtype != np.float32 or table.ndim != 2 or table.shape[0] < min_rows:
            continue
        scale = np.abs(table).max(axis=1, keepdims=True) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        codes = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
        base = node.input[0]
        qname, sname = g.add_init(codes, base + "_int8"), g.add_init(scale, base + "_row_scale")
        out, ids = node.output[0], node.input[1]
        node.input[0], node.output[0] = qname, out + "_int8"
        at = list(model.graph.node).index(node) + 1
        new = [helper.make_node("Cast", [out + "_int8"], [out + "_float"], to=TensorProto.FLOAT),
               helper.make_node("Gather", [sname, ids], [out + "_scale"], axis=0),
               helper.make_node("Mul", [out + "_float", out + "_scale"], [out])]
        for k, n in enumerate(new):
            model.graph.node.insert(at + k, n)
        done += 1
    Graph(model.graph).drop_unused_inits()
    return done


def _dup_dq_per_consumer(model: Any, g: Graph) -> None:
    """A DequantizeLinear read by several nodes becomes one per reader."""
    import copy

    for dq in list(model.graph.node):
        users = g.consumers.get(dq.output[0], []) if dq.op_type == "DequantizeLinear" else []
        if len(users) < 2 or dq.output[0] in g.outputs:
            continue
        at = list(model.graph.node).index(dq)
        for j, user in enumerate(users[1:], 1):
            new = copy.deepcopy(dq)
            new.name, new.output[0] = f"{dq.name}_reader{j}", f"{dq.output[0]}_reader{j}"
            model.graph.node.insert(at + 1, new)
            for k, i in enumerate(user.input):
                if i == dq.output[0]:
                    user.input[k] = new.output[0]


def _split_q_per_dq(model: Any, g: Graph) -> None:
    """A QuantizeLinear read by several DequantizeLinear nodes becomes one per reader."""
    import copy

    for q in list(model.graph.node):
        dqs = [n for n in g.consumers.get(q.output[0], []) if n.op_type == "DequantizeLinear"] if q.op_type == "QuantizeLinear" else []
        at = list(model.graph.node).index(q) if len(dqs) > 1 else 0
        for j, dq in enumerate(dqs[1:], 1):
            new = copy.deepcopy(q)
            new.name, new.output[0] = f"{q.name}_reader{j}", f"{q.output[0]}_reader{j}"
            model.graph.node.insert(at + 1, new)
            dq.input[0] = new.output[0]


def unshare_activation_quantizers(model: Any) -> int:
    """Give every integer layer its own activation QuantizeLinear, one onnxruntime will not merge.

    Layers that read one tensor (attention's query / key / value) calibrate the same scale; the
    exporter and onnxruntime's common-subexpression pass then merge their Q -> DQ pairs into one
    QuantizeLinear read by several layers, which onnxruntime's QDQ selectors leave unfused (float
    MatMuls). Each reader gets its own QuantizeLinear, and the i-th of those with the same input, scale
    and zero point gets ``axis = i + 1`` so they stay apart: a per-tensor (scalar) scale ignores the
    axis, so every reader computes the model's codes exactly; only past 8 readers of one tensor (the
    axis range of a 4-d tensor) does the i-th take the scale i float32 ulps up instead. Returns how many
    quantizers were set apart."""
    from onnx import helper

    g = Graph(model.graph)
    _dup_dq_per_consumer(model, g)
    _split_q_per_dq(model, Graph(model.graph))
    g = Graph(model.graph)
    groups: dict[tuple, list[Any]] = defaultdict(list)
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in g.inits or len(q.input) < 3:
            continue
        if not any(n.op_type == "DequantizeLinear" for n in g.consumers.get(q.output[0], [])):
            continue  # integer ops read it (MatMulInteger): one quantized tensor may serve several layers
        s, z = g.value(q.input[1]), g.value(q.input[2])
        if s is not None and z is not None and s.size == 1:
            groups[(q.input[0], s.tobytes(), z.tobytes())].append(q)
    moved = 0
    for qs in groups.values():
        scale = g.value(qs[0].input[1]).astype(np.float32)
        taken = {a.i for a in qs[0].attribute if a.name == "axis"} or {1}
        free = [a for a in (2, 3, 0, -1, -2, -3, -4, 1) if a not in taken]
        for j, q in enumerate(qs[1:], 1):
            moved += 1
            if j <= len(free):
                del q.attribute[:]
                q.attribute.append(helper.make_attribute("axis", free[j - 1]))
                continue
            s = scale
            for _ in range(j - len(free)):
                s = np.nextafter(s, np.float32(np.inf))
            name = g.add_init(np.asarray(s, dtype=np.float32), f"{q.output[0]}_scale")
            q.input[1] = name
            for dq in g.consumers.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    dq.input[1] = name
    return moved
