"""ONNX export of a Linear with dynamic (per-token / per-tensor) activations as integer ops.

A ``QuantLinear`` whose input quantizer is dynamic (``quant.dynamic``) computes, per token t,
y_t = s_t * sum_k q_{t,k} c_{j,k} * w_j + b_j (SmoothQuant's W8A8 setting, Xiao et al. ICML 2023, eq. 1
with per-token activation scales; Jacob et al. 2018 eq. 1 with Z = 0). Exported inside
:func:`integer_dynamic_linears`, it is written with standard ONNX ops, so the file holds int8 weights
and onnxruntime runs an integer GEMM::

    m   = Max(ReduceMax(x, -1), Neg(ReduceMin(x, -1)))       per token (or over the whole tensor)
    s   = Max(m, tiny) / qmax                                  qmax = 2^(b-1) - 1
    a   = QuantizeLinear(x / s, 1, 2^(b-1))                    uint8 codes q + 2^(b-1), round half to even
    acc = MatMulInteger(a, C^T, 2^(b-1))                       int32: sum_k q_{t,k} c_{j,k}
    y   = Cast(acc) * s * w + b

C: the int8 weight codes (an initializer), w: per-channel scales. The activation codes are shifted to
uint8 (zero point 2^(b-1)) because the u8 x s8 product is the integer GEMM every onnxruntime CPU
kernel has; on x86 without VNNI it sums pairs of products in int16 (``vpmaddubsw``), exact only while
2 * (2^b - 1) * max|c| <= 32767: 7-bit weights with 8-bit activations (or the converse).
:func:`saturating_dynamic_linears` names the layers where that does not hold. Outside the context (or with
``mode="float"``) the quantizer exports as float ops (Div, Round, Clip, Mul) and the weight as Q / DQ.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import EffdnnError
from ..formats import IntFormat
from ..utils.cpu import pair_sum_fits
from .dynamic import DynamicQuantizer, dynamic_codes

_STATE = {"integer": False, "kernel": "onnx"}


@contextlib.contextmanager
def integer_dynamic_linears(enabled: bool = True, kernel: str = "onnx") -> Iterator[None]:
    """Within the block, ONNX export writes dynamically quantized Linears as integer ops (module doc);
    ``kernel``: ``"onnx"`` (MatMulInteger, Cast, Mul: standard ops) or ``"ort"`` (onnxruntime's
    ``com.microsoft.MatMulIntegerToFloat``, which applies the weight scales inside the GEMM)."""
    before = dict(_STATE)
    _STATE.update(integer=enabled, kernel=kernel)
    try:
        yield
    finally:
        _STATE.update(before)


def exports_integer(layer: nn.Module) -> bool:
    """Whether ``layer``'s forward, being exported now, writes the integer graph."""
    return _STATE["integer"] and torch.onnx.is_in_onnx_export() and isinstance(getattr(layer, "input_quant", None),
                                                                               DynamicQuantizer)


def weight_codes(layer: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes (N, K), per-channel scales (N,)) of a symmetric per-channel / per-tensor int weight."""
    wq = layer.weight_quant
    fmt, p = (wq.fmt, wq.params) if wq is not None else (None, None)
    if not isinstance(fmt, IntFormat) or p is None or fmt.bits > 8 or fmt.granularity.kind == "per_group" \
            or bool((p.zero_point != 0).any()):
        label = getattr(fmt, "label", "float") if fmt is not None else "float"
        raise EffdnnError(f"export_onnx: layer {name}: integer dynamic activations need symmetric per-channel int<=8 "
                          f"weights, got {label}; export with dynamic_activations='float'")
    w = layer.weight.detach().float()
    codes = fmt.quantize(w, p).to(torch.int8)
    scale = p.scale.detach().float().reshape(-1)
    return codes, (scale.expand(layer.out_features).clone() if scale.numel() == 1 else scale)


def saturating_dynamic_linears(model: nn.Module) -> list[str]:
    """Dynamically quantized Linears whose u8 x s8 pair sums exceed int16 (inexact on x86 without VNNI)."""
    out = []
    for name, m in model.named_modules():
        aq = getattr(m, "input_quant", None)
        if isinstance(aq, DynamicQuantizer) and isinstance(m, nn.Linear) and m.weight_quant is not None:
            with torch.no_grad():
                codes, _ = weight_codes(m, name)
            if not pair_sum_fits(2 ** int(aq.fmt.bits) - 1, int(codes.abs().max())):
                out.append(name)
    return out


class _DynamicIntLinear(torch.autograd.Function):
    """Forward: the fake-quantized layer's values (for the tracer's shapes); symbolic: the integer ops."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, codes_t: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                bits: int, kind: str) -> torch.Tensor:  # type: ignore[override]
        q, s = dynamic_codes(x, kind, bits)
        y = (q * s) @ (codes_t.float() * w_scale)
        return y + bias if bias is not None else y

    @staticmethod
    def symbolic(g, x, codes_t, w_scale, bias, bits: int, kind: str):  # type: ignore[no-untyped-def]
        qmax, zero = 2 ** (bits - 1) - 1, 2 ** (bits - 1)
        const = lambda v, dt=torch.float32: g.op("Constant", value_t=torch.tensor(v, dtype=dt))  # noqa: E731
        red = {"axes_i": [-1], "keepdims_i": 1} if kind == "per_token" else {"keepdims_i": 0}
        amax = g.op("Max", g.op("ReduceMax", x, **red), g.op("Neg", g.op("ReduceMin", x, **red)))
        s = g.op("Div", g.op("Max", amax, const(1e-12 * qmax)), const(float(qmax)))  # (..., 1) or ()
        zp = const(zero, torch.uint8)
        if kind == "per_token":  # one pass: QuantizeLinear of the (tokens, K) view, one scale per row (axis 0)
            s1 = g.op("Reshape", s, const([-1], torch.int64))
            x2 = g.op("Reshape", x, const([-1, codes_t.type().sizes()[0]], torch.int64))
            a = g.op("QuantizeLinear", x2, s1, g.op("Expand", zp, g.op("Shape", s1)), axis_i=0)
            a = g.op("Reshape", a, g.op("Shape", x))
        else:
            a = g.op("QuantizeLinear", x, s, zp)
        if _STATE["kernel"] == "ort":  # onnxruntime's fused kernel: acc * 1 * w inside the GEMM
            y = g.op("com.microsoft::MatMulIntegerToFloat", a, codes_t, const(1.0), w_scale, zp)
        else:
            y = g.op("Mul", g.op("Cast", g.op("MatMulInteger", a, codes_t, zp), to_i=1), w_scale)  # to_i=1: FLOAT
        y = g.op("Mul", y, s)  # the row scale after the GEMM (a per-row scale inside it is not onnxruntime's)
        return g.op("Add", y, bias) if bias is not None else y  # last: onnxruntime fuses Add -> Gelu (BiasGelu)

def integer_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The exported integer form of a dynamically quantized Linear (module doc); ``x``: its input."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)  # the codes are constants of the graph, not traced ops on the weight
    try:
        with torch.no_grad():
            codes, scale = weight_codes(layer, getattr(layer, "qname", type(layer).__name__))
            codes_t = codes.t().contiguous()
            bias = layer.bias.detach().float().clone() if layer.bias is not None else None
    finally:
        torch._C._set_tracing_state(state)
    aq = layer.input_quant
    return _DynamicIntLinear.apply(x.float(), codes_t, scale, bias, int(aq.fmt.bits), aq.kind)


__all__ = ["exports_integer", "integer_dynamic_linears", "integer_linear", "saturating_dynamic_linears", "weight_codes"]
