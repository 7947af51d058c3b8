"""Fake-quantized layers: Conv1d / Conv2d (depthwise too) / Linear with an input and a weight
``Quantizer``, and the residual ``Add`` with a quantizer on each operand.

``quantize_layer(module, ...)`` turns a float layer into its quantized class in place (its parameters,
hooks and attributes are kept), so layers inside any model (Hugging Face included) are swapped
without rebuilding them. Each layer states its deployed precision (``effdnn_precision``) for the cost
model: weight / activation bits, and storage = weight codes + scales / codebooks + fp32 bias + the
input quantizer's params. A deployment-only min / max observer on the output (``out_observer``) records
the output range that an integer engine needs when no quantized layer consumes the output.

A pruned layer (``prune.sparse``: ``SparseConv2d`` etc., a subclass made by a class swap) is quantized
as its dense base type and becomes the masked quantized class (``sparse_class(QuantConv2d)``): it keeps
``weight_mask``, its quantized weight is multiplied by the mask, and its storage is the sparse encoding
of the weight codes (``SparseMixin.effdnn_precision`` over the quantized layer's precision).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..cost.precision import LayerPrecision
from ..models.layers import Add
from .fake_quant import Quantizer, compute_precision
from .observers import MaxObserver
from .onnx_linear import exports_integer, integer_linear


def _label(fmt) -> str:
    return getattr(fmt, "label", "") or fmt.name


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """Fake quantization computes in float32: under fp16 / bf16 autocast (QAT in mixed precision) the
    activations arrive in half precision, whose rounding would move the quantizer's grid and ranges."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class QuantLayerMixin:
    input_quant: Quantizer | None
    weight_quant: Quantizer | None
    out_observer: MaxObserver | None

    def _attach(self, weight_quant: Quantizer | None, input_quant: Quantizer | None, name: str) -> None:
        self.weight_quant = weight_quant  # type: ignore[assignment]
        self.input_quant = input_quant  # type: ignore[assignment]
        self.out_observer = MaxObserver(name=f"{name}.output")
        self.qname = name

    def _q_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_quant(_fp32(x)) if self.input_quant is not None else x

    def _q_weight(self) -> torch.Tensor:
        w = self.weight  # type: ignore[attr-defined]
        if self.weight_quant is None:
            return w
        if torch.is_grad_enabled() or self.input_quant is None or self.input_quant.mode != "observe":
            self._wq_cache = None
            return self.weight_quant(w)
        # calibration (no autograd, activations observed): the weights stay put, quantise them once
        key = (w._version, w.data_ptr(), w.stride())
        cached = getattr(self, "_wq_cache", None)
        if cached is None or cached[0] != key:
            cached = self._wq_cache = (key, self.weight_quant(w))
        return cached[1]

    @torch.no_grad()
    def quantize_weight_in_place(self) -> None:
        """For a weight consumed outside this layer's forward (a functional op on ``layer.weight``):
        store the quantized weight itself, so every use computes with it; the input stays float (it is
        never seen). The weight quantizer is idempotent on it, so the layer's own forward agrees."""
        if self.weight_quant is not None:
            self.weight.copy_(self.weight_quant(self.weight))  # type: ignore[attr-defined]
        self.input_quant = None
        self.out_observer = None
        self.functional_weight = True

    def _observe_out(self, y: torch.Tensor) -> torch.Tensor:
        if self.out_observer is not None and self.input_quant is not None and self.input_quant.mode == "observe":
            self.out_observer.update(y)
        return y

    def effdnn_precision(self) -> LayerPrecision:
        wk, wb = compute_precision(self.weight_quant.fmt if self.weight_quant is not None else None)
        ak, ab = compute_precision(self.input_quant.fmt if self.input_quant is not None else None)
        w = self.weight  # type: ignore[attr-defined]
        bits = self.weight_quant.storage_bits(w.numel()) if self.weight_quant is not None else w.numel() * 32
        b = getattr(self, "bias", None)
        bits += b.numel() * 32 if b is not None else 0
        if self.input_quant is not None and self.input_quant.params is not None:
            bits += sum(t.numel() * 32 for t in self.input_quant.buffers())
        wl = _label(self.weight_quant.fmt) if self.weight_quant is not None else "fp32"
        al = _label(self.input_quant.fmt) if self.input_quant is not None else "fp32"
        return LayerPrecision(weight_bits=wb, act_bits=ab, weight_kind=wk, act_kind=ak,  # type: ignore[arg-type]
                              storage_bits=int(bits), label=f"w {wl} / a {al}")


class QuantLinear(QuantLayerMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if exports_integer(self):  # ONNX export of dynamic activations as integer ops (onnx_linear.py)
            return integer_linear(self, x)
        return self._observe_out(F.linear(self._q_input(x), self._q_weight(), self.bias))


class QuantConv1d(QuantLayerMixin, nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L)
        return self._observe_out(self._conv_forward(self._q_input(x), self._q_weight(), self.bias))


class QuantConv2d(QuantLayerMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        w = self._q_weight()
        if not self.weight.is_contiguous() and self.weight.is_contiguous(memory_format=torch.channels_last):
            w = w.contiguous(memory_format=torch.channels_last)  # a channels-last model (calibration) stays so
        return self._observe_out(self._conv_forward(self._q_input(x), w, self.bias))


class QuantAdd(Add):
    """a + b with each operand fake-quantized (the explicit-quantization placement TensorRT asks for
    on residual joins, so an integer engine can add two int8 tensors)."""

    a_quant: Quantizer | None
    b_quant: Quantizer | None

    def _attach(self, a_quant: Quantizer | None, b_quant: Quantizer | None, name: str) -> None:
        self.a_quant, self.b_quant, self.qname = a_quant, b_quant, name
        self.out_observer = MaxObserver(name=f"{name}.output")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        qa = self.a_quant(_fp32(a)) if self.a_quant is not None else a
        qb = self.b_quant(_fp32(b)) if self.b_quant is not None else b
        y = qa + qb
        if self.a_quant is not None and self.a_quant.mode == "observe":
            self.out_observer.update(y)
        return y

    def effdnn_precision(self) -> LayerPrecision:
        ak, ab = compute_precision(self.a_quant.fmt if self.a_quant is not None else None)
        bits = sum(t.numel() * 32 for q in (self.a_quant, self.b_quant) if q is not None for t in q.buffers())
        return LayerPrecision(weight_bits=ab, act_bits=ab, weight_kind=ak, act_kind=ak,  # type: ignore[arg-type]
                              storage_bits=int(bits), label=f"add a {getattr(self.a_quant.fmt, 'label', '') if self.a_quant else 'fp32'}")


QUANT_CLASSES: dict[type, type] = {nn.Linear: QuantLinear, nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, Add: QuantAdd}
_LAYER_BASES: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)


def dense_type(module: nn.Module) -> type:
    """The module's class, or for a pruned layer the unmasked class its mask was added to; a subclass of
    Linear / Conv1d / Conv2d that keeps its base's forward (torch's ``NonDynamicallyQuantizableLinear``,
    ``nn.MultiheadAttention.out_proj``) counts as that base: it computes exactly what the base does."""
    kind = getattr(type(module), "effdnn_dense_class", type(module))
    if kind not in _LAYER_BASES and not getattr(kind, "effdnn_precision", None):
        base = next((b for b in _LAYER_BASES if issubclass(kind, b)), None)
        if base is not None and kind.forward is base.forward:
            return base
    return kind


def own_forward_subclass(module: nn.Module) -> type | None:
    """The torch base (Linear / Conv1d / Conv2d) of a user subclass that overrides its forward: such a
    layer cannot be swapped for a quantized class (its own computation would be lost); None otherwise.
    effdnn's own layer classes (quantized, sparse, emulated: they state ``effdnn_precision``) are not
    user subclasses."""
    kind = getattr(type(module), "effdnn_dense_class", type(module))
    if kind in _LAYER_BASES or getattr(kind, "effdnn_precision", None) or dense_type(module) is not kind:
        return None
    return next((b for b in _LAYER_BASES if issubclass(kind, b)), None)


def is_masked(module: nn.Module) -> bool:
    return getattr(type(module), "effdnn_dense_class", None) is not None


def quantizable(module: nn.Module) -> bool:
    """The float layer types with a quantized counterpart, their subclasses that keep the base's forward
    (``dense_type``), and pruned layers of those types (their masked class adds nothing but the mask)."""
    return dense_type(module) in QUANT_CLASSES


def swap_class(module: nn.Module, classes: dict[type, type]) -> type:
    """Swap ``module`` in place to ``classes[its dense type]``, masked again if it was pruned; returns
    the dense type it had."""
    kind = dense_type(module)
    target = classes[kind]
    if is_masked(module):
        from ..prune.sparse import sparse_class  # prune builds on quant: imported when first needed

        target = sparse_class(target)
    module.__class__ = target
    return kind


def quantize_layer(module: nn.Module, name: str, first: Quantizer | None, second: Quantizer | None) -> nn.Module:
    """Swap ``module``'s class to its quantized one in place. Layers: (weight, input) quantizers;
    Add: (a, b) operand quantizers. A pruned layer keeps its mask (see the module docstring)."""
    swap_class(module, QUANT_CLASSES)
    module._attach(first, second, name)  # type: ignore[attr-defined]
    return module


__all__ = ["QUANT_CLASSES", "QuantAdd", "QuantConv1d", "QuantConv2d", "QuantLayerMixin", "QuantLinear", "dense_type",
           "is_masked", "own_forward_subclass", "quantizable", "quantize_layer", "swap_class"]
