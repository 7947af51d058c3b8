"""DoReFa-Net weights (Zhou et al. 2016, "DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks
with Low Bitwidth Gradients", eq. 9): with quantize_k(r) = round((2^k - 1) r) / (2^k - 1),

    w_q = 2 quantize_k( tanh(w) / (2 max|tanh(w)|) + 1/2 ) - 1          (in [-1, 1], 2^k levels)

the tanh limits the influence of large weights; the rounding is straight-through. DoReFa relies on a
following BatchNorm to absorb the scale; for nets without BN (LeNet-5) ``rescale`` multiplies w_q by
max|w| (detached), which keeps the pretrained layer's output range (an effdnn addition, on by default).

Deployed, the weights live on the grid c (2i / (2^k - 1) - 1), i = 0..2^k-1: the ``DoReFaFormat``
number format (k-bit codes + one fp32 scale c per tensor).

Granularity follows the weight spec: eq. 9 takes max|tanh(w)| over the layer (``per_tensor``, the
paper); ``granularity: per_channel`` takes it (and the ``rescale`` max|w|) over each output channel, so
a filter of small weights (a depthwise 3x3 filter, one channel of it) keeps all 2^k levels instead of
rounding to the layer's coarsest grid (one scale c per output channel deployed).

``method: dorefa`` = plain QAT (EMA activation ranges, ``qat``) with DoReFa weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ...transform import TransformContext
from ...errors import EffdnnError
from ...formats import NumberFormat
from ...formats.ste import round_ste
from ...registry import QUANTIZE
from ..config import TensorSpec
from ..fake_quant import Quantizer
from ..qat import QATConfig, generic_weight, prepare_qat
from ..qat_quantizers import QATQuantizer


@dataclass
class DoReFaParams:
    scale: torch.Tensor  # (1,) or (N,) c: the grid spans [-c, c] (per output channel: row c of dim 0)


def _max_abs(x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """max |x| over the tensor, shape (1,), or over each output channel (dim 0), shape (N,)."""
    a = x.abs()
    return a.flatten(1).amax(1) if per_channel and x.dim() > 1 else a.max().reshape(1)


def _rows(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(1,) or (N,) -> broadcastable against x (N, ...)."""
    return v.reshape(-1, *([1] * (x.dim() - 1))) if v.numel() > 1 else v


@dataclass(frozen=True)
class DoReFaFormat(NumberFormat):
    """The DoReFa weight grid: c (2i / (2^k - 1) - 1), codes i in 0..2^k-1 (no zero level); one c per
    tensor or (``per_channel``) per output channel."""

    bits: int = 4  # type: ignore[assignment]
    per_channel: bool = False
    name = "dorefa"

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 16:
            raise EffdnnError(f"dorefa format: bits must be an integer in 1..16, got {self.bits!r}")

    @property
    def n(self) -> int:
        return 2**self.bits - 1

    def compute_params(self, x: torch.Tensor) -> DoReFaParams:
        return DoReFaParams(_max_abs(x.detach(), self.per_channel).float().clamp_min(1e-12))

    def quantize(self, x: torch.Tensor, params: DoReFaParams | None = None) -> torch.Tensor:
        p = params or self.compute_params(x)
        return torch.clamp(torch.round((x.detach() / _rows(p.scale, x) + 1) / 2 * self.n), 0, self.n).to(torch.int32)

    def dequantize(self, codes: torch.Tensor, params: DoReFaParams | None = None) -> torch.Tensor:
        if params is None:
            raise EffdnnError("dorefa format: dequantize needs the params the codes were made with")
        return _rows(params.scale, codes) * (2 * codes.float() / self.n - 1)

    def storage_bits(self, numel: int, params: DoReFaParams | None = None) -> int:
        return int(numel * self.bits + 32 * (params.scale.numel() if params is not None else 1))

    def int8_grid(self, params: DoReFaParams) -> tuple[torch.Tensor, int] | None:
        """c (2i / n - 1) = (c / n) (2i - n): odd int8 codes -n..n at scale c / n (one per tensor or per
        output channel), zero point 0 (k <= 7); the ONNX export writes such weights as QuantizeLinear /
        DequantizeLinear pairs."""
        return (params.scale.detach().float() / self.n, 0) if self.bits <= 7 else None

    @property
    def label(self) -> str:
        return f"dorefa{self.bits}"


def dorefa_weight(w: torch.Tensor, bits: int, rescale: bool = True, per_channel: bool = False) -> torch.Tensor:
    """DoReFa eq. 9 (straight-through rounding); times max|w| (detached) when ``rescale``; the maxima
    per output channel when ``per_channel``."""
    n = 2**bits - 1
    t = torch.tanh(w)
    r = t / (2 * _rows(_max_abs(t, per_channel), t)) + 0.5  # [0, 1]
    wq = 2 * (round_ste(r * n) / n) - 1  # [-1, 1]
    return wq * _rows(_max_abs(w.detach(), per_channel), w) if rescale else wq


class _DoReFaFunction(torch.autograd.Function):
    """``dorefa_weight`` as one autograd node: the same float32 forward ops (bit-identical values) and
    the gradient of the reference's graph written out (straight-through rounding), instead of a dozen
    autograd nodes. With r = t / (2m) + 1/2, t = tanh(w), m = max|t|, out = c (2 round(n r) / n - 1):

        dL/dr = 2 c g     dL/dt = dL/dr / (2m) + [|t| = m] sign(t) dL/dm / #ties
        dL/dm = -sum(dL/dr * t) / (2 m^2)     dL/dw = dL/dt (1 - t^2)

    (the max's gradient shared by ties, as torch's; c = max|w| detached, 1 without rescaling)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, bits: int, rescale: bool) -> torch.Tensor:  # type: ignore[override]
        n = 2**bits - 1
        t = torch.tanh(w)
        m = t.abs().max()
        r = t / (2 * m) + 0.5
        wq = 2 * (torch.round(r * n) / n) - 1
        c = w.detach().abs().max() if rescale else None
        ctx.save_for_backward(t, m, c)
        return wq * c if c is not None else wq

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        t, m, c = ctx.saved_tensors
        gr = (g * c if c is not None else g) * 2
        gm = -(gr * t).sum() / (2 * m * m)
        ties = t.abs() == m
        gt = gr / (2 * m) + torch.where(ties, torch.sign(t) * (gm / ties.sum()), 0.0)
        return gt * (1 - t * t), None, None


def dorefa_weight_fused(w: torch.Tensor, bits: int, rescale: bool = True) -> torch.Tensor:
    """``dorefa_weight`` in one autograd node (same values, same gradient to rounding)."""
    return _DoReFaFunction.apply(w, bits, rescale)


class DoReFaWeightQuantizer(QATQuantizer):
    def __init__(self, bits: int, rescale: bool = True, per_channel: bool = False) -> None:
        super().__init__(DoReFaFormat(bits, per_channel), None, role="weight")
        self.mode, self.rescale = "quantize", rescale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.fmt.per_channel:  # the fused node holds one maximum per tensor
            return dorefa_weight(w, self.fmt.bits, self.rescale, per_channel=True)
        return dorefa_weight_fused(w, self.fmt.bits, self.rescale)

    def to_static(self, x: torch.Tensor | None = None) -> Quantizer:
        q = Quantizer(self.fmt, None, role="weight")
        q.set_params(self.fmt.compute_params(x))  # type: ignore[arg-type]
        return q


def dorefa_or_generic(rescale: bool):
    """Weight factory: DoReFa for ``format: int`` specs, the generic STE quantizer for other formats."""

    def make(spec: TensorSpec, name: str, layer: nn.Module) -> QATQuantizer:
        if spec.format == "int":
            return DoReFaWeightQuantizer(spec.bits, rescale, spec.granularity == "per_channel")
        return generic_weight(spec, name, layer)

    return make


class DoReFaConfig(QATConfig):
    method: Literal["dorefa"] = "dorefa"  # type: ignore[assignment]
    rescale: bool = True


@QUANTIZE.register("dorefa", DoReFaConfig, "DoReFa-Net weights (tanh normalisation) + QAT activations")
def dorefa(model: nn.Module, config: DoReFaConfig, ctx: TransformContext) -> nn.Module:
    """DoReFa weights (Zhou et al. 2016) with STE QAT of the activations."""
    return prepare_qat(model, config, ctx, weight_q=dorefa_or_generic(config.rescale), tag="dorefa")
