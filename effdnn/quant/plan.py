"""The layer plan shared by PTQ and every QAT method: which tensors of which layers get which format.

A plan names a weight spec and an activation spec for every Conv1d / Conv2d / Linear (and the
operands of residual ``Add`` joins), then lets ``keep_fp`` (float), ``keep_8bit`` (int8 weights and
activations) and ``overrides`` (per-layer partial specs) change single layers. Patterns are the
project's one pattern language (``utils.layer_patterns``): fnmatch plus ``first`` / ``last``, and a
pattern that matches no layer is an error.

Depthwise convolutions (groups == in_channels > 1) have one k x k filter per channel: too few weights
for a low-bit grid, and no sum over input channels to average the rounding error out (Sheng et al.
2018, "A quantization-friendly separable convolution for MobileNets"; Krishnamoorthi 2018, section
3.1, per-channel depthwise weights). The default policy ``depthwise: keep_8bit`` keeps every depthwise
layer whose weight spec would be below 8 bits at int8 weights and activations (``keep_fp``: float;
``quantize``: as every other layer). ``keep_fp``, ``keep_8bit`` and ``overrides`` come after the
policy, so a pattern naming a depthwise layer still decides it (an override that puts one below 8 bits
warns in one line). The report lists the layers the policy touched (``depthwise_policy``).
"""
from __future__ import annotations

import warnings
from typing import Literal

from pydantic import Field
from torch import nn

from ..errors import EffdnnError
from ..models.layers import Add
from ..registry import StrictModel
from ..utils.layer_patterns import check_patterns, matches
from .config import LayerOverride, TensorSpec
from .modules import own_forward_subclass, quantizable


class LayerPlan(StrictModel):
    """Which tensors of which layers get which format: shared by PTQ and every QAT method."""

    weight: TensorSpec | None = Field(default_factory=lambda: TensorSpec(granularity="per_channel"))
    act: TensorSpec | None = Field(default_factory=TensorSpec)
    keep_fp: list[str] = Field(default_factory=list)
    keep_8bit: list[str] = Field(default_factory=list)
    overrides: dict[str, LayerOverride] = Field(default_factory=dict)
    fold_bn: bool = True
    quantize_add: bool = True
    first_act_calibrator: str | None = None  # the calibrator of the first layer's input (None: act.calibrator)
    depthwise: Literal["keep_8bit", "keep_fp", "quantize"] = Field(
        "keep_8bit", description="depthwise convolutions whose weight spec is below 8 bits: kept at int8 "
        "(keep_8bit), in float (keep_fp), or quantized as the others (quantize)")


def is_depthwise(m: nn.Module) -> bool:
    """A depthwise convolution: one filter group per input channel (groups == in_channels > 1)."""
    return isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups > 1 and m.groups == m.in_channels


def depthwise_policy(name: str, m: nn.Module, config: LayerPlan, first: str, last: str) -> str | None:
    """The policy ``config.depthwise`` applies to layer ``name`` ("keep_8bit" / "keep_fp"), or None: not
    depthwise, policy ``quantize``, a weight spec of 8 bits or more, or a pattern of the plan names it."""
    if config.depthwise == "quantize" or not is_depthwise(m) or config.weight is None or config.weight.bits >= 8:
        return None
    if matches(name, [*config.keep_fp, *config.keep_8bit, *config.overrides], first, last):
        return None
    return config.depthwise


def quant_layers(model: nn.Module, config: LayerPlan, tag: str) -> tuple[list[tuple[str, nn.Module]], str, str]:
    """(the quantizable layers in definition order, first name, last name), after checking that every
    pattern of the plan matches a layer or an ``Add``."""
    layers = [(n, m) for n, m in model.named_modules() if quantizable(m) and not isinstance(m, Add)]
    if not layers:
        raise EffdnnError(f"{tag}: the model has no Conv1d / Conv2d / Linear layer to quantize")
    names = [n for n, _ in layers]
    adds = [n for n, m in model.named_modules() if isinstance(m, Add)]
    own = [(n, m) for n, m in model.named_modules() if own_forward_subclass(m) is not None]
    check_patterns(config.keep_fp, names + adds + [n for n, _ in own], f"{tag}.keep_fp")
    for n, m in own:
        if not matches(n, config.keep_fp, names[0], names[-1]):
            raise EffdnnError(f"{tag}: layer {n!r} ({type(m).__name__}) subclasses nn.{own_forward_subclass(m).__name__} "
                              "with a forward of its own, which a quantized layer would replace: keep it in float "
                              f"with keep_fp: [{n!r}]")
    check_patterns(config.keep_8bit, names, f"{tag}.keep_8bit")
    check_patterns(config.overrides, names, f"{tag}.overrides")
    return layers, names[0], names[-1]


def layer_specs(name: str, config: LayerPlan, first: str, last: str,
                module: nn.Module | None = None) -> tuple[TensorSpec | None, TensorSpec | None]:
    """(weight spec, act spec) of one layer after the depthwise policy (when ``module`` is given),
    keep_fp / keep_8bit / overrides; (None, None): float."""
    policy = depthwise_policy(name, module, config, first, last) if module is not None else None
    if policy == "keep_fp" or matches(name, config.keep_fp, first, last):
        return None, None
    w, a = config.weight, config.act
    if name == first and a is not None and config.first_act_calibrator is not None:
        a = a.override({"calibrator": config.first_act_calibrator})
    if policy == "keep_8bit" or matches(name, config.keep_8bit, first, last):
        w = (w or TensorSpec(granularity="per_channel")).override({"format": "int", "bits": 8})
        a = (a or TensorSpec()).override({"format": "int", "bits": 8}) if a is not None or policy is None else None
    for pattern, ov in config.overrides.items():
        if matches(name, [pattern], first, last):
            if ov.fp:
                return None, None
            w = (w or TensorSpec(granularity="per_channel")).override(ov.weight) if ov.weight is not None else w
            a = (a or TensorSpec()).override(ov.act) if ov.act is not None else a
    if module is not None and is_depthwise(module) and w is not None and w.bits < 8 and \
            any(ov.weight and "bits" in ov.weight for p, ov in config.overrides.items() if matches(name, [p], first, last)):
        warnings.warn(f"depthwise layer {name!r} quantized to {w.bits}-bit weights by an override: expect a large "
                      f"accuracy loss (the default keeps depthwise layers at 8 bits)", stacklevel=2)
    return w, a


def policy_report(layers: list[tuple[str, nn.Module]], config: LayerPlan, first: str, last: str) -> dict[str, object]:
    """The report field ``depthwise_policy``: the policy and the layers it changed."""
    touched = [n for n, m in layers if depthwise_policy(n, m, config, first, last) is not None]
    return {"policy": config.depthwise, "layers": touched}


def quantized_adds(model: nn.Module, config: LayerPlan, first: str, last: str) -> list[tuple[str, Add]]:
    """The residual joins whose operands the plan quantizes (``quantize_add`` with an act spec)."""
    if not (config.quantize_add and config.act is not None):
        return []
    return [(n, m) for n, m in model.named_modules() if type(m) is Add and not matches(n, config.keep_fp, first, last)]


__all__ = ["LayerPlan", "depthwise_policy", "is_depthwise", "layer_specs", "policy_report", "quant_layers", "quantized_adds"]
