"""Masked (pruned) layers: the mask lives in the layer, zeros stay zero, the storage is sparse.

``make_sparse(layer, mask)`` turns a Conv / Linear layer into its sparse subclass in place (still an
``nn.Conv2d`` / ``nn.Linear`` to every other tool, and exported to ONNX as one): the mask is the
``weight_mask`` buffer and the weight is kept multiplied by it.

Masks hold in any training loop, not only effdnn's:
- every forward first re-applies the mask in place when the weight changed since the last application
  (its ``_version`` / storage moved: an optimizer step, a ``load_state_dict``), so momentum or weight
  decay cannot revive a pruned weight for more than one step; gradient accumulation is safe (no step,
  no in-place write while a graph holds the weight); never under tracing, ONNX export or
  ``torch.compile``, so an exported graph has no mask multiply;
- ``state_dict()`` saves the masked weight; ``weight_sparsity`` and the cost model re-apply first;
- :class:`MaskCallback` (effdnn's loop) also zeroes masked gradients, so no momentum builds up.

Quantization composes: ``sparse_class(QuantConv2d)`` keeps the mask and multiplies the quantized weight
by it (``_q_weight``), so a quantizer that maps 0 elsewhere (binary sign(0) = +1, DoReFa's grid without
a zero level) still gives exact zeros where pruned. ``effdnn_dense_class`` names the unmasked class.

Storage rule (``effdnn_precision``, used by the cost model's ``size_bytes``): a pruned weight is stored
as its non-zero values (at the layer's value width) plus a sparse index, whichever of these is smallest:
- dense: every value, no index;
- bitmap: one bit per position;
- CSR: per non-zero a column index of ceil(log2(cols)) bits, per row a 32-bit row pointer
  (rows = output channels, cols = the rest of the weight).
Other tensors of the layer (the bias) are stored dense at their dtype. The mask itself is not stored:
it is the index. A layer that already states a precision (a quantized layer) keeps its value width and
overheads (scales, codebooks); only its dense weight codes are replaced by the sparse encoding.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..cost.precision import LayerPrecision
from ..hooks import Callback

_CLASSES: dict[type, type] = {}


def _tracing() -> bool:
    """Under torch.jit tracing, ONNX export or torch.compile: no in-place mask writes, no mask multiply."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _masked_constant(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Export: ``w`` itself when it is already zero where pruned (its Q / DQ pair stays in the graph),
    else ``w * mask`` computed outside the tracer (a constant initializer, no Mul node)."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        with torch.no_grad():
            if not bool((w.detach()[~mask] != 0).any()):
                return w
            return (w.detach() * mask.to(w.dtype)).clone()
    finally:
        torch._C._set_tracing_state(state)


def sparse_index_bits(mask: torch.Tensor) -> tuple[str, int]:
    """(format, bits) of the cheapest index of a weight's non-zeros: bitmap or CSR (dense -> 0 bits)."""
    rows = mask.shape[0] if mask.dim() > 1 else 1
    cols = mask.numel() // max(rows, 1)
    nnz = int(mask.sum())
    options = {"bitmap": mask.numel(), "csr": nnz * max(math.ceil(math.log2(max(cols, 2))), 1) + (rows + 1) * 32}
    fmt = min(options, key=options.get)
    return fmt, options[fmt]


class SparseMixin:
    """Adds ``weight_mask`` handling and a sparse storage statement to a Conv / Linear class."""

    weight_mask: torch.Tensor
    effdnn_not_stored = ("weight_mask",)  # the sparse index (in storage_bits) replaces it
    effdnn_dense_class: type

    def apply_mask(self) -> None:
        with torch.no_grad():
            self.weight.mul_(self.weight_mask.to(self.weight.dtype))
        w = self.weight
        self._mask_key = (w.data_ptr(), w._version)

    def hold_mask(self) -> None:
        """Re-apply the mask if the weight changed since the last application (see the module docstring)."""
        if _tracing():
            return
        w = self.weight
        if getattr(self, "_mask_key", None) != (w.data_ptr(), w._version):
            self.apply_mask()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.hold_mask()
        return super().forward(*args, **kwargs)  # type: ignore[misc]

    def _q_weight(self) -> torch.Tensor:
        """A quantized layer's weight, zero where pruned whatever the quantizer makes of a zero."""
        inner = getattr(super(), "_q_weight", None)  # a plain (float) masked layer: its weight
        w = inner() if inner is not None else self.weight
        if _tracing():
            return _masked_constant(w, self.weight_mask)
        return w * self.weight_mask.to(w.dtype)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        key = prefix + "weight"
        if not keep_vars and key in destination:  # saved weights are masked even between a step and a forward
            destination[key] = destination[key] * self.weight_mask.to(destination[key].dtype)

    def dense_precision(self) -> LayerPrecision:
        """What the layer states without its mask (a quantized layer's widths), or its dtype."""
        fn = getattr(super(), "effdnn_precision", None)
        if callable(fn):
            return fn()
        bits = self.weight.element_size() * 8
        return LayerPrecision(bits, bits)

    def effdnn_precision(self) -> LayerPrecision:
        inner = self.dense_precision()
        vb = inner.weight_bits
        nnz = int(self.weight_mask.sum())
        dense = self.weight.numel() * vb
        fmt, idx = sparse_index_bits(self.weight_mask)
        sparse = nnz * vb + idx
        weight_bits, label = (dense, "dense") if dense <= sparse else (sparse, fmt)
        if inner.storage_bits is not None:  # a quantized layer: keep its overheads, swap its dense weight codes
            rest = inner.storage_bits - dense
        else:
            rest = sum(t.numel() * t.element_size() * 8 for n, t in self.named_parameters(recurse=False) if n != "weight")
        density = nnz / max(self.weight.numel(), 1)
        tag = f"sparse {1 - density:.0%} ({label})"
        return replace(inner, storage_bits=int(math.ceil(weight_bits + rest)), label=f"{inner.label} {tag}".strip())


def sparse_class(cls: type) -> type:
    """The masked subclass of ``cls`` (one per class, cached), e.g. ``SparseQuantConv2d`` of ``QuantConv2d``."""
    if issubclass(cls, SparseMixin):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Sparse{cls.__name__}", (SparseMixin, cls),
                             {"__module__": __name__, "effdnn_dense_class": cls})
    return _CLASSES[cls]


def dense_class(layer: nn.Module) -> type:
    """The layer's class without its mask (``QuantConv2d`` for ``SparseQuantConv2d``), else its own."""
    return getattr(type(layer), "effdnn_dense_class", type(layer))


def make_sparse(layer: nn.Module, mask: torch.Tensor) -> nn.Module:
    """Give ``layer`` (in place) the keep-mask ``mask`` (bool, shaped like its weight) and zero the rest."""
    if mask.shape != layer.weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(layer.weight.shape)}")
    if not isinstance(layer, SparseMixin):
        layer.__class__ = sparse_class(type(layer))
    m = mask.to(device=layer.weight.device, dtype=torch.bool)
    if "weight_mask" in layer._buffers:
        layer.weight_mask = m
    else:
        layer.register_buffer("weight_mask", m)
    layer.apply_mask()
    return layer


def strip_sparse(layer: nn.Module) -> nn.Module:
    """The dense layer class again (weights keep their zeros), e.g. before another format takes over."""
    if isinstance(layer, SparseMixin):
        layer.apply_mask()
        del layer._buffers["weight_mask"]
        layer.__class__ = dense_class(layer)
    return layer


def sparse_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseMixin)}


def weight_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in each masked layer's weight (masks re-applied first where a weight moved)."""
    layers = sparse_layers(model)
    for m in layers.values():
        m.hold_mask()
    return {n: float((m.weight == 0).float().mean()) for n, m in layers.items()}


class MaskCallback(Callback):
    """Keeps pruned weights at exactly zero through fine-tuning: the gradient of a masked weight is
    zeroed before the optimizer step would use it (no momentum builds up) and the mask is re-applied
    after every step (weight decay and Adam's moments cannot revive a weight)."""

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def mask_grads(self) -> bool:
        """Whether masked weights get no gradient now (a splicing schedule lets them learn for a while)."""
        return True

    def _masked_grad(self, g: torch.Tensor, m: nn.Module) -> torch.Tensor:
        return g * m.weight_mask.to(g.dtype) if self.mask_grads() else g

    def on_fit_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for m in sparse_layers(model).values():
            m.apply_mask()
            self._handles.append(m.weight.register_hook(lambda g, m=m: self._masked_grad(g, m)))

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for m in sparse_layers(model).values():
            m.apply_mask()

    def on_fit_end(self, model: nn.Module) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m in sparse_layers(model).values():
            m.apply_mask()
