"""Emulated reduced-precision GEMM layers: Linear and every convolution, whose three GEMMs round their operands.

Training a layer computes three GEMMs (Wang et al. 2018, Fig. 1): forward ``Y = X W^T``, backward
``dX = dY W`` and gradient ``dW = dY^T X``. A :class:`GemmPolicy` names the format of each operand:
weights and activations (forward, and reused by both backward GEMMs), errors ``dY`` (backward), the
accumulator (``acc``: emulated one addition at a time, chunked by ``chunk``; ``None``: a float32 GEMM,
as tensor cores accumulate fp16 products in fp32) and the outputs ``Y``, ``dX``, ``dW`` (``out``).
Convolutions (1-3 spatial dims, grouped and depthwise, strided, dilated, any padding mode, transposed)
run as grouped GEMMs on gathered columns: lowp/conv.py.

The modules are subclasses of the torch layers (``convert_layers`` swaps the class in place), so
parameters, state dicts and the cost model see the same layer; ``effdnn_precision`` states the operand
and accumulator widths. Layers whose GEMMs the emulation cannot reach (recurrent layers, attention
computed from raw weight tensors, subclasses with their own forward) are an error, not a silent skip.
"""
from __future__ import annotations

from typing import Callable, Collection

from torch import nn

from ..errors import EffdnnError
from .conv import CONV_CLASSES, LowpConv1d, LowpConv2d, LowpConv3d, LowpConvTranspose1d, LowpConvTranspose2d, \
    LowpConvTranspose3d
from .linear import LowpLinear
from .policy import GemmPolicy, LowpMixin, LowpStats, gemm
from .routed import LowpMultiheadAttention, route_functional_linears

__all__ = ["GemmPolicy", "LowpConv1d", "LowpConv2d", "LowpConv3d", "LowpConvTranspose1d", "LowpConvTranspose2d",
           "LowpConvTranspose3d", "LowpLinear", "LowpMultiheadAttention", "LowpStats", "PolicyFn", "convert_layers", "gemm", "gemm_layers"]


PolicyFn = Callable[[str, nn.Module, int, int], GemmPolicy]
CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: LowpLinear, nn.modules.linear.NonDynamicallyQuantizableLinear: LowpLinear,  # (the latter: out_proj)
    nn.MultiheadAttention: LowpMultiheadAttention, **CONV_CLASSES}

# GEMM layers the emulation does not reach, and why
_UNREACHABLE: list[tuple[type[nn.Module], str]] = [
    (nn.RNNBase, "its GEMMs run inside torch's fused recurrent kernel"),
    (nn.Bilinear, "a bilinear form is not one of the emulated GEMMs"),
]


def gemm_layers(model: nn.Module, keep_float: Collection[str] = ()) -> list[tuple[str, nn.Module]]:
    """Plain Linear / convolution layers (not already converted, not kept in float), in registration order."""
    return [(n, m) for n, m in model.named_modules() if type(m) in CLASSES and not _kept(n, keep_float)]


def _kept(name: str, keep_float: Collection[str]) -> bool:
    return any(name == k or name.startswith(k + ".") for k in keep_float)


def unreachable_layers(model: nn.Module, keep_float: Collection[str] = ()) -> list[str]:
    """One line per layer with GEMMs the emulation cannot round (``keep_float`` names layers left in float)."""
    bad = []
    for name, m in model.named_modules():
        if _kept(name, keep_float) or type(m) in CLASSES or isinstance(m, LowpMixin):
            continue
        why = next((r for cls, r in _UNREACHABLE if isinstance(m, cls)), None)
        if why is None and isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            why = (f"a subclass of {next(c.__name__ for c in CLASSES if isinstance(m, c))} with its own forward "
                   "(or an uninitialized lazy layer); the emulation replaces only the torch layers themselves")
        if why is not None:
            bad.append(f"precision: layer {name!r} ({type(m).__name__}) cannot be emulated: {why}; keep it in float")
    return bad


def convert_layers(model: nn.Module, policy_for: PolicyFn, stats: LowpStats | None = None,
                   keep_float: Collection[str] = ()) -> nn.Module:
    """Make every Linear / convolution of ``model`` (in place) an emulated layer with ``policy_for(name,
    module, index, count)``; ``index`` counts GEMM layers in registration order (first / last layers).
    ``keep_float``: names of layers (and their sub-layers) left in float32, the only ones skipped."""
    bad = unreachable_layers(model, keep_float)
    if bad:
        raise EffdnnError(bad[0] + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    layers = gemm_layers(model, keep_float)
    if not layers:
        raise EffdnnError("precision: the model has no Linear or convolution layer to train in reduced precision")
    modules = dict(model.named_modules())
    for i, (name, mod) in enumerate(layers):
        mod.__class__ = CLASSES[type(mod)]
        mod.lowp_policy = policy_for(name, mod, i, len(layers))  # type: ignore[assignment]
        mod.lowp_stats = stats  # type: ignore[assignment]
        mod.lowp_calls = 0  # type: ignore[assignment]
        if isinstance(mod, (LowpLinear, LowpMultiheadAttention)):  # its parent may call F.linear on it
            route_functional_linears(mod if isinstance(mod, LowpMultiheadAttention) else modules[name.rpartition(".")[0]])
    return model
