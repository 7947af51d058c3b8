"""A real int8 engine for a calibrated PTQ model: torch's x86 (fbgemm / oneDNN) quantized kernels fed
with OUR scales, zero points and integer weight codes (nothing is re-calibrated).

``to_int8(model)`` traces the fake-quantized model with torch.fx (quantized layers as leaves) and
rewrites the graph:

- a quantized Conv1d / Conv2d / Linear becomes ``torch.ao.nn.quantized.Conv2d`` etc. (``ConvReLU2d`` /
  ``LinearReLU`` when a ReLU follows), its int8 weight made from our codes and per-channel scales;
- its output is requantized straight to the scale of the quantizer that consumes it next (found
  through ReLU / ReLU6 / pooling / flatten, which commute with quantization and run on the codes), so a chain of layers stays in
  uint8 exactly as the fake-quantized model rounds it; with no quantized consumer, the layer's
  calibrated output range is used;
- a quantized Linear / Conv2d whose output reaches a float consumer (a classifier's logits, a float
  residual add) outputs its int32 sums as fp32, as its fake-quantized form does (``FloatOutLinear``,
  ``FloatOutConv2d``), not requantized to 8 bits; its quantized consumers quantize that;
- a quantized residual ``Add`` becomes ``QFunctional.add`` (``add_relu`` when a ReLU follows);
- float tensors entering a quantized layer are quantized with that layer's input params, quantized
  tensors entering anything else are dequantized, the output is float.

Why this engine (BENCHMARKS.md, "PTQ"): at batch 256 it runs LeNet-5 / ResNet-20 several times faster
than fp32, while onnxruntime's QDQ int8 was slower than its own fp32 on these small convolutions.
Activations are uint8 (a format's codes shifted by -qmin: signed int8 params map to zero point 128, same
scale); weights int8 symmetric. A consumer whose format has fewer codes than uint8 (7 bits, narrow range)
gets its tensor clamped to them, as its fake quantizer clamps; a tensor quantized for one consumer and
read by another with other params is requantized.

Exactness on CPUs without VNNI (``reduce_range``, ``quant/int8_pairs.py``): there torch's x86 kernels add
u8 x s8 product pairs in saturating int16, so a layer with 8-bit inputs and 8-bit weights can compute
another value than its fake-quantized form. ``to_int8(model)`` (``reduce_range="auto"``) then builds the
engine from a copy whose overflowing layers have 7-bit weights (``"act"``: 7-bit inputs), which it
computes exactly; ``int8_plan(engine)`` gives that fake-quantized model (its accuracy is what the engine
has) and the layers changed. ``reduce_range="none"`` keeps the model as it is.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Literal, NamedTuple

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F
from torch import fx, nn

from ..errors import EffdnnError
from ..formats import IntFormat
from ..utils.cpu import int8_pairs_saturate
from .fake_quant import Quantizer
from .int8_pairs import fit_int16_pairs, saturating_layers, u8_code_max
from .modules import QuantAdd, QuantConv1d, QuantConv2d, QuantLayerMixin, QuantLinear, dense_type

# ops that commute with a per-tensor quantizer (monotone or shape-only): run on the uint8 codes
TRANSPARENT_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d,
                       nn.Flatten, nn.Identity, nn.Dropout)
TRANSPARENT_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.hardtanh, torch.flatten, F.max_pool2d, F.adaptive_avg_pool2d}
TRANSPARENT_METHODS = {"relu", "flatten", "view", "reshape", "contiguous"}
REDUCE_RANGE = ("auto", "weight", "act", "none")
PLAN_KEY = "effdnn_int8_plan"


class ActQ(NamedTuple):
    """uint8 activation params: scale, zero point, and the code range [lo, hi] of the format."""
    scale: float
    zero_point: int
    lo: int = 0
    hi: int = 255

    def clamp_bounds(self) -> tuple[float, float] | None:
        """Float bounds that clamp a quint8 tensor to [lo, hi], None when that is all of uint8."""
        if self.lo == 0 and self.hi == 255:
            return None
        return (self.lo - self.zero_point) * self.scale, (self.hi - self.zero_point) * self.scale


@dataclasses.dataclass
class Int8Plan:
    """What an int8 engine computes: ``reference``, the fake-quantized model it matches code for code;
    ``reduce_range`` and ``reduced``: how and in which layers it differs from the model given
    (7-bit weights / inputs, CPU without VNNI); ``saturating``: layers whose int16 pair sums can
    overflow on this CPU and were left so (``reduce_range="none"``)."""
    reference: nn.Module
    reduce_range: str
    reduced: list[str]
    saturating: list[str]

    def summary(self) -> str:
        if self.reduced:
            what = "weights" if self.reduce_range == "weight" else "inputs"
            return (f"7-bit {what} in {len(self.reduced)} layers (reduce_range={self.reduce_range!r}: without VNNI "
                    "8-bit u8 x s8 pairs overflow int16), computed exactly")
        if self.saturating:
            return (f"{len(self.saturating)} layers can overflow int16 pairs on this CPU (no VNNI, "
                    "reduce_range='none'): not exact")
        return "the model as given, computed exactly"


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (QuantLayerMixin, QuantAdd)) or super().is_leaf_module(m, qualname)


def _engine() -> None:
    engines = torch.backends.quantized.supported_engines
    torch.backends.quantized.engine = "x86" if "x86" in engines else "fbgemm"


def _act_qparams(q: Quantizer | None, what: str) -> ActQ:
    """uint8 params of an 8-bit-or-less per-tensor integer activation quantizer (codes shifted by -qmin)."""
    if q is None or not isinstance(q.fmt, IntFormat) or q.fmt.bits > 8 or q.fmt.granularity.kind != "per_tensor":
        raise EffdnnError(f"to_int8: {what} needs an integer activation quantizer of <= 8 bits per tensor")
    p = q.params
    zp = int(round(float(p.zero_point))) - q.fmt.qmin
    return ActQ(float(p.scale), zp, 0, u8_code_max(q.fmt))


def _range_qparams(lo: float, hi: float) -> ActQ:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255, 1e-8)
    return ActQ(scale, int(min(max(round(-lo / scale), 0), 255)))


def _int8_weight(layer: QuantLayerMixin, name: str) -> torch.Tensor:
    wq = layer.weight_quant
    if wq is None or not isinstance(wq.fmt, IntFormat) or wq.fmt.bits > 8 or not wq.fmt.signed or not wq.fmt.symmetric \
            or wq.fmt.granularity.kind == "per_group":
        raise EffdnnError(f"to_int8: {name} needs signed symmetric integer weights of <= 8 bits (per tensor / channel)")
    w = layer.weight.detach()  # type: ignore[attr-defined]
    codes = wq.fmt.quantize(w, wq.params).to(torch.int8)
    mask = getattr(layer, "weight_mask", None)
    if isinstance(mask, torch.Tensor):  # pruned: code 0 (symmetric) where the mask is off
        codes = codes * mask.to(torch.int8)
    scale = wq.params.scale.double()
    if wq.fmt.granularity.kind == "per_tensor":
        return torch._make_per_tensor_quantized_tensor(codes, float(scale[0]), 0)
    return torch._make_per_channel_quantized_tensor(codes, scale, torch.zeros_like(scale, dtype=torch.long), 0)


def _int8_layer(layer: nn.Module, name: str, relu: bool, out_qparams: ActQ) -> nn.Module:
    w = _int8_weight(layer, name)  # type: ignore[arg-type]
    bias = layer.bias.detach().float() if layer.bias is not None else None
    if isinstance(layer, QuantLinear):
        mod = (nniq.LinearReLU if relu else nnq.Linear)(layer.in_features, layer.out_features)
    elif isinstance(layer, (QuantConv1d, QuantConv2d)):
        if layer.padding_mode != "zeros":
            raise EffdnnError(f"to_int8: {name}: only zero padding is supported")
        cls = {(QuantConv2d, False): nnq.Conv2d, (QuantConv2d, True): nniq.ConvReLU2d,
               (QuantConv1d, False): nnq.Conv1d, (QuantConv1d, True): nniq.ConvReLU1d}[(dense_type(layer), relu)]
        mod = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                  layer.dilation, layer.groups, bias=bias is not None)
    else:  # pragma: no cover
        raise EffdnnError(f"to_int8: {name}: unsupported layer {type(layer).__name__}")
    mod.set_weight_bias(w, bias)
    mod.scale, mod.zero_point = out_qparams.scale, out_qparams.zero_point
    return mod


class FloatOutLinear(nn.Module):
    """An int8 Linear whose int32 sums leave as fp32 (fbgemm's ``linear_with_input_q_dq_qweight_dq_output_fp32``):
    for a layer with no quantized consumer (a classifier), whose fake-quantized form outputs floats;
    requantizing its output to 8 bits would put the logits on a grid that ties near-equal classes."""

    def __init__(self, linear: nn.Module, qin: ActQ) -> None:
        super().__init__()
        self.linear, self.scale, self.zero_point = linear, qin.scale, qin.zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # quint8 in, at (scale, zero_point)
        packed = self.linear._packed_params._packed_params
        return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x.dequantize(), self.scale,
                                                                                  self.zero_point, packed)


class FloatOutConv2d(nn.Module):
    """An int8 Conv2d whose int32 sums leave as fp32 (oneDNN's ``qconv_pointwise`` with a float output):
    for a convolution with no quantized consumer (one feeding a float residual add), whose fake-quantized
    form outputs floats. Weight codes and per-channel scales from ``_int8_weight``."""

    def __init__(self, layer: nn.Module, weight: torch.Tensor, qin: ActQ) -> None:
        super().__init__()
        self.scale, self.zero_point = qin.scale, qin.zero_point
        self.stride, self.padding = list(layer.stride), list(layer.padding)
        self.dilation, self.groups = list(layer.dilation), layer.groups
        codes = weight.int_repr()
        scales = (weight.q_per_channel_scales() if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
                  else torch.full((codes.shape[0],), weight.q_scale(), dtype=torch.float64))
        self.register_buffer("w_scale", scales.float())
        self.register_buffer("w_zero_point", torch.zeros(codes.shape[0], dtype=torch.long))
        self.register_buffer("bias", layer.bias.detach().float() if layer.bias is not None else None)
        self.packed = torch.ops.onednn.qconv_prepack(codes, self.w_scale, self.scale, self.zero_point, self.stride,
                                                     self.padding, self.dilation, self.groups, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # quint8 in, at (scale, zero_point)
        return torch.ops.onednn.qconv_pointwise(x.int_repr(), self.scale, self.zero_point, self.packed, self.w_scale,
                                                self.w_zero_point, self.bias, self.stride, self.padding, self.dilation,
                                                self.groups, 1.0, 0, torch.float32, "none", [], "")


def _is_relu(node: fx.Node, mods: dict[str, nn.Module]) -> bool:
    return (node.op == "call_module" and isinstance(mods.get(node.target), nn.ReLU)) or \
        (node.op == "call_function" and node.target in (torch.relu, F.relu)) or (node.op == "call_method" and node.target == "relu")


def _transparent(node: fx.Node, mods: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(mods.get(node.target), TRANSPARENT_MODULES)
    if node.op == "call_function":
        return node.target in TRANSPARENT_FUNCTIONS
    return node.op == "call_method" and node.target in TRANSPARENT_METHODS


def _identity_chain(node: fx.Node, mods: dict[str, nn.Module]) -> list[fx.Node]:
    """The nn.Identity nodes that follow ``node`` one after another, each the only user of the last."""
    chain: list[fx.Node] = []
    cur = node
    while len(cur.users) == 1:
        nxt = next(iter(cur.users))
        if not (nxt.op == "call_module" and type(mods.get(nxt.target)) is nn.Identity):
            break
        chain.append(nxt)
        cur = nxt
    return chain


def _consumer_qparams(node: fx.Node, mods: dict[str, nn.Module]) -> ActQ | None:
    """qparams of the first quantized consumer of ``node``'s value (through transparent ops)."""
    frontier = [node]
    while frontier:
        cur = frontier.pop(0)
        for user in cur.users:
            m = mods.get(user.target) if user.op == "call_module" else None
            if isinstance(m, QuantLayerMixin) and m.input_quant is not None:
                return _act_qparams(m.input_quant, str(user.target))
            if isinstance(m, QuantAdd) and m.a_quant is not None:
                return _act_qparams(m.a_quant if user.args[0] is cur else m.b_quant, str(user.target))
            if _transparent(user, mods):
                frontier.append(user)
    return None


def _float_consumer(node: fx.Node, mods: dict[str, nn.Module]) -> bool:
    """Whether ``node``'s value reaches (through transparent ops) anything but a quantized layer or add."""
    frontier = [node]
    while frontier:
        cur = frontier.pop(0)
        for user in cur.users:
            m = mods.get(user.target) if user.op == "call_module" else None  # type: ignore[arg-type]
            if (isinstance(m, QuantLayerMixin) and m.input_quant is not None) or (isinstance(m, QuantAdd) and m.a_quant is not None):
                continue
            if not _transparent(user, mods):
                return True
            frontier.append(user)
    return False


@torch.no_grad()
def to_int8(model: nn.Module, reduce_range: Literal["auto", "weight", "act", "none"] = "auto") -> fx.GraphModule:
    """The int8 engine model of a calibrated PTQ ``model`` (float in, float out); CPU only.

    ``reduce_range``: ``"auto"`` is ``"weight"`` on a CPU whose int8 kernels add product pairs in
    saturating int16 (x86 without VNNI, ``effdnn.utils.cpu.int8_pairs_saturate``) and ``"none"``
    elsewhere; ``"weight"`` / ``"act"``: the layers whose codes can overflow such a pair get 7-bit
    weights / inputs (``quant/int8_pairs.py``) on any CPU; ``"none"``: the model as given. The engine
    computes ``int8_plan(engine).reference`` exactly: the model itself, or the reduced copy."""
    if reduce_range not in REDUCE_RANGE:
        raise EffdnnError(f"to_int8: reduce_range must be one of {', '.join(REDUCE_RANGE)}, got {reduce_range!r}")
    how = ("weight" if int8_pairs_saturate() else "none") if reduce_range == "auto" else reduce_range
    model = model.cpu().eval()
    ref, reduced = fit_int16_pairs(model, how) if how != "none" else (model, [])  # type: ignore[arg-type]
    saturating = saturating_layers(model) if how == "none" and int8_pairs_saturate() else []
    with warnings.catch_warnings():  # torch.ao's quantized tensors warn that they are deprecated
        warnings.simplefilter("ignore")
        engine = _to_int8(ref)
    engine.meta[PLAN_KEY] = Int8Plan(ref, how, reduced, saturating)
    return engine


def int8_plan(engine: fx.GraphModule) -> Int8Plan:
    """The :class:`Int8Plan` of an engine ``to_int8`` built: the fake-quantized model it computes."""
    plan = engine.meta.get(PLAN_KEY) if isinstance(engine, fx.GraphModule) else None
    if plan is None:
        raise EffdnnError("int8_plan: not an engine built by effdnn.quant.deploy_int8.to_int8")
    return plan


class _Int8Builder:
    """Rewrites the traced graph of a fake-quantized model into quantized modules and ops: each
    quantized layer (with a following ReLU fused) becomes a torch int8 module, tensors are quantized
    where an int8 consumer needs them and dequantized where a float consumer does."""

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.model, self.graph = model, graph
        self.mods = dict(model.named_modules())
        self.new = fx.Graph()
        self.env: dict[fx.Node, fx.Node] = {}
        self.quantized: dict[fx.Node, ActQ] = {}  # new-graph nodes holding quint8 tensors, with their params
        self.out_mods: dict[str, Any] = {}
        self.fused_relu: set[fx.Node] = set()

    def clamp(self, v: fx.Node, qp: ActQ) -> fx.Node:
        """``v`` (quint8) clamped to the code range of ``qp``'s format, as its fake quantizer clamps."""
        bounds = qp.clamp_bounds()
        if bounds is not None:
            v = self.new.call_function(torch.clamp, (v, bounds[0], bounds[1]))
        self.quantized[v] = qp
        return v

    def arg(self, a: Any, want_q: bool | None, qparams: ActQ | None = None) -> Any:
        """Map an old argument into the new graph, (de)quantizing tensors as the consumer wants."""
        if not isinstance(a, fx.Node):
            return a
        v = self.env[a]
        if want_q is True and (v not in self.quantized or self.quantized[v] != qparams):
            if v in self.quantized:  # quantized for another consumer: requantize to this one's params
                v = self.new.call_method("dequantize", (v,))
            v = self.new.call_function(torch.quantize_per_tensor, (v, qparams.scale, qparams.zero_point, torch.quint8))  # type: ignore[union-attr]
            v = self.clamp(v, qparams)  # type: ignore[arg-type]
        elif want_q is False and v in self.quantized:
            v = self.new.call_method("dequantize", (v,))
        return v

    def quantized_layer(self, node: fx.Node, m: nn.Module) -> None:
        """A QuantLayer / QuantAdd (and the ReLU after it) as one int8 module or op."""
        if isinstance(m, QuantLayerMixin) and m.input_quant is None:
            raise EffdnnError(f"to_int8: {node.target} has float inputs; an int8 engine needs quantized inputs")
        chain = _identity_chain(node, self.mods)  # folded BatchNorms left as Identity
        last = chain[-1] if chain else node
        users = list(last.users)
        relu = len(users) == 1 and _is_relu(users[0], self.mods)
        self.fused_relu.update(chain)
        outq = _consumer_qparams(users[0] if relu else last, self.mods)
        if isinstance(m, (QuantLinear, QuantConv2d)) and _float_consumer(last, self.mods):
            # a float consumer (classifier output, residual add) reads the int32 sums as fp32, as in the fake-quantized
            # model; quantized consumers quantize that (a ReLU after the layer stays a float op)
            qin = _act_qparams(m.input_quant, f"{node.target}.input")
            name = str(node.target).replace(".", "_")
            if isinstance(m, QuantLinear):
                self.out_mods[name] = FloatOutLinear(_int8_layer(m, str(node.target), False, ActQ(1.0, 0)), qin)
            else:
                self.out_mods[name] = FloatOutConv2d(m, _int8_weight(m, str(node.target)), qin)  # type: ignore[arg-type]
            self.env[node] = self.new.call_module(name, (self.arg(node.args[0], True, qin),))
            return
        if outq is None:
            obs = m.out_observer
            if obs is None or obs.min is None:
                raise EffdnnError(f"to_int8: {node.target} has no calibrated output range")
            outq = _range_qparams(0.0 if relu else float(obs.min.min()), float(obs.max.max()))
        name = str(node.target).replace(".", "_")
        if isinstance(m, QuantAdd):
            qa, qb = _act_qparams(m.a_quant, f"{node.target}.a"), _act_qparams(m.b_quant, f"{node.target}.b")
            fn = nnq.QFunctional()
            fn.scale, fn.zero_point = outq.scale, outq.zero_point
            self.out_mods[name] = fn
            a, b = self.arg(node.args[0], True, qa), self.arg(node.args[1], True, qb)
            v = self.new.call_method("add_relu" if relu else "add", (self.new.get_attr(name), a, b))
        else:
            qin = _act_qparams(m.input_quant, f"{node.target}.input")
            self.out_mods[name] = _int8_layer(m, str(node.target), relu, outq)
            v = self.new.call_module(name, (self.arg(node.args[0], True, qin),))
        self.env[node] = self.clamp(v, outq)
        if relu:
            self.fused_relu.add(users[0])

    def other(self, node: fx.Node) -> None:
        """Any other node, copied; quantized tensors pass through shape-only ops, else are dequantized."""
        keep_q = _transparent(node, self.mods)
        want = None if keep_q else False
        args = tuple(fx.node.map_arg(a, lambda a: self.arg(a, want)) for a in node.args)
        kwargs = {k: fx.node.map_arg(v, lambda a: self.arg(a, want)) for k, v in node.kwargs.items()}
        if node.op == "call_module":
            name = str(node.target).replace(".", "_")
            self.out_mods[name] = self.mods[node.target]  # type: ignore[index]
            v = self.new.call_module(name, args, kwargs)
        elif node.op == "get_attr":
            v = self.new.get_attr(node.target)  # type: ignore[arg-type]
        elif node.op == "placeholder":
            v = self.new.placeholder(node.target)  # type: ignore[arg-type]
        else:
            v = self.new.create_node(node.op, node.target, args, kwargs)
        qin = next((self.quantized[self.env[a]] for a in node.args if isinstance(a, fx.Node) and self.env[a] in self.quantized),
                   None)
        if keep_q and qin is not None:
            self.quantized[v] = qin  # shape-only ops, ReLU and pooling keep the params
        self.env[node] = v

    def build(self) -> fx.GraphModule:
        for node in self.graph.nodes:
            m = self.mods.get(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]
            if node in self.fused_relu:
                self.env[node] = self.env[node.args[0]]  # type: ignore[index]
            elif isinstance(m, (QuantLayerMixin, QuantAdd)):
                self.quantized_layer(node, m)
            elif node.op == "output":
                self.new.output(fx.node.map_arg(node.args[0], lambda a: self.arg(a, False)))
            else:
                self.other(node)
        root = nn.Module()
        for name, mod in self.out_mods.items():
            setattr(root, name, mod)
        for n in self.new.nodes:  # get_attr targets of the original model
            if n.op == "get_attr" and not hasattr(root, str(n.target)):
                setattr(root, str(n.target), getattr(self.model, str(n.target)))
        return fx.GraphModule(root, self.new, class_name="Int8Model")


def _to_int8(model: nn.Module) -> fx.GraphModule:
    _engine()
    try:
        graph = _Tracer().trace(model)
    except Exception as e:
        raise EffdnnError(f"to_int8: the model cannot be traced by torch.fx ({type(e).__name__}); "
                          "use the QDQ ONNX export instead") from None
    return _Int8Builder(model, graph).build()
