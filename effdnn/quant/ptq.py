"""Post-training quantization (PTQ): fold BatchNorm, swap in fake-quantized layers, calibrate, done.

Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient inference: a whitepaper"
(section 3: per-channel weights, per-tensor activations, BN folding); calibrators in ``observers``.

Recipe block (also the ``spec`` of ``effdnn.quantize(model, spec, calib_data)``)::

    quantize: {method: ptq,
               weight: {format: int, bits: 8, granularity: per_channel},   # null: float weights
               act: {format: int, bits: 8, calibrator: kl},                 # null: float activations
                                                        # {bits: 8, dynamic: per_token | per_tensor}: run-time scales
               embedding: {bits: 8},        # int8 / int4 rows, per-row scales (quant.embedding); null: float
               awq: {grid: 20},             # AWQ's activation-aware weight scales first (awq.py)
               keep_fp: [first, last],      # layers left in float: first / last / fnmatch patterns
               keep_8bit: [first],          # layers forced to int8 weights and activations
               overrides: {"layers.*.conv1": {weight: {bits: 6}}},          # per-layer changes
               calib_batches: 16}

Every Conv1d / Conv2d (depthwise too) / Linear, inside any model (Hugging Face included), gets a
weight and an input quantizer; every residual ``Add`` gets a quantizer on each operand. Layers left
in float are listed in the report (``ptq_layers``), never skipped silently.

Leaving ``act`` out is a documented default, not a silent one: static int8 per tensor, calibrated by
``max`` (as before); the report's ``ptq_act`` states the scheme used and says when it was the default.
"""
from __future__ import annotations

import copy
import itertools
import time
from typing import Any, Callable, Iterable, Literal

from pydantic import Field
from torch import nn

from ..transform import TransformContext
from ..errors import EffdnnError
from ..registry import QUANTIZE
from .awq import AWQSpec, awq_model
from .calibrate import calibrate
from .config import TensorSpec
from .dynamic import DynamicQuantizer
from .embedding import EmbeddingSpec, quantize_embeddings
from .fake_quant import Quantizer
from .fold_bn import fold_batchnorm
from .modules import quantize_layer
from .plan import LayerPlan, depthwise_policy, layer_specs, quant_layers, quantized_adds


class PTQConfig(LayerPlan):
    method: Literal["ptq"] = "ptq"
    calib_batches: int | None = Field(None, ge=1)
    # the first layer's input is the data itself (few discrete values, a known range): KL / percentile /
    # MSE clip real pixel values there (digits: KL cut the input at 0.81 of 1.85, -4 points), so it is
    # calibrated by ``max`` unless set to null (then it uses act.calibrator like every other tensor)
    first_act_calibrator: str | None = "max"
    embedding: EmbeddingSpec | None = None
    awq: AWQSpec | None = None  # AWQ's activation-aware weight scales before the weights are quantized (awq.py)


def _quantizer(spec: TensorSpec | None, role: str, name: str) -> Quantizer | None:
    if spec is None:
        return None
    if spec.dynamic is not None:
        if role != "act":
            raise EffdnnError(f"ptq: {name}: dynamic scales are for activations, not weights")
        return DynamicQuantizer(spec.bits, spec.dynamic)
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
        wspec, aspec = layer_specs(name, config, first, last, m)
        policy = {"policy": f"depthwise {config.depthwise}"} if depthwise_policy(name, m, config, first, last) else {}
        if wspec is None and aspec is None:
            summary.append({"layer": name, "type": type(m).__name__, "weight": "fp32", "act": "fp32", **policy})
            continue
        wq, aq = _quantizer(wspec, "weight", f"{name}.weight"), _quantizer(aspec, "act", f"{name}.input")
        if wq is not None:
            wq.calibrate(m.weight.detach())
        quantize_layer(m, name, wq, aq)
        summary.append({"layer": name, "type": type(m).__name__,
                        "weight": getattr(wq.fmt, "label", wq.fmt.name) if wq else "fp32",
                        "act": "calibrating" if aq else "fp32", "_q": aq, "_m": m, **policy})
    for name, m in quantized_adds(model, config, first, last):
        spec = config.act
        quantize_layer(m, name, _quantizer(spec, "act", f"{name}.a"), _quantizer(spec, "act", f"{name}.b"))
        summary.append({"layer": name, "type": "Add", "weight": "-", "act": "calibrating", "_q": m.a_quant})
    return summary


@QUANTIZE.register("ptq", PTQConfig, "post-training quantization: BN folding, max / percentile / MSE / KL calibration")
def ptq(model: nn.Module, config: PTQConfig, ctx: TransformContext) -> nn.Module:
    """Post-training quantization with calibration on a few batches (Krishnamoorthi 2018); ``awq``:
    AWQ's weight scales first (Lin et al., MLSys 2024)."""
    return ptq_pipeline(model, config, ctx, awq_step(config, ctx.extra) if config.awq is not None else None)


def awq_step(config: PTQConfig, extra: dict[str, Any]) -> PreStep:
    """The pre-step that searches and applies AWQ's scales on the float model (report rows in ``extra``)."""

    def pre(model: nn.Module, data: Callable[[], Iterable[Any]]) -> None:
        extra["awq"] = awq_model(model, config, data(), config.method)

    return pre


# a step before the layers are swapped (float model, its calibration batches) -> a step after (the
# prepared model, the summary rows): how SmoothQuant and GPTQ extend PTQ
PreStep = Callable[[nn.Module, Callable[[], Iterable[Any]]], Callable[[nn.Module, list[dict[str, Any]]], None] | None]


def ptq_pipeline(model: nn.Module, config: PTQConfig, ctx: TransformContext, pre: PreStep | None = None) -> nn.Module:
    """PTQ on a copy of ``model``: fold BN, ``pre`` (float model), swap layers, ``pre``'s after-step,
    calibrate the activations, report."""
    model = copy.deepcopy(model)
    t0 = time.perf_counter()
    if config.fold_bn:
        model.eval()
        fold_batchnorm(model)
    n = config.calib_batches or ctx.calib_batches
    after = pre(model, lambda: itertools.islice(ctx.calib_loader(n), n)) if pre is not None else None
    summary = prepare(model, config)
    if after is not None:
        after(model, summary)
    seen = calibrate(model, ctx.calib_loader(n), n)
    for row in summary:
        q, m = row.pop("_q", None), row.pop("_m", None)
        if getattr(m, "functional_weight", False):  # weight used outside the layer's forward (calibrate)
            row["act"] = "fp32 (weight used outside the layer's forward)"
        elif getattr(m, "never_reached", False):  # off the eval path on every calibration batch (calibrate)
            row["act"] = "fp32 (never reached by the calibration data)"
        elif q is not None:
            row["act"] = getattr(q.fmt, "label", q.fmt.name)
    ctx.extra.update({"calib_time_s": time.perf_counter() - t0, "calib_batches": seen, "ptq_layers": summary,
                      "ptq_act": act_scheme(config),
                      "depthwise_policy": {"policy": config.depthwise, "layers": [r["layer"] for r in summary if "policy" in r]}})
    if config.embedding is not None:
        ctx.extra["embeddings"] = quantize_embeddings(model, config.embedding)
    ctx.extra["calib_time_s"] = time.perf_counter() - t0
    return model


def act_scheme(config: PTQConfig) -> str:
    """The activation scheme in words, stating when it is the default (``act`` not given)."""
    a = config.act
    if a is None:
        return "float activations (act: null)"
    how = f"dynamic {a.dynamic}" if a.dynamic else f"static {a.granularity}, calibrator {a.calibrator}"
    default = " (the default: act not given)" if "act" not in config.model_fields_set else ""
    return f"{a.format}{a.bits} {how}{default}"
