"""Fit a quantized model to int8 kernels that add product pairs in saturating int16 (x86 without VNNI).

Such a kernel (``effdnn.utils.cpu``) computes a layer exactly only when every pair of uint8 input codes
times int8 weight codes fits int16: ``2 * max(a) * max|w| <= 32767``. A layer with 8-bit activations
(uint8 codes up to 255) and 8-bit weights (|w| up to 127) does not: where two large products meet the
sum clips, and the int8 engine then computes another model than the fake-quantized one (ResNet-20:
90.4% top-1 agreement). The two standard cures, as torch.ao (7-bit activations) and onnxruntime
(7-bit weights) ship them under the name ``reduce_range``, each here as a fake-quantized model the
engine then computes exactly:

- ``"weight"``: the layer's weights at 7 bits over the same clipping range (scale x 127 / 63), max code
  63 (2 * 255 * 63 = 32130);
- ``"act"``: the layer's input at 7 bits over the same calibrated range (uint8 codes 0..127;
  2 * 127 * 127 = 32258).

Only the layers whose codes can overflow change; the choice is the caller's, ``"weight"`` being the one
measured to cost less accuracy (BENCHMARKS.md, "int8 engine latency").
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Literal

import torch
from torch import nn

from ..formats import IntFormat
from ..utils.cpu import pair_sum_fits
from .fake_quant import Quantizer
from .modules import QuantLayerMixin

Reduce = Literal["weight", "act"]
REDUCED_BITS = 7


def u8_code_max(fmt: IntFormat) -> int:
    """The largest uint8 code of an activation format as the int8 engine stores it (codes shifted by
    -qmin so the smallest is 0: 255 for int8 and uint8, 127 for 7 bits)."""
    return fmt.qmax - fmt.qmin


@torch.no_grad()
def weight_code_absmax(layer: QuantLayerMixin) -> int:
    """max |integer weight code| of a layer (pruned weights count as 0)."""
    wq = layer.weight_quant
    codes = wq.fmt.quantize(layer.weight.detach(), wq.params)  # type: ignore[union-attr, attr-defined]
    mask = getattr(layer, "weight_mask", None)
    if isinstance(mask, torch.Tensor):
        codes = codes * mask
    return int(codes.abs().max()) if codes.numel() else 0


def _int_layer(m: nn.Module) -> bool:
    if not isinstance(m, QuantLayerMixin):
        return False
    wq, iq = m.weight_quant, m.input_quant
    return all(q is not None and isinstance(q.fmt, IntFormat) and q.fmt.bits <= 8 for q in (wq, iq))


def saturating_layers(model: nn.Module) -> list[str]:
    """Names of the integer layers whose uint8 input codes x int8 weight codes can overflow an int16 pair."""
    return [name for name, m in model.named_modules() if _int_layer(m)
            and not pair_sum_fits(u8_code_max(m.input_quant.fmt), weight_code_absmax(m))]  # type: ignore[union-attr]


@torch.no_grad()
def _reduce(q: Quantizer) -> None:
    """``q`` at 7 bits over the range its current params cover (lowest to highest code)."""
    fmt, p = q.fmt, q.params
    lo = (fmt.qmin - p.zero_point.float()) * p.scale
    hi = (fmt.qmax - p.zero_point.float()) * p.scale
    q.fmt = dataclasses.replace(fmt, bits=REDUCED_BITS)
    q.set_params(q.fmt.params_from_range(lo.reshape(-1), hi.reshape(-1)))


def fit_int16_pairs(model: nn.Module, how: Reduce) -> tuple[nn.Module, list[str]]:
    """(the model an int16-pair kernel computes exactly, the layers changed): ``model`` itself when no
    layer can overflow, else a copy whose overflowing layers have 7-bit weights (``how="weight"``) or
    7-bit inputs (``"act"``), each over the range it was calibrated to (module doc)."""
    names = saturating_layers(model)
    if not names:
        return model, []
    fitted = copy.deepcopy(model)
    mods = dict(fitted.named_modules())
    for name in names:
        layer = mods[name]
        _reduce(layer.weight_quant if how == "weight" else layer.input_quant)  # type: ignore[arg-type]
    return fitted, names


__all__ = ["REDUCED_BITS", "Reduce", "fit_int16_pairs", "saturating_layers", "u8_code_max", "weight_code_absmax"]
