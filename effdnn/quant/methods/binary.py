"""The driver of the binary and ternary methods (BinaryConnect, BNN, BWN, XNOR-Net, TWN, TTQ).

``binarize`` is what every method's transform calls: layer choice (``keep_fp``, ``keep_8bit``, the
depthwise policy), optional BatchNorms
after each binarised layer with statistics set on a few batches, the report's summary, the training
callbacks, and the bit-packed deployment (``packed: true``, ``effdnn.quant.packed``). The layers
themselves are in ``binary_layers``.

Precision policy. A depthwise convolution (groups == in_channels > 1) has one k x k filter per channel:
9 weights cannot carry a binary or ternary code and a scale (no sum over input channels averages the
sign errors out), so by default (``depthwise: keep_8bit``) depthwise layers keep int8 per-channel
weights trained with the STE and float inputs (Sheng et al. 2018, "A quantization-friendly separable
convolution for MobileNets", trace MobileNet's quantization loss to its depthwise layers; binary
MobileNet-style nets such as ReActNet, Liu et al. 2020, replace them by full 3x3 convolutions before
binarising). ``depthwise: keep_fp`` keeps them in float; ``binarize``
binarises them as every other layer, with one warning line naming them. The first and last layers
follow each method's paper (``keep_fp``'s default); ``keep_8bit`` / ``keep_fp`` patterns decide single
layers before the policy. The report lists the layers the policy touched (``depthwise_policy``).

Binary inputs (XNOR-Net, BNN) and fan-in. A binarised layer's dot product over n = C_in / groups x k x k
binary inputs takes only n + 1 values (times the scales): a 1x1 convolution of a narrow bottleneck (8
input channels in a MobileNetV2 of width 0.35) passes 9 levels on, for the same reason the first
layer's 3 channels stay real in the XNOR-Net and BNN papers. ``min_binary_fan_in: n`` keeps the inputs
of layers with a smaller fan-in real-valued (their weights stay binary, as BWN's); binarising such
inputs anyway (the default, 0, as the papers) prints one warning line naming the layers under
``SMALL_FAN_IN``.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Literal

import torch
from pydantic import Field
from torch import nn

from ...errors import EffdnnError
from ...registry import StrictModel
from ...transform import TransformContext
from ...utils.layer_patterns import check_patterns, matches
from ...utils.batches import forward as run_batch, iter_inputs, model_device
from ...utils.batchnorm import recalibrate_batchnorm
from ...formats import Granularity, IntFormat
from ..modules import dense_type, quantize_layer, swap_class
from ..packed import pack_model
from ..plan import is_depthwise
from ..qat import convert_qat
from ..qat_quantizers import DynamicWeightQuantizer
from .binary_layers import (BINARY_CLASSES, BinaryConv2d, BinaryLayerMixin, BinaryLinear, ClipLatentWeights, SignActivation,
                            SignCode, WeightBinarizer, clip_latent, expand_scale, glorot_h, sign_pm1)


class BinaryMethodConfig(StrictModel):
    """Options shared by every binary / ternary method."""

    keep_fp: list[str] | None = None  # first / last / fnmatch patterns; None: the paper's choice
    keep_8bit: list[str] = Field(default_factory=list)  # layers kept at int8 weights (float inputs)
    depthwise: Literal["keep_8bit", "keep_fp", "binarize"] = Field(
        "keep_8bit", description="depthwise convolutions: int8 weights (keep_8bit, the default), float "
        "(keep_fp) or binarised as the others (binarize, warns)")
    bn_init_batches: int = Field(8, ge=0)  # batches that set the inserted BatchNorms' statistics
    batch_norm: bool = Field(False, description="a BatchNorm after every binarised layer (for nets without "
                             "one: BinaryConnect and BNN normalise every layer's output)")
    packed: bool = False  # after fine-tuning, deploy bit-packed (effdnn.quant.packed): the report measures it


SMALL_FAN_IN = 64  # binary inputs to a dot product of fewer terms get a warning line


class BinaryInputConfig(BinaryMethodConfig):
    """Options of the methods that binarise inputs too (XNOR-Net, BNN)."""

    min_binary_fan_in: int = Field(0, ge=0, description="layers whose fan-in (input channels per group x kernel "
                                   "size) is below this keep real-valued inputs (weights still binary); 0: every "
                                   "binarised layer's inputs are binary, as the papers")


def fan_in(m: nn.Module) -> int:
    """The number of terms of one output's dot product: C_in / groups x kernel size (in_features)."""
    return int(m.weight[0].numel())


class OutputBatchNorm(nn.Sequential):
    """A binarised layer followed by the BatchNorm that ``batch_norm: true`` inserts (a Sequential: the
    packed deployment swaps the layer inside it, the cost model sees a float BatchNorm)."""

    def __init__(self, layer: nn.Module, channels: int, conv: bool) -> None:
        bn = nn.BatchNorm2d(channels) if conv else nn.BatchNorm1d(channels)
        super().__init__(layer, bn.to(layer.weight.device))


@torch.no_grad()
def output_channel_stats(model: nn.Module, names: list[str], batches: Any, limit: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel (dim 1) mean and standard deviation of the named modules' outputs over a few batches."""
    mods = dict(model.named_modules())
    acc: dict[str, list[Any]] = {n: [0.0, 0.0, 0] for n in names}

    def hook(name: str) -> Callable[..., None]:
        def record(mod: nn.Module, args: Any, out: torch.Tensor) -> None:
            o = out.detach().transpose(0, 1).reshape(out.shape[1], -1).double()  # (C, everything else)
            a = acc[name]
            a[0], a[1], a[2] = a[0] + o.sum(1), a[1] + (o * o).sum(1), a[2] + o.shape[1]
        return record

    handles = [mods[n].register_forward_hook(hook(n)) for n in names]
    was = model.training
    model.eval()
    try:
        for x in iter_inputs(batches, limit, model_device(model)):
            run_batch(model, x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    out = {}
    for n, (s1, s2, k) in acc.items():
        if k:
            mean = s1 / k
            out[n] = (mean.float(), (s2 / k - mean * mean).clamp(min=1e-12).sqrt().float())
    return out


def insert_output_bn(model: nn.Module, names: list[str], stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Wrap each named layer as layer -> BatchNorm; the BatchNorm's affine part starts at the float layer's
    per-channel output mean / std, so the normalised binary output starts where the float one was."""
    mods = dict(model.named_modules())
    for name in names:
        layer = mods[name]
        wrapped = OutputBatchNorm(layer, layer.weight.shape[0], isinstance(layer, nn.Conv2d))
        if name in stats:
            mean, std = stats[name]
            wrapped[1].weight.data.copy_(std)
            wrapped[1].bias.data.copy_(mean)
        model.set_submodule(name, wrapped)


def init_bn_statistics(model: nn.Module, batches: Any, limit: int) -> int:
    """Set the inserted BatchNorms' running mean / variance to their cumulative averages over a few
    batches (the rest of the model in eval mode), so a binarised model is usable before fine-tuning."""
    bns = [m.bn for m in model.modules() if isinstance(m, SignActivation)]
    bns += [m[1] for m in model.modules() if isinstance(m, OutputBatchNorm)]
    return recalibrate_batchnorm(model, batches, limit, bns)


def _layer_choice(name: str, m: nn.Module, config: BinaryMethodConfig, keep: list[str], first: str, last: str,
                  binary_input: bool) -> tuple[str, str | None]:
    """(what layer ``name`` becomes: binary / fp / int8 / unsupported, the reason when not binary)."""
    if dense_type(m) not in BINARY_CLASSES:
        return "unsupported", "layer type not supported by binary methods"
    if matches(name, keep, first, last):
        return "fp", "keep_fp"
    if matches(name, config.keep_8bit, first, last):
        return "int8", "keep_8bit"
    if is_depthwise(m) and config.depthwise != "binarize":
        return ("fp" if config.depthwise == "keep_fp" else "int8"), f"depthwise {config.depthwise}"
    if isinstance(m, nn.Conv2d) and m.groups != 1 and binary_input:
        return "unsupported", "grouped convolution with binary inputs not supported by binary methods"
    return "binary", None


def binarize(model: nn.Module, config: BinaryMethodConfig, ctx: TransformContext, method: str,
             weight_quant: Callable[[nn.Module], WeightBinarizer], binary_input: bool = False,
             k_scaling: bool = False, default_keep_fp: tuple[str, ...] = ()) -> nn.Module:
    """Swap every Conv2d / Linear (but those kept in float or at 8 bits) for its binary class, in a copy."""
    model = copy.deepcopy(model)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    if not layers:
        raise EffdnnError(f"{method}: the model has no Conv2d / Linear layer to binarise")
    first, last = layers[0][0], layers[-1][0]
    keep = list(default_keep_fp) if config.keep_fp is None else config.keep_fp
    check_patterns(config.keep_fp or (), [n for n, _ in layers], f"{method}.keep_fp")
    check_patterns(config.keep_8bit, [n for n, _ in layers], f"{method}.keep_8bit")
    stats = {}
    if config.batch_norm and config.bn_init_batches:  # the float layers' output statistics, before the swap
        stats = output_channel_stats(model, [n for n, _ in layers], ctx.calib_loader(config.bn_init_batches),
                                     config.bn_init_batches)
    min_fan_in = getattr(config, "min_binary_fan_in", 0)
    summary = [_swap(name, m, *_layer_choice(name, m, config, keep, first, last, binary_input), weight_quant,
                     binary_input and fan_in(m) >= min_fan_in, k_scaling) for name, m in layers]
    if binary_input:
        for r in summary:
            if r["weight"] in ("binary", "ternary") and r["act"] == "fp32":
                r["why"] = f"fan-in {fan_in(model.get_submodule(r['layer']))} < min_binary_fan_in {min_fan_in}: real inputs"
        narrow = [r["layer"] for r in summary if r["act"] == "binary" and fan_in(model.get_submodule(r["layer"])) < SMALL_FAN_IN]
        if narrow:
            warnings.warn(f"{method}: binary inputs to {len(narrow)} layer{'s' if len(narrow) > 1 else ''} of fan-in below {SMALL_FAN_IN} ("
                          f"{', '.join(narrow[:3])}{' ...' if len(narrow) > 3 else ''}): their dot products take few "
                          "values; min_binary_fan_in keeps their inputs real", stacklevel=3)
    if not any(r["weight"] in ("binary", "ternary") for r in summary):
        raise EffdnnError(f"{method}: keep_fp / keep_8bit / the depthwise policy leave no layer to binarise")
    dw = [r["layer"] for r in summary if r["weight"] in ("binary", "ternary") and is_depthwise(model.get_submodule(r["layer"]))]
    if dw:
        warnings.warn(f"{method}: depthwise layers binarised (depthwise: binarize): {', '.join(dw)}; expect a large "
                      "accuracy loss (the default keeps them at 8 bits)", stacklevel=3)
    if config.batch_norm:
        insert_output_bn(model, [r["layer"] for r in summary if r["weight"] in ("binary", "ternary")], stats)
    clip_latent(model)
    if any(isinstance(getattr(m, "weight_quant", None), WeightBinarizer) and m.weight_quant.clip is not None
           for m in model.modules()):
        ctx.callbacks.append(ClipLatentWeights())
    if (binary_input or config.batch_norm) and config.bn_init_batches:
        ctx.extra["bn_init_batches"] = init_bn_statistics(model, ctx.calib_loader(config.bn_init_batches),
                                                          config.bn_init_batches)
    ctx.extra["binary_layers"] = summary
    ctx.extra["depthwise_policy"] = {"policy": config.depthwise, "layers": [r["layer"] for r in summary
                                                                            if r.get("why", "").startswith("depthwise")]}
    if any(r["weight"] == "int8" for r in summary):
        ctx.finalizers.append(convert_qat)  # the 8-bit layers' training quantizers -> static int8 weights
    if config.packed:
        ctx.finalizers.append(lambda m: _deploy_packed(m, ctx))
    return model


def _swap(name: str, m: nn.Module, kind: str, why: str | None, weight_quant: Callable[[nn.Module], WeightBinarizer],
          binary_input: bool, k_scaling: bool) -> dict[str, Any]:
    """Turn one layer into what ``_layer_choice`` decided; its report row."""
    row: dict[str, Any] = {"layer": name, "type": type(m).__name__, "weight": "fp32", "act": "fp32"}
    if why is not None:
        row["why"] = why
    if kind == "int8":  # per-channel int8 weights, trained with the STE; the input stays float
        quantize_layer(m, name, DynamicWeightQuantizer(IntFormat(8, granularity=Granularity("per_channel", 0))), None)
        row.update(type=type(m).__name__, weight="int8")
    elif kind == "binary":
        wq = weight_quant(m)
        aq = SignActivation(m.weight.shape[1] * (m.groups if isinstance(m, nn.Conv2d) else 1), isinstance(m, nn.Conv2d)) \
            if binary_input else None
        if aq is not None:
            aq.to(m.weight.device)
        cls = swap_class(m, BINARY_CLASSES)  # a pruned layer stays masked: zero where pruned, not +-alpha
        m._attach(wq, aq, name)  # type: ignore[attr-defined]
        m.k_scaling = k_scaling  # type: ignore[assignment]
        row.update(type=cls.__name__, weight=wq.fmt.name, act="binary" if binary_input else "fp32")  # type: ignore[attr-defined]
    return row


def _deploy_packed(model: nn.Module, ctx: TransformContext) -> nn.Module:
    """Finalizer: the bit-packed model, with the largest |output difference| to the fake-quantised one
    on the example input recorded in the report (``packed_max_abs_diff``)."""

    model.eval()
    packed = pack_model(model)
    with torch.no_grad():
        x = ctx.example_input()
        diff = (model(x) - packed(x)).abs().max().item()
    ctx.extra.update({"packed": True, "packed_max_abs_diff": diff})
    return packed


__all__ = ["BINARY_CLASSES", "BinaryConv2d", "BinaryLayerMixin", "BinaryLinear", "BinaryMethodConfig",
           "ClipLatentWeights", "OutputBatchNorm", "SignActivation", "SignCode", "WeightBinarizer", "binarize", "clip_latent",
           "expand_scale", "glorot_h", "init_bn_statistics", "sign_pm1"]
