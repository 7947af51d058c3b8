"""Post-training quantization (PTQ): fold BatchNorm, swap in fake-quantized layers, calibrate, done.

Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient inference: a whitepaper"
(section 3: per-channel weights, per-tensor activations, BN folding); calibrators in ``observers``.

Recipe block (also the ``spec`` of ``effdnn.quantize(model, spec, calib_data)``)::

    quantize: {method: ptq,
               weight: {format: int, bits: 8, granularity: per_channel},   # null: float weights
               act: {format: int, bits: 8, calibrator: kl},                 # null: float activations
               keep_fp: [first, last],      # layers left in float: first / last / fnmatch patterns
               keep_8bit: [first],          # layers forced to int8 weights and activations
               overrides: {"layers.*.conv1": {weight: {bits: 6}}},          # per-layer changes
               calib_batches: 16}

Every Conv1d / Conv2d (depthwise too) / Linear, inside any model (Hugging Face included), gets a
weight and an input quantizer; every residual ``Add`` gets a quantizer on each operand. Layers left
in float are listed in the report (``ptq_layers``), never skipped silently.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Literal

from pydantic import Field
from torch import nn

from ..transform import TransformContext
from ..errors import EffdnnError
from ..registry import QUANTIZE
from .calibrate import calibrate
from .config import TensorSpec
from .fake_quant import Quantizer
from .fold_bn import fold_batchnorm
from .modules import quantize_layer
from .plan import LayerPlan, layer_specs, quant_layers, quantized_adds


class PTQConfig(LayerPlan):
    method: Literal["ptq"] = "ptq"
    calib_batches: int | None = Field(None, ge=1)
    # the first layer's input is the data itself (few discrete values, a known range): KL / percentile /
    # MSE clip real pixel values there (digits: KL cut the input at 0.81 of 1.85, -4 points), so it is
    # calibrated by ``max`` unless set to null (then it uses act.calibrator like every other tensor)
    first_act_calibrator: str | None = "max"


def _quantizer(spec: TensorSpec | None, role: str, name: str) -> Quantizer | None:
    if spec is None:
        return None
    fmt = spec.build_format(role)
    observer = spec.build_observer(role, name) if hasattr(fmt, "params_from_range") else None
    q = Quantizer(fmt, observer, role=role, signed=spec.signed if role == "act" else True)  # type: ignore[arg-type]
    if observer is None and role == "act" and hasattr(fmt, "fit"):
        raise EffdnnError(f"ptq: {name}: format {fmt.name!r} is for weights only")
    if observer is None and role == "act":
        q.mode = "quantize"
    return q


def prepare(model: nn.Module, config: PTQConfig) -> list[dict[str, Any]]:
    """Swap quantized layers into ``model`` in place (weights quantized now, inputs observing)."""
    layers, first, last = quant_layers(model, config, "ptq")
    summary: list[dict[str, Any]] = []
    for name, m in layers:
        wspec, aspec = layer_specs(name, config, first, last)
        if wspec is None and aspec is None:
            summary.append({"layer": name, "type": type(m).__name__, "weight": "fp32", "act": "fp32"})
            continue
        wq, aq = _quantizer(wspec, "weight", f"{name}.weight"), _quantizer(aspec, "act", f"{name}.input")
        if wq is not None:
            wq.calibrate(m.weight.detach())
        quantize_layer(m, name, wq, aq)
        summary.append({"layer": name, "type": type(m).__name__,
                        "weight": getattr(wq.fmt, "label", wq.fmt.name) if wq else "fp32",
                        "act": "calibrating" if aq else "fp32", "_q": aq, "_m": m})
    for name, m in quantized_adds(model, config, first, last):
        spec = config.act
        quantize_layer(m, name, _quantizer(spec, "act", f"{name}.a"), _quantizer(spec, "act", f"{name}.b"))
        summary.append({"layer": name, "type": "Add", "weight": "-", "act": "calibrating", "_q": m.a_quant})
    return summary


@QUANTIZE.register("ptq", PTQConfig, "post-training quantization: BN folding, max / percentile / MSE / KL calibration")
def ptq(model: nn.Module, config: PTQConfig, ctx: TransformContext) -> nn.Module:
    """Post-training quantization with calibration on a few batches (Krishnamoorthi 2018)."""
    model = copy.deepcopy(model)
    t0 = time.perf_counter()
    if config.fold_bn:
        model.eval()
        fold_batchnorm(model)
    summary = prepare(model, config)
    n = config.calib_batches or ctx.calib_batches
    seen = calibrate(model, ctx.calib_loader(n), n)
    for row in summary:
        q, m = row.pop("_q", None), row.pop("_m", None)
        if getattr(m, "functional_weight", False):  # weight used outside the layer's forward (calibrate)
            row["act"] = "fp32 (weight used outside the layer's forward)"
        elif q is not None:
            row["act"] = getattr(q.fmt, "label", q.fmt.name)
    ctx.extra.update({"calib_time_s": time.perf_counter() - t0, "calib_batches": seen, "ptq_layers": summary})
    return model
