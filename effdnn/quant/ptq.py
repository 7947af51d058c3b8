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
import fnmatch
import time
from typing import Any, Literal

from pydantic import Field
from torch import nn

from ..context import ExperimentContext
from ..errors import EffdnnError
from ..models.layers import Add
from ..registry import QUANTIZE, StrictModel
from .calibrate import calibrate
from .config import LayerOverride, TensorSpec
from .fake_quant import Quantizer
from .fold_bn import fold_batchnorm
from .modules import quantizable, quantize_layer


class LayerPlan(StrictModel):
    """Which tensors of which layers get which format: shared by PTQ and every QAT method."""

    weight: TensorSpec | None = Field(default_factory=lambda: TensorSpec(granularity="per_channel"))
    act: TensorSpec | None = Field(default_factory=TensorSpec)
    keep_fp: list[str] = Field(default_factory=list)
    keep_8bit: list[str] = Field(default_factory=list)
    overrides: dict[str, LayerOverride] = Field(default_factory=dict)
    fold_bn: bool = True
    quantize_add: bool = True


class PTQConfig(LayerPlan):
    method: Literal["ptq"] = "ptq"
    calib_batches: int | None = Field(None, ge=1)
    # the first layer's input is the data itself (few discrete values, a known range): KL / percentile /
    # MSE clip real pixel values there (digits: KL cut the input at 0.81 of 1.85, -4 points), so it is
    # calibrated by ``max`` unless set to null (then it uses act.calibrator like every other tensor)
    first_act_calibrator: str | None = "max"


def _matches(name: str, patterns: list[str], first: str, last: str) -> bool:
    for p in patterns:
        if (p == "first" and name == first) or (p == "last" and name == last) or fnmatch.fnmatchcase(name, p):
            return True
    return False


def layer_specs(name: str, config: LayerPlan, first: str, last: str) -> tuple[TensorSpec | None, TensorSpec | None]:
    """(weight spec, act spec) of one layer after keep_fp / keep_8bit / overrides; (None, None): float."""
    if _matches(name, config.keep_fp, first, last):
        return None, None
    w, a = config.weight, config.act
    if name == first and a is not None and config.first_act_calibrator is not None:
        a = a.override({"calibrator": config.first_act_calibrator})
    if _matches(name, config.keep_8bit, first, last):
        w = (w or TensorSpec(granularity="per_channel")).override({"format": "int", "bits": 8})
        a = (a or TensorSpec()).override({"format": "int", "bits": 8})
    for pattern, ov in config.overrides.items():
        if _matches(name, [pattern], first, last):
            if ov.fp:
                return None, None
            w = (w or TensorSpec(granularity="per_channel")).override(ov.weight) if ov.weight is not None else w
            a = (a or TensorSpec()).override(ov.act) if ov.act is not None else a
    return w, a


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
    layers = [(n, m) for n, m in model.named_modules() if quantizable(m) and not isinstance(m, Add)]
    if not layers:
        raise EffdnnError("ptq: the model has no Conv1d / Conv2d / Linear layer to quantize")
    first, last = layers[0][0], layers[-1][0]
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
                        "act": "calibrating" if aq else "fp32", "_q": aq})
    if config.quantize_add and config.act is not None:
        for name, m in model.named_modules():
            if type(m) is Add and not _matches(name, config.keep_fp, first, last):
                spec = config.act
                quantize_layer(m, name, _quantizer(spec, "act", f"{name}.a"), _quantizer(spec, "act", f"{name}.b"))
                summary.append({"layer": name, "type": "Add", "weight": "-", "act": "calibrating", "_q": m.a_quant})
    return summary


@QUANTIZE.register("ptq", PTQConfig, "post-training quantization: BN folding, max / percentile / MSE / KL calibration")
def ptq(model: nn.Module, config: PTQConfig, ctx: ExperimentContext) -> nn.Module:
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
        q = row.pop("_q", None)
        if q is not None:
            row["act"] = getattr(q.fmt, "label", q.fmt.name)
    ctx.extra.update({"calib_time_s": time.perf_counter() - t0, "calib_batches": seen, "ptq_layers": summary})
    return model
