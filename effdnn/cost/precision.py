"""How a layer tells the cost model its deployed precision (duck-typed: cost imports no technique).

A module that defines ``effdnn_precision(self) -> LayerPrecision`` is costed at those widths; any
other module at the dtype of its tensors (fp32 unless cast).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Kind = Literal["int", "float"]


@dataclass(frozen=True)
class LayerPrecision:
    weight_bits: float = 32
    act_bits: float = 32
    weight_kind: Kind = "float"
    act_kind: Kind = "float"
    acc_bits: float | None = None  # accumulator width; None: 32 for int, the operand width for float
    storage_bits: int | None = None  # all of the module's own tensors as deployed, overheads included
    label: str = ""  # e.g. "int4 per-channel", "ternary", "kmeans-16"

    @property
    def compute_kind(self) -> Kind:
        """Integer arithmetic only when both operands are integer codes; else the float unit does it."""
        return "int" if self.weight_kind == "int" and self.act_kind == "int" else "float"

    @property
    def compute_bits(self) -> tuple[float, float]:
        if self.compute_kind == "int":
            return self.weight_bits, self.act_bits
        b = max(self.weight_bits if self.weight_kind == "float" else 0, self.act_bits if self.act_kind == "float" else 0)
        return b or 32, b or 32

    @property
    def accumulator(self) -> tuple[Kind, float]:
        if self.acc_bits is not None:
            return self.compute_kind, self.acc_bits
        return ("int", 32) if self.compute_kind == "int" else ("float", max(self.compute_bits))


def _float_bits(t: torch.Tensor) -> int:
    return t.element_size() * 8


def precision_of(module: nn.Module) -> LayerPrecision:
    fn = getattr(module, "effdnn_precision", None)
    if callable(fn):
        return fn()
    w = getattr(module, "weight", None)
    bits = _float_bits(w) if isinstance(w, torch.Tensor) and w.is_floating_point() else 32
    return LayerPrecision(bits, bits)


def own_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters and inference buffers that belong to this module itself (not its children).

    Buffers a module names in ``effdnn_not_stored`` (training aids that deployment does not store as
    such, e.g. a pruning mask, which the sparse index replaces) are left out."""
    skip = {"num_batches_tracked", *getattr(module, "effdnn_not_stored", ())}
    out = [(n, p) for n, p in module.named_parameters(recurse=False)]
    out += [(n, b) for n, b in module.named_buffers(recurse=False) if n not in skip]
    return out


def storage_bits(module: nn.Module) -> int:
    """Deployed bits of the module's own tensors: from ``effdnn_precision`` if it says, else by dtype.

    A ``storage_bits`` given by ``effdnn_precision`` covers the module's whole subtree."""
    fn = getattr(module, "effdnn_precision", None)
    if callable(fn):
        p = fn()
        if p.storage_bits is not None:
            return int(p.storage_bits)
        return sum(t.numel() * (p.weight_bits if n == "weight" else t.element_size() * 8) for n, t in own_tensors(module))
    return sum(t.numel() * t.element_size() * 8 for _, t in own_tensors(module))


def deployed_bits(model: nn.Module) -> dict[str, int]:
    """Deployed bits per storage unit: a module stating ``storage_bits`` covers its subtree, others count
    their own tensors."""
    out: dict[str, int] = {}

    def walk(prefix: str, m: nn.Module) -> None:
        out[prefix] = storage_bits(m)
        fn = getattr(m, "effdnn_precision", None)
        if callable(fn) and fn().storage_bits is not None:
            return
        for n, child in m.named_children():
            walk(f"{prefix}.{n}" if prefix else n, child)

    walk("", model)
    return out
