"""The layer plan shared by PTQ and every QAT method: which tensors of which layers get which format.

A plan names a weight spec and an activation spec for every Conv1d / Conv2d / Linear (and the
operands of residual ``Add`` joins), then lets ``keep_fp`` (float), ``keep_8bit`` (int8 weights and
activations) and ``overrides`` (per-layer partial specs) change single layers. Patterns are the
project's one pattern language (``utils.layer_patterns``): fnmatch plus ``first`` / ``last``, and a
pattern that matches no layer is an error.
"""
from __future__ import annotations

from pydantic import Field
from torch import nn

from ..errors import EffdnnError
from ..models.layers import Add
from ..registry import StrictModel
from ..utils.layer_patterns import check_patterns, matches
from .config import LayerOverride, TensorSpec
from .modules import quantizable


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


def quant_layers(model: nn.Module, config: LayerPlan, tag: str) -> tuple[list[tuple[str, nn.Module]], str, str]:
    """(the quantizable layers in definition order, first name, last name), after checking that every
    pattern of the plan matches a layer or an ``Add``."""
    layers = [(n, m) for n, m in model.named_modules() if quantizable(m) and not isinstance(m, Add)]
    if not layers:
        raise EffdnnError(f"{tag}: the model has no Conv1d / Conv2d / Linear layer to quantize")
    names = [n for n, _ in layers]
    adds = [n for n, m in model.named_modules() if isinstance(m, Add)]
    check_patterns(config.keep_fp, names + adds, f"{tag}.keep_fp")
    check_patterns(config.keep_8bit, names, f"{tag}.keep_8bit")
    check_patterns(config.overrides, names, f"{tag}.overrides")
    return layers, names[0], names[-1]


def layer_specs(name: str, config: LayerPlan, first: str, last: str) -> tuple[TensorSpec | None, TensorSpec | None]:
    """(weight spec, act spec) of one layer after keep_fp / keep_8bit / overrides; (None, None): float."""
    if matches(name, config.keep_fp, first, last):
        return None, None
    w, a = config.weight, config.act
    if name == first and a is not None and config.first_act_calibrator is not None:
        a = a.override({"calibrator": config.first_act_calibrator})
    if matches(name, config.keep_8bit, first, last):
        w = (w or TensorSpec(granularity="per_channel")).override({"format": "int", "bits": 8})
        a = (a or TensorSpec()).override({"format": "int", "bits": 8})
    for pattern, ov in config.overrides.items():
        if matches(name, [pattern], first, last):
            if ov.fp:
                return None, None
            w = (w or TensorSpec(granularity="per_channel")).override(ov.weight) if ov.weight is not None else w
            a = (a or TensorSpec()).override(ov.act) if ov.act is not None else a
    return w, a


def quantized_adds(model: nn.Module, config: LayerPlan, first: str, last: str) -> list[tuple[str, Add]]:
    """The residual joins whose operands the plan quantizes (``quantize_add`` with an act spec)."""
    if not (config.quantize_add and config.act is not None):
        return []
    return [(n, m) for n, m in model.named_modules() if type(m) is Add and not matches(n, config.keep_fp, first, last)]


__all__ = ["LayerPlan", "layer_specs", "quant_layers", "quantized_adds"]
