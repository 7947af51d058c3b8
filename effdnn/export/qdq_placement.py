"""QDQ placement for onnxruntime's integer fusion: quantize a layer's output where the layer ends.

An activation quantizer sits at the input of the layer that consumes it, so a convolution followed by
ReLU, max-pooling and a flatten exports as ``DQ -> Conv -> Relu -> MaxPool -> Flatten -> Q``.
onnxruntime fuses ``DQ -> Conv [-> Relu] -> Q`` into QLinearConv only when the Q follows the layer; it
moves a Q back over a MaxPool but not over a Flatten, so on LeNet-5 it fused the first convolution
and left the second in float (``benchmarks/int8_latency.py``: 1 of 2 QLinearConv).

:func:`quantize_layer_outputs` inserts, after a Conv / Gemm / MatMul (and its ReLU) whose operands are
dequantized, a copy of the consumer's Q -> DQ pair (same scale and zero
point) right after the producing node, before the chain of value-selecting ops (MaxPool, Flatten,
Reshape, Transpose, Squeeze, Unsqueeze, and the Clip a quantizer of fewer than 8 bits exports before
its Q). The values are unchanged: those ops commute with a per-tensor quantizer (they select, move or
clamp values, and rounding is monotone, so max(Q(a), Q(b)) = Q(max(a, b)) and Q(clip(DQ(Q(x)))) =
Q(clip(x))), and Q(DQ(Q(x))) = Q(x), so the graph computes the same codes with or without the fusion.
"""
from __future__ import annotations

from typing import Any

from .int8_graph import Graph

LAYER_OPS = {"Conv", "Gemm", "MatMul"}
SELECTING_OPS = {"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Clip"}


def _producers(model: Any) -> dict[str, Any]:
    return {o: n for n in model.graph.node for o in n.output}


def _chain(g: Graph, producers: dict[str, Any], start: str) -> tuple[list[Any], str]:
    """The value-selecting nodes leading back from ``start`` (each read by one node only), and the
    tensor where that chain begins."""
    chain, t = [], start
    while (p := producers.get(t)) is not None and p.op_type in SELECTING_OPS and len(g.consumers[t]) == 1 \
            and t not in g.outputs:
        chain.append(p)
        t = p.input[0]
    return chain, t


def _integer_layer(producers: dict[str, Any], t: str) -> bool:
    """Whether ``t`` is the output of a Conv / Gemm / MatMul [-> Relu] whose two operands are dequantized
    (a layer onnxruntime fuses into an integer kernel when a Q follows)."""
    p = producers.get(t)
    if p is not None and p.op_type == "Relu":
        p = producers.get(p.input[0])
    if p is None or p.op_type not in LAYER_OPS:
        return False
    return all(getattr(producers.get(i), "op_type", None) == "DequantizeLinear" for i in p.input[:2])


def quantize_layer_outputs(model: Any) -> int:
    """Insert a Q -> DQ pair after each layer whose output reaches an activation QuantizeLinear only
    through value-selecting ops (see the module doc); returns how many pairs were inserted."""
    from onnx import helper

    g, producers, done = Graph(model.graph), _producers(model), 0
    for q in list(model.graph.node):
        if q.op_type != "QuantizeLinear" or len(q.input) < 3 or q.input[0] in g.inits:
            continue
        s = g.value(q.input[1])
        if s is None or s.size != 1:  # per-axis activations: a flatten moves the axis
            continue
        chain, t = _chain(g, producers, q.input[0])
        if not chain or not _integer_layer(producers, t):
            continue  # nothing in between, or no layer onnxruntime could fuse ends there
        first = chain[-1]
        qn = helper.make_node("QuantizeLinear", [t, q.input[1], q.input[2]], [f"{t}_layer_q"], name=f"{q.name}_at_layer")
        dq = helper.make_node("DequantizeLinear", [f"{t}_layer_q", q.input[1], q.input[2]], [f"{t}_layer_dq"],
                              name=f"{q.name}_at_layer_dq")
        at = list(model.graph.node).index(first)
        model.graph.node.insert(at, dq)
        model.graph.node.insert(at, qn)
        first.input[0] = f"{t}_layer_dq"
        done += 1
    return done


def sort_nodes(model: Any) -> None:
    """Put the graph's nodes in topological order (ONNX requires it; shape inference reads the graph in
    order), keeping the written order wherever it already is one. The Q / DQ pairs inserted above read
    their consumer's scale and zero point, which the exporter may emit later as Constant nodes."""
    nodes = list(model.graph.node)
    known = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    done: set[int] = set()
    order: list[int] = []

    def visit(k: int) -> None:
        stack = [(k, False)]
        while stack:
            j, expanded = stack.pop()
            if j in done:
                continue
            if expanded:
                done.add(j)
                order.append(j)
                continue
            stack.append((j, True))
            for i in reversed(nodes[j].input):
                p = producer.get(i)
                if i not in known and p is not None and p not in done:
                    stack.append((p, False))

    for k in range(len(nodes)):
        visit(k)
    if order != list(range(len(nodes))):
        del model.graph.node[:]
        model.graph.node.extend(nodes[k] for k in order)


__all__ = ["LAYER_OPS", "SELECTING_OPS", "quantize_layer_outputs", "sort_nodes"]
