"""Shared pieces of the binary and ternary methods (BinaryConnect, BNN, BWN, XNOR-Net, TWN, TTQ).

- ``sign_pm1``: sign with sign(0) = +1, so every code is +-1 (Courbariaux et al. 2016, BNN eq. 1).
- ``WeightBinarizer``: a weight ``Quantizer`` whose forward gives the binary / ternary weight (with the
  method's gradient) and whose ``codes_and_scales`` gives the deployed codes in {-1, +1} (or {-1, 0, +1})
  and the scales: w_q = pos_scale * [c = +1] - neg_scale * [c = -1] (neg_scale None: = pos_scale).
- ``SignActivation``: BatchNorm -> sign, the straight-through gradient gated at |x| <= 1 (BNN eq. 4,
  the XNOR-Net "BinActiv"); the BatchNorm sits before the sign as both papers place it.
- ``BinaryConv2d`` / ``BinaryLinear``: y = op(input', w_q) (* K, the XNOR-Net scaling map) + bias, and
  their deployed precision from the real packed sizes (``bitpack.packed_bytes`` + scales + bias + BN).
- ``binarize``: the driver every method's transform calls (layer choice, keep_fp, summary, callbacks).
"""
from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ...context import ExperimentContext
from ...cost.precision import LayerPrecision
from ...errors import EffdnnError
from ...formats.ste import clipped_ste
from ...registry import StrictModel
from ...hooks import Callback
from ...utils.batches import forward as run_batch, iter_inputs, model_device
from ...utils.batchnorm import recalibrate_batchnorm
from ..bitpack import packed_bytes
from ..fake_quant import Quantizer
from ..modules import QuantLayerMixin, dense_type, swap_class


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0, else -1 (no zero code)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def glorot_h(weight: torch.Tensor) -> float:
    """BinaryConnect's binary weight magnitude H = sqrt(1.5 / (fan_in + fan_out)) (the Glorot bound the
    authors' code uses: binary weights are +-H, latent weights clipped to [-H, H])."""
    rf = weight[0, 0].numel() if weight.dim() > 2 else 1
    return math.sqrt(1.5 / (weight.shape[1] * rf + weight.shape[0] * rf))


@dataclass(frozen=True)
class SignCode:
    """The deployed code the cost model reads: binary (1 bit, +-1) or ternary (2 bits, -1 / 0 / +1)."""

    levels: int = 2

    @property
    def name(self) -> str:
        return "binary" if self.levels == 2 else "ternary"

    @property
    def bits(self) -> int:
        return 1 if self.levels == 2 else 2

    compute_kind = "int"

    @property
    def compute_bits(self) -> int:
        return self.bits

    @property
    def label(self) -> str:
        return self.name

    def storage_bits(self, numel: int, params: Any = None) -> int:
        return numel * self.bits


class WeightBinarizer(Quantizer):
    """Base of the binary / ternary weight quantizers. ``clip``: latent weights are clamped to
    [-clip, clip] after every optimizer step (BinaryConnect / BNN), None: not clipped."""

    levels = 2
    clip: float | None = None

    def __init__(self) -> None:
        super().__init__(SignCode(self.levels), None, role="weight")  # type: ignore[arg-type]
        self.mode = "quantize"

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w if self.mode == "off" else self.quantize_weight(w)

    def quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def codes_and_scales(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(codes in {-1, (0,) +1} shaped like w, pos_scale (1,) or (N,), neg_scale or None) of the
        inference-time weight: pos_scale * [c > 0] - neg_scale * [c < 0] equals forward(w) in eval mode."""
        raise NotImplementedError

    def storage_bits(self, numel: int) -> int:  # codes only; layers add the packed padding and scales
        return numel * self.fmt.bits  # type: ignore[attr-defined]


def expand_scale(scale: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(1,) or (N,) -> broadcastable against w (N, ...)."""
    return scale.reshape(-1, *([1] * (w.dim() - 1)))


class SignActivation(Quantizer):
    """BatchNorm -> sign(x) in {-1, +1}; backward: gradient 1 where |x| <= 1, else 0 (BNN eq. 4)."""

    def __init__(self, channels: int, conv: bool) -> None:
        super().__init__(SignCode(2), None, role="act")  # type: ignore[arg-type]
        self.mode = "quantize"
        self.bn = nn.BatchNorm2d(channels) if conv else nn.BatchNorm1d(channels)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)

    @staticmethod
    def binarize(a: torch.Tensor) -> torch.Tensor:
        return clipped_ste(a, sign_pm1(a), -1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mode == "off" else self.binarize(self.normalize(x))


class BinaryLayerMixin(QuantLayerMixin):
    """y = op(x', w_q) [* K] + bias; x' = sign(BN(x)) when the input is binarised, else x."""

    k_scaling: bool = False

    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def k_map(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _bias_view(self) -> torch.Tensor | None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._q_weight()
        if self.input_quant is None:
            y = self._op(x, w)
        else:
            a = self.input_quant.normalize(x)  # type: ignore[attr-defined]
            y = self._op(self.input_quant.binarize(a), w)  # type: ignore[attr-defined]
            if self.k_scaling:
                y = y * self.k_map(a)
        b = self._bias_view()
        return y if b is None else y + b

    def effdnn_precision(self) -> LayerPrecision:
        wq: WeightBinarizer = self.weight_quant  # type: ignore[assignment]
        w = self.weight.detach()  # type: ignore[attr-defined]
        _, pos, neg = wq.codes_and_scales(w)
        bits = 8 * packed_bytes(w.shape[0], w[0].numel(), wq.levels - 1) + 32 * (pos.numel() + (neg.numel() if neg is not None else 0))
        b = getattr(self, "bias", None)
        bits += 32 * b.numel() if b is not None else 0
        binary_in = self.input_quant is not None
        if binary_in:  # BN running mean / var, weight, bias
            bits += 32 * sum(t.numel() for n, t in self.input_quant.bn.state_dict().items() if n != "num_batches_tracked")  # type: ignore[union-attr]
        wb = wq.fmt.bits  # type: ignore[attr-defined]
        return LayerPrecision(weight_bits=wb, act_bits=1 if binary_in else 32, weight_kind="int",
                              act_kind="int" if binary_in else "float", storage_bits=int(bits),
                              label=f"w {wq.fmt.name} / a {'binary' if binary_in else 'fp32'}")  # type: ignore[attr-defined]


class BinaryConv2d(BinaryLayerMixin, nn.Conv2d):
    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, N, Ho, Wo)
        return self._conv_forward(x, w, None)

    def k_map(self, a: torch.Tensor) -> torch.Tensor:
        """XNOR-Net K = A * k: A = mean over channels of |I| (B, 1, H, W), k = 1 / (kh kw) box filter."""
        A = a.abs().mean(1, keepdim=True)  # (B, 1, H, W)
        box = torch.full((1, 1, *self.kernel_size), 1.0 / (self.kernel_size[0] * self.kernel_size[1]), dtype=a.dtype,
                         device=a.device)
        return F.conv2d(A, box, None, self.stride, self.padding, self.dilation)  # (B, 1, Ho, Wo)

    def _bias_view(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.view(1, -1, 1, 1)


class BinaryLinear(BinaryLayerMixin, nn.Linear):
    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # (B, K) -> (B, N)
        return F.linear(x, w)

    def k_map(self, a: torch.Tensor) -> torch.Tensor:
        return a.abs().mean(-1, keepdim=True)  # (B, 1): beta = mean |I| per example

    def _bias_view(self) -> torch.Tensor | None:
        return self.bias


BINARY_CLASSES: dict[type, type] = {nn.Conv2d: BinaryConv2d, nn.Linear: BinaryLinear}


class ClipLatentWeights(Callback):
    """BinaryConnect / BNN: after every update, clip each binarised layer's real-valued weights to
    [-clip, clip] (Courbariaux et al. 2015, Algorithm 1: w_t = clip(w_{t-1} - eta dC/dw_b))."""

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        clip_latent(model)


@torch.no_grad()
def clip_latent(model: nn.Module) -> None:
    for m in model.modules():
        wq = getattr(m, "weight_quant", None)
        if isinstance(wq, WeightBinarizer) and wq.clip is not None:
            m.weight.clamp_(-wq.clip, wq.clip)  # type: ignore[union-attr]


class BinaryMethodConfig(StrictModel):
    """Options shared by every binary / ternary method."""

    keep_fp: list[str] | None = None  # first / last / fnmatch patterns; None: the paper's choice
    bn_init_batches: int = Field(8, ge=0)  # batches that set the inserted BatchNorms' statistics
    batch_norm: bool = Field(False, description="a BatchNorm after every binarised layer (for nets without "
                             "one: BinaryConnect and BNN normalise every layer's output)")
    packed: bool = False  # after fine-tuning, deploy bit-packed (effdnn.quant.packed): the report measures it


def _matches(name: str, patterns: list[str], first: str, last: str) -> bool:
    return any((p == "first" and name == first) or (p == "last" and name == last) or fnmatch.fnmatchcase(name, p)
               for p in patterns)


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
        parent, _, attr = name.rpartition(".")
        setattr(mods[parent] if parent else model, attr, wrapped)


def init_bn_statistics(model: nn.Module, batches: Any, limit: int) -> int:
    """Set the inserted BatchNorms' running mean / variance to their cumulative averages over a few
    batches (the rest of the model in eval mode), so a binarised model is usable before fine-tuning."""
    bns = [m.bn for m in model.modules() if isinstance(m, SignActivation)]
    bns += [m[1] for m in model.modules() if isinstance(m, OutputBatchNorm)]
    return recalibrate_batchnorm(model, batches, limit, bns)


def binarize(model: nn.Module, config: BinaryMethodConfig, ctx: ExperimentContext, method: str,
             weight_quant: Callable[[nn.Module], WeightBinarizer], binary_input: bool = False,
             k_scaling: bool = False, default_keep_fp: tuple[str, ...] = ()) -> nn.Module:
    """Swap every Conv2d / Linear (but those kept in float) for its binary class, in a copy of ``model``."""
    model = copy.deepcopy(model)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    if not layers:
        raise EffdnnError(f"{method}: the model has no Conv2d / Linear layer to binarise")
    first, last = layers[0][0], layers[-1][0]
    keep = list(default_keep_fp) if config.keep_fp is None else config.keep_fp
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
        if _matches(name, keep, first, last):
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


def _deploy_packed(model: nn.Module, ctx: ExperimentContext) -> nn.Module:
    """Finalizer: the bit-packed model, with the largest |output difference| to the fake-quantised one
    on the example input recorded in the report (``packed_max_abs_diff``)."""
    from ..packed import pack_model  # packed.py builds on this module

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
