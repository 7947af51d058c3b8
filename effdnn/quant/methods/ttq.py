"""Trained Ternary Quantization (Zhu, Han, Mao & Dally 2017, "Trained ternary quantization").

Each layer l has two learned scales W_p, W_n > 0 and the threshold delta = t * max |w~| with t = 0.05
(eq. 9; the paper divides the weights by their maximum first, which only rescales delta):
w_t = W_p if w~ > delta, 0 if |w~| <= delta, -W_n if w~ < -delta (eq. 6). Gradients:
- scales (eq. 7): dL/dW_p = sum_{i in I_p} dL/dw_t(i); dL/dW_n = sum_{i in I_n} dL/dw_t(i) with the
  sign that w_t = -W_n there gives (-sum ...), so W_n descends its true gradient;
- latent weights (eq. 8): dL/dw~(i) = W_p dL/dw_t(i) if w~ > delta, 1 * dL/dw_t(i) if |w~| <= delta,
  W_n dL/dw_t(i) if w~ < -delta.
W_p / W_n start at the mean |w| of the positive / negative set (the TWN alpha), in the weights' units.
The first and last layers stay in full precision (section 4, ``keep_fp: [first, last]`` by default).

Recipe: ``quantize: {method: ttq, t: 0.05}`` + a ``finetune`` block.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ...transform import TransformContext
from ...registry import QUANTIZE
from .binary import BinaryMethodConfig, WeightBinarizer, binarize


def ttq_threshold(w: torch.Tensor, t: float) -> torch.Tensor:
    """delta = t * max |w| (eq. 9)."""
    return t * w.detach().abs().max()


class _TTQFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, wp: torch.Tensor, wn: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        pos, neg = w > delta, w < -delta
        ctx.save_for_backward(pos, neg, wp, wn)
        return torch.where(pos, wp, torch.where(neg, -wn, torch.zeros_like(w)))

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        pos, neg, wp, wn = ctx.saved_tensors
        grad_wp = (g * pos).sum().reshape(wp.shape)  # eq. 7
        grad_wn = -(g * neg).sum().reshape(wn.shape)  # eq. 7, w_t = -W_n
        grad_w = g * torch.where(pos, wp, torch.where(neg, wn, torch.ones_like(g)))  # eq. 8
        return grad_w, grad_wp, grad_wn, None


class TTQWeight(WeightBinarizer):
    levels = 3

    def __init__(self, weight: torch.Tensor, t: float = 0.05) -> None:
        super().__init__()
        self.t = t
        w = weight.detach()
        d = ttq_threshold(w, t)
        pos, neg = w[w > d], -w[w < -d]
        self.wp = nn.Parameter((pos.mean() if pos.numel() else d).reshape(1).clone())
        self.wn = nn.Parameter((neg.mean() if neg.numel() else d).reshape(1).clone())

    def quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        return _TTQFunction.apply(w, self.wp, self.wn, ttq_threshold(w, self.t))

    def codes_and_scales(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        w = w.detach()
        d = ttq_threshold(w, self.t)
        return (w > d).to(w.dtype) - (w < -d).to(w.dtype), self.wp.detach().clone(), self.wn.detach().clone()

    def extra_repr(self) -> str:
        return f"t={self.t}, W_p={float(self.wp):.4g}, W_n={float(self.wn):.4g}"


class TTQConfig(BinaryMethodConfig):
    method: Literal["ttq"] = "ttq"
    t: float = Field(0.05, gt=0, lt=1)


@QUANTIZE.register("ttq", TTQConfig, "Trained Ternary Quantization: learned W_p / W_n, delta = t max |W|")
def ttq(model: nn.Module, config: TTQConfig, ctx: TransformContext) -> nn.Module:
    """Trained Ternary Quantization (Zhu et al. 2017)."""
    return binarize(model, config, ctx, "ttq", lambda m: TTQWeight(m.weight, config.t), default_keep_fp=("first", "last"))
