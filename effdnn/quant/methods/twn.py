"""Ternary Weight Networks (Li, Zhang & Liu 2016, "Ternary weight networks").

W ~ alpha * W_t, W_t in {-1, 0, +1} (eq. 1-3): W_t = +1 if W > delta, -1 if W < -delta, 0 otherwise,
with the approximate threshold delta* = 0.7 * E(|W|) = 0.7 / n * sum |W_i| (eq. 10) and
alpha* = mean of |W_i| over I_delta = {i : |W_i| > delta} (eq. 8). One (delta, alpha) per layer as in
the paper (``granularity: per_channel`` for one per output channel). Backward: the gradient with
respect to the ternary weight is applied to the real-valued weight (straight through, section 2.3).
All layers are ternary by default (``keep_fp`` to keep some in float).

Recipe: ``quantize: {method: twn}`` + a ``finetune`` block.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ...transform import TransformContext
from ...formats.ste import ste
from ...registry import QUANTIZE
from .binary import BinaryMethodConfig, WeightBinarizer, binarize, expand_scale


def twn_threshold(w: torch.Tensor, per_channel: bool = False, factor: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """(delta, alpha), each (1,) or (N,): delta = factor * mean |W|, alpha = mean |W| over |W| > delta."""
    a = w.detach().abs().flatten(1) if per_channel else w.detach().abs().reshape(1, -1)  # (G, n)
    delta = factor * a.mean(1)  # (G,)
    keep = a > delta[:, None]
    alpha = (a * keep).sum(1) / keep.sum(1).clamp_min(1)
    return delta, alpha


def ternary_codes(w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """+1 where w > delta, -1 where w < -delta, else 0 (delta broadcast per output channel)."""
    d = expand_scale(delta, w)
    return (w > d).to(w.dtype) - (w < -d).to(w.dtype)


class TernaryWeight(WeightBinarizer):
    levels = 3

    def __init__(self, per_channel: bool = False, factor: float = 0.7) -> None:
        super().__init__()
        self.per_channel, self.factor = per_channel, factor

    def quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        delta, alpha = twn_threshold(w, self.per_channel, self.factor)
        return ste(w, expand_scale(alpha, w) * ternary_codes(w.detach(), delta))

    def codes_and_scales(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        delta, alpha = twn_threshold(w, self.per_channel, self.factor)
        return ternary_codes(w.detach(), delta), alpha, None


class TWNConfig(BinaryMethodConfig):
    method: Literal["twn"] = "twn"
    granularity: Literal["per_tensor", "per_channel"] = "per_tensor"
    delta_factor: float = Field(0.7, gt=0, lt=3)


@QUANTIZE.register("twn", TWNConfig, "Ternary Weight Networks: delta = 0.7 mean |W|, alpha = mean |W| over |W| > delta")
def twn(model: nn.Module, config: TWNConfig, ctx: TransformContext) -> nn.Module:
    """Ternary Weight Networks (Li et al. 2016)."""
    return binarize(model, config, ctx, "twn",
                    lambda m: TernaryWeight(config.granularity == "per_channel", config.delta_factor))
