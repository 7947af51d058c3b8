"""Binary and ternary layers shared by BinaryConnect, BNN, BWN, XNOR-Net, TWN and TTQ.

- ``sign_pm1``: sign with sign(0) = +1, so every code is +-1 (Courbariaux et al. 2016, BNN eq. 1).
- ``WeightBinarizer``: a weight ``Quantizer`` whose forward gives the binary / ternary weight (with the
  method's gradient) and whose ``codes_and_scales`` gives the deployed codes in {-1, +1} (or {-1, 0, +1})
  and the scales: w_q = pos_scale * [c = +1] - neg_scale * [c = -1] (neg_scale None: = pos_scale).
- ``SignActivation``: BatchNorm -> sign, the straight-through gradient gated at |x| <= 1 (BNN eq. 4,
  the XNOR-Net "BinActiv"); the BatchNorm sits before the sign as both papers place it.
- ``BinaryConv2d`` / ``BinaryLinear``: y = op(input', w_q) (* K, the XNOR-Net scaling map) + bias, and
  their deployed precision from the real packed sizes (``bitpack.packed_bytes`` + scales + bias + BN).
- ``ClipLatentWeights``: BinaryConnect / BNN's clipping of the real-valued weights after each step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...cost.precision import LayerPrecision
from ...formats.ste import clipped_ste
from ...hooks import Callback
from ..bitpack import packed_bytes
from ..fake_quant import Quantizer
from ..modules import QuantLayerMixin


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
