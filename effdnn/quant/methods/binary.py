"""The driver of the binary and ternary methods (BinaryConnect, BNN, BWN, XNOR-Net, TWN, TTQ).

``binarize`` is what every method's transform calls: layer choice (``keep_fp``), optional BatchNorms
after each binarised layer with statistics set on a few batches, the report's summary, the training
callbacks, and the bit-packed deployment (``packed: true``, ``effdnn.quant.packed``). The layers
themselves are in ``binary_layers``.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from pydantic import Field
from torch import nn

from ...errors import EffdnnError
from ...registry import StrictModel
from ...transform import TransformContext
from ...utils.layer_patterns import check_patterns, matches
from ...utils.batches import forward as run_batch, iter_inputs, model_device
from ...utils.batchnorm import recalibrate_batchnorm
from ..modules import dense_type, swap_class
from ..packed import pack_model
from .binary_layers import (BINARY_CLASSES, BinaryConv2d, BinaryLayerMixin, BinaryLinear, ClipLatentWeights, SignActivation,
                            SignCode, WeightBinarizer, clip_latent, expand_scale, glorot_h, sign_pm1)


class BinaryMethodConfig(StrictModel):
    """Options shared by every binary / ternary method."""

    keep_fp: list[str] | None = None  # first / last / fnmatch patterns; None: the paper's choice
    bn_init_batches: int = Field(8, ge=0)  # batches that set the inserted BatchNorms' statistics
    batch_norm: bool = Field(False, description="a BatchNorm after every binarised layer (for nets without "
                             "one: BinaryConnect and BNN normalise every layer's output)")
    packed: bool = False  # after fine-tuning, deploy bit-packed (effdnn.quant.packed): the report measures it


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


def binarize(model: nn.Module, config: BinaryMethodConfig, ctx: TransformContext, method: str,
             weight_quant: Callable[[nn.Module], WeightBinarizer], binary_input: bool = False,
             k_scaling: bool = False, default_keep_fp: tuple[str, ...] = ()) -> nn.Module:
    """Swap every Conv2d / Linear (but those kept in float) for its binary class, in a copy of ``model``."""
    model = copy.deepcopy(model)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    if not layers:
        raise EffdnnError(f"{method}: the model has no Conv2d / Linear layer to binarise")
    first, last = layers[0][0], layers[-1][0]
    keep = list(default_keep_fp) if config.keep_fp is None else config.keep_fp
    check_patterns(config.keep_fp or (), [n for n, _ in layers], f"{method}.keep_fp")
    summary: list[dict[str, Any]] = []
    stats = {}
    if config.batch_norm and config.bn_init_batches:  # the float layers' output statistics, before the swap
        stats = output_channel_stats(model, [n for n, _ in layers], ctx.calib_loader(config.bn_init_batches),
                                     config.bn_init_batches)
    for name, m in layers:
        if dense_type(m) not in BINARY_CLASSES or (isinstance(m, nn.Conv2d) and m.groups != 1 and binary_input):
            summary.append({"layer": name, "type": type(m).__name__, "weight": "fp32", "act": "fp32",
                            "why": "layer type not supported by binary methods"})
            continue
        if matches(name, keep, first, last):
            summary.append({"layer": name, "type": type(m).__name__, "weight": "fp32", "act": "fp32", "why": "keep_fp"})
            continue
        wq = weight_quant(m)
        aq = SignActivation(m.weight.shape[1] * (m.groups if isinstance(m, nn.Conv2d) else 1), isinstance(m, nn.Conv2d)) \
            if binary_input else None
        if aq is not None:
            aq.to(m.weight.device)
        kind = swap_class(m, BINARY_CLASSES)  # a pruned layer stays masked: zero where pruned, not +-alpha
        m._attach(wq, aq, name)  # type: ignore[attr-defined]
        m.k_scaling = k_scaling  # type: ignore[assignment]
        summary.append({"layer": name, "type": kind.__name__, "weight": wq.fmt.name,  # type: ignore[attr-defined]
                        "act": "binary" if binary_input else "fp32"})
    if not any(r["weight"] != "fp32" for r in summary):
        raise EffdnnError(f"{method}: keep_fp leaves no layer to binarise")
    if config.batch_norm:
        insert_output_bn(model, [r["layer"] for r in summary if r["weight"] != "fp32"], stats)
    clip_latent(model)
    if any(isinstance(getattr(m, "weight_quant", None), WeightBinarizer) and m.weight_quant.clip is not None
           for m in model.modules()):
        ctx.callbacks.append(ClipLatentWeights())
    if (binary_input or config.batch_norm) and config.bn_init_batches:
        ctx.extra["bn_init_batches"] = init_bn_statistics(model, ctx.calib_loader(config.bn_init_batches),
                                                          config.bn_init_batches)
    ctx.extra["binary_layers"] = summary
    if config.packed:
        ctx.finalizers.append(lambda m: _deploy_packed(m, ctx))
    return model


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
