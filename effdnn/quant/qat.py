"""Quantization-aware training (QAT): fake-quantize weights and activations in the forward pass, train
with the straight-through estimator, then convert to the same static quantized layers as PTQ.

Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", section 3 (simulated quantization, EMA activation ranges, BN folding during training);
Krishnamoorthi 2018, section 3.2 (BN statistics frozen after a few epochs).

Recipe block (``method: qat``; PACT, LSQ and DoReFa share every field and add their own)::

    quantize: {method: qat,
               weight: {format: int, bits: 4, granularity: per_channel},   # int | log | fixed | kmeans
               act: {format: int, bits: 4},                                 # null: float activations
               keep_fp: [last], keep_8bit: [first],                         # mixed widths, patterns too
               overrides: {"classifier.*": {weight: {bits: 2}}},
               bn_freeze_epoch: 2,        # null: BN folded once with its running statistics
               calib_batches: 4}
    finetune: {epochs: 5, lr: 0.0005}

The transform prepares the model (BN folded, layers swapped to their quantized classes with
training-time quantizers, activation ranges initialised on ``calib_batches``), adds its callbacks
(BN freeze, regularisers) to ``ctx.callbacks`` and a converter to ``ctx.finalizers``; the runner's
``finetune`` block trains it (``from_scratch: true`` starts from a fresh model instead). Through the
Python API, ``effdnn.quantize`` returns the prepared model; train it with any loop, then call
``convert_qat(model)``.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..transform import TransformContext
from ..errors import EffdnnError
from ..formats import KMeansFormat
from ..utils.batchnorm import recalibrate_batchnorm
from ..registry import QUANTIZE
from ..hooks import Callback
from .bn_fold_qat import FoldedBNWeight
from .calibrate import calibrate
from .config import TensorSpec
from .fold_bn import BN, conv_bn_pairs, fold_batchnorm, fold_pair
from .modules import quantize_layer
from .plan import LayerPlan, depthwise_policy, layer_specs, policy_report, quant_layers, quantized_adds
from .qat_quantizers import CodebookWeightQuantizer, DynamicWeightQuantizer, EMAActQuantizer, QATQuantizer

WeightFactory = Callable[[TensorSpec, str, nn.Module], nn.Module]
ActFactory = Callable[[TensorSpec, str], nn.Module]


class QATConfig(LayerPlan):
    method: Literal["qat"] = "qat"
    bn_freeze_epoch: int | None = Field(None, ge=0, description="epoch at which folded BN stops using batch statistics")
    calib_batches: int | None = Field(4, ge=1)
    ema_momentum: float = Field(0.01, gt=0, le=1, description="activation range moving average (method qat)")
    from_scratch: bool = False
    learn_input_range: bool = Field(False, description="lsq / pact: learn the range of the model's input too (else "
                                    "an EMA range, as method qat: a learned one costs the data's gradient)")
    bn_recalibration: int = Field(0, ge=0, description="batches that re-estimate the BatchNorm statistics once the "
                                  "weights are quantized, before the activation ranges are calibrated (fold_bn: false)")

    @model_validator(mode="after")
    def _recalibration_needs_batchnorms(self) -> "QATConfig":
        if self.bn_recalibration and self.fold_bn:
            raise ValueError("bn_recalibration needs fold_bn: false (folded BatchNorms keep no statistics to re-estimate)")
        return self


# -- default quantizers of plain STE QAT -----------------------------------------------------------------
def generic_weight(spec: TensorSpec, name: str, layer: nn.Module) -> QATQuantizer:
    """Any weight format with plain STE: k-means gets trained centroids, others per-step params."""
    fmt = spec.build_format("weight")
    if isinstance(fmt, KMeansFormat):
        return CodebookWeightQuantizer(fmt, layer.weight)
    return DynamicWeightQuantizer(fmt)


def ema_act(spec: TensorSpec, name: str, momentum: float = 0.01) -> QATQuantizer:
    if spec.format != "int":
        raise EffdnnError(f"qat: {name}: activations support format int only, got {spec.format!r}")
    return EMAActQuantizer(spec.build_format("act"), momentum, auto_sign=spec.signed == "auto")  # type: ignore[arg-type]


# -- BN freezing -----------------------------------------------------------------------------------------
class FreezeBN(Callback):
    """Krishnamoorthi 2018, section 3.2: folded BN switches from batch to running statistics (frozen)."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.frozen_at = epoch, None

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        if epoch >= self.epoch:
            for m in model.modules():
                if isinstance(m, FoldedBNWeight):
                    m.freeze()
            self.frozen_at = self.frozen_at if self.frozen_at is not None else epoch

    def report(self) -> dict[str, Any]:
        return {"bn_frozen_at_epoch": self.frozen_at}


def _wrap_bn(model: nn.Module) -> dict[str, nn.Module]:
    """Move every BN that follows a Conv / Linear out of the graph; returns {layer name: bn}."""
    out = {}
    for layer_name, bn_name in conv_bn_pairs(model):
        bn = model.get_submodule(bn_name)
        if isinstance(bn, BN) and bn.track_running_stats and bn.running_var is not None:
            out[layer_name] = bn
            model.set_submodule(bn_name, nn.Identity())
    return out


# -- prepare / convert -----------------------------------------------------------------------------------
def prepare_qat(model: nn.Module, config: Any, ctx: TransformContext, weight_q: WeightFactory = generic_weight,
                act_q: ActFactory | None = None, tag: str = "qat") -> nn.Module:
    """A copy of ``model`` with training-time quantizers (made by ``weight_q`` / ``act_q``), BN folded,
    activation quantizers initialised on the calibration batches; registers callbacks + converter."""
    act_q = act_q or (lambda s, n: ema_act(s, n, config.ema_momentum))
    if config.from_scratch:
        if ctx.make_model is None:
            raise EffdnnError(f"{tag}: from_scratch needs a recipe (a fresh model to train)")
        model = ctx.make_model().to(ctx.device)
    else:
        model = copy.deepcopy(model)
    bns: dict[str, nn.Module] = {}
    if config.fold_bn:
        if config.bn_freeze_epoch is None:
            model.eval()
            fold_batchnorm(model)
        else:
            bns = _wrap_bn(model)
    layers, first, last = quant_layers(model, config, tag)
    summary: list[dict[str, Any]] = []
    for name, m in layers:
        wspec, aspec = layer_specs(name, config, first, last, m)
        if name in bns and (wspec is None or wspec.format == "kmeans"):
            fold_pair(m, bns.pop(name))  # float weights / fixed clusters: BN folded once (running statistics)
        wq = weight_q(wspec, name, m) if wspec is not None else None
        if aspec is None:
            aq = None
        elif name == first and not config.learn_input_range:
            # the model's input is data: an EMA range, not a learned one, whose gradient would need the
            # gradient of the data (a whole input-gradient pass of the first layer that float training
            # never computes: ~5x the first conv's backward time for LeNet-5's 1-channel input on CPU)
            aq = ema_act(aspec, f"{name}.input", config.ema_momentum)
        else:
            aq = act_q(aspec, f"{name}.input")
        if name in bns:
            wq = FoldedBNWeight(wq, bns.pop(name), m)
        if wq is None and aq is None:
            summary.append({"layer": name, "type": type(m).__name__, "weight": "fp32", "act": "fp32"})
            if depthwise_policy(name, m, config, first, last):
                summary[-1]["policy"] = f"depthwise {config.depthwise}"
            continue
        quantize_layer(m, name, wq, aq)
        summary.append({"layer": name, "type": type(m).__name__, "weight": _label(wq), "act": _label(aq)})
        if depthwise_policy(name, m, config, first, last):
            summary[-1]["policy"] = f"depthwise {config.depthwise}"
    for name, m in quantized_adds(model, config, first, last):
        quantize_layer(m, name, act_q(config.act, f"{name}.a"), act_q(config.act, f"{name}.b"))
        summary.append({"layer": name, "type": "Add", "weight": "-", "act": _label(m.a_quant)})
    n = config.calib_batches or ctx.calib_batches
    t0 = time.perf_counter()
    if config.bn_recalibration:
        # quantized weights (DoReFa's tanh(w) / max|tanh(w)|, eq. 9) change each layer's output scale, so
        # the statistics stored with the float weights no longer hold: re-estimate them (EagleEye's adaptive
        # BatchNorm, utils.batchnorm) with the weights quantized, the activation quantizers still observing
        # (they pass their inputs through; ``calibrate`` then sets their ranges on the corrected outputs)
        ctx.extra["bn_recalibration_batches"] = recalibrate_batchnorm(
            model, ctx.calib_loader(config.bn_recalibration), config.bn_recalibration)
    if any(getattr(q, "mode", None) == "observe" for q in model.modules()):
        calibrate(model, ctx.calib_loader(n), n)
    model.train()
    ctx.extra.update({"qat_layers": summary, "calib_time_s": time.perf_counter() - t0,
                      "depthwise_policy": policy_report(layers, config, first, last)})
    if config.fold_bn and config.bn_freeze_epoch is not None:
        ctx.callbacks.append(FreezeBN(config.bn_freeze_epoch))
    ctx.finalizers.append(convert_qat)
    return model


def _label(q: nn.Module | None) -> str:
    if q is None:
        return "fp32"
    return getattr(q, "label", None) or getattr(q.fmt, "label", q.fmt.name)  # type: ignore[union-attr]


def convert_qat(model: nn.Module) -> nn.Module:
    """Replace every training-time quantizer by a static ``Quantizer`` computing the same values: the
    weight becomes its quantized value (re-quantizing it is exact), BN is folded for good, learned
    ranges become scales. The result is a PTQ-style model (cost model, ONNX export, int8 engine)."""
    model.eval()
    for m in model.modules():
        wq = getattr(m, "weight_quant", None)
        if isinstance(wq, FoldedBNWeight):
            wq = m.weight_quant = wq.unfold(m)
        if isinstance(wq, QATQuantizer):
            w_hat = wq(m.weight).detach()
            if isinstance(getattr(m, "weight_mask", None), torch.Tensor):  # pruned: zero stays zero
                w_hat = w_hat * m.weight_mask.to(w_hat.dtype)
            m.weight_quant = wq.to_static(w_hat)
            m.weight.data.copy_(w_hat)
            m.weight.requires_grad_(True)
        for attr in ("input_quant", "a_quant", "b_quant"):
            q = getattr(m, attr, None)
            if isinstance(q, QATQuantizer):
                setattr(m, attr, q.to_static())
    return model


@QUANTIZE.register("qat", QATConfig, "quantization-aware training: STE, EMA activation ranges, BN folded + frozen")
def qat(model: nn.Module, config: QATConfig, ctx: TransformContext) -> nn.Module:
    """Plain STE QAT (Jacob et al. 2018): any weight format (int / log / fixed / k-means centroids)."""
    return prepare_qat(model, config, ctx)


__all__ = ["FreezeBN", "QATConfig", "convert_qat", "ema_act", "generic_weight", "prepare_qat", "qat"]
