"""Trained Ternary Quantization (Zhu, Han, Mao & Dally 2017, "Trained ternary quantization").

Each layer l has two learned scales W_p, W_n > 0 and the threshold delta = t * max |w~| with t = 0.05
(eq. 9; the paper divides the weights by their maximum first, which only rescales delta):
w_t = W_p if w~ > delta, 0 if |w~| <= delta, -W_n if w~ < -delta (eq. 6). Gradients:
- scales (eq. 7): dL/dW_p = sum_{i in I_p} dL/dw_t(i); dL/dW_n = sum_{i in I_n} dL/dw_t(i) with the
  sign that w_t = -W_n there gives (-sum ...), so W_n descends its true gradient;
- latent weights (eq. 8): dL/dw~(i) = W_p dL/dw_t(i) if w~ > delta, 1 * dL/dw_t(i) if |w~| <= delta,
  W_n dL/dw_t(i) if w~ < -delta.
W_p / W_n start at the mean |w| of the positive / negative set (the TWN alpha), in the weights' units.
The paper learns one (W_p, W_n) per layer (``granularity: per_tensor``, the default); ``per_channel``
learns one pair per output channel, with delta = t * max |w~| of that channel (eq. 9 applied to each
filter) and eq. 7's sums taken over each channel's I_p / I_n. The first and last layers stay in full
precision (section 4, ``keep_fp: [first, last]`` by default); depthwise convolutions keep 8-bit weights
(``depthwise: keep_8bit``, see ``binary.py``).

Recipe: ``quantize: {method: ttq, t: 0.05}`` + a ``finetune`` block.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ...transform import TransformContext
from ...registry import QUANTIZE
from .binary import BinaryMethodConfig, WeightBinarizer, binarize, expand_scale


def ttq_threshold(w: torch.Tensor, t: float, per_channel: bool = False) -> torch.Tensor:
    """delta = t * max |w| (eq. 9): (1,), or (N,) per output channel, broadcastable against ``w``."""
    a = w.detach().abs()
    return expand_scale(t * (a.flatten(1).amax(1) if per_channel else a.max().reshape(1)), w)


def _sum_per(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum of x over everything (shape (1,)) or over each output channel (shape (N,))."""
    return x.sum().reshape(shape) if shape.numel() == 1 else x.flatten(1).sum(1).reshape(shape)


class _TTQFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, wp: torch.Tensor, wn: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        pos, neg = w > delta, w < -delta
        p, n = expand_scale(wp, w), expand_scale(wn, w)
        ctx.save_for_backward(pos, neg, wp, wn)
        return torch.where(pos, p, torch.where(neg, -n, torch.zeros_like(w)))

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        pos, neg, wp, wn = ctx.saved_tensors
        grad_wp = _sum_per(g * pos, wp.shape)  # eq. 7 (per channel: each channel's I_p)
        grad_wn = -_sum_per(g * neg, wn.shape)  # eq. 7, w_t = -W_n
        p, n = expand_scale(wp, g), expand_scale(wn, g)
        grad_w = g * torch.where(pos, p, torch.where(neg, n, torch.ones_like(g)))  # eq. 8
        return grad_w, grad_wp, grad_wn, None


def _initial_scales(w: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean |w| over the positive / negative sets of each row of w (G, n); d (G, 1); delta where empty."""
    pos, neg = w > d, w < -d
    wp = (w * pos).sum(1) / pos.sum(1).clamp_min(1)
    wn = (-w * neg).sum(1) / neg.sum(1).clamp_min(1)
    dd = d.reshape(-1)
    return torch.where(pos.any(1), wp, dd), torch.where(neg.any(1), wn, dd)


class TTQWeight(WeightBinarizer):
    levels = 3

    def __init__(self, weight: torch.Tensor, t: float = 0.05, per_channel: bool = False) -> None:
        super().__init__()
        self.t, self.per_channel = t, per_channel
        w = weight.detach()
        rows = w.flatten(1) if per_channel else w.reshape(1, -1)
        wp, wn = _initial_scales(rows, ttq_threshold(w, t, per_channel).reshape(-1, 1))
        self.wp, self.wn = nn.Parameter(wp.clone()), nn.Parameter(wn.clone())

    def quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        return _TTQFunction.apply(w, self.wp, self.wn, ttq_threshold(w, self.t, self.per_channel))

    def codes_and_scales(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        w = w.detach()
        d = ttq_threshold(w, self.t, self.per_channel)
        return (w > d).to(w.dtype) - (w < -d).to(w.dtype), self.wp.detach().clone(), self.wn.detach().clone()

    def extra_repr(self) -> str:
        if self.per_channel:
            return f"t={self.t}, W_p / W_n per channel ({self.wp.numel()})"
        return f"t={self.t}, W_p={float(self.wp):.4g}, W_n={float(self.wn):.4g}"


class TTQConfig(BinaryMethodConfig):
    method: Literal["ttq"] = "ttq"
    t: float = Field(0.05, gt=0, lt=1)
    granularity: Literal["per_tensor", "per_channel"] = "per_tensor"  # the paper: one W_p / W_n per layer


@QUANTIZE.register("ttq", TTQConfig, "Trained Ternary Quantization: learned W_p / W_n, delta = t max |W|")
def ttq(model: nn.Module, config: TTQConfig, ctx: TransformContext) -> nn.Module:
    """Trained Ternary Quantization (Zhu et al. 2017)."""
    return binarize(model, config, ctx, "ttq", lambda m: TTQWeight(m.weight, config.t, config.granularity == "per_channel"),
                    default_keep_fp=("first", "last"))
