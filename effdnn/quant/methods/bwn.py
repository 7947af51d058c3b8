"""Binary-Weight-Networks (Rastegari, Ordonez, Redmon & Farhadi 2016, "XNOR-Net: ImageNet classification
using binary convolutional neural networks", section 3.1).

W ~ alpha * B with B = sign(W) (eq. 4: B* = sign(W)) and alpha = ||W||_l1 / n, the mean |W| of each
output channel (eq. 4: alpha* = (1/n) ||W||_l1, one alpha per filter). Backward (eq. 7): the gradient
flows through alpha = mean |W| (autograd, the full chain rule of eq. 7's 1/n term) and through sign with
the straight-through estimator gated at |W| <= 1 (dsign(r)/dr = 1_{|r| <= 1}, section 3.2).
The paper keeps the first and last layers real-valued (``keep_fp: [first, last]`` by default).

Recipe: ``quantize: {method: bwn}`` + a ``finetune`` block.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ...transform import TransformContext
from ...formats.ste import clipped_ste
from ...registry import QUANTIZE
from .binary import BinaryMethodConfig, WeightBinarizer, binarize, expand_scale, sign_pm1


def channel_alpha(w: torch.Tensor) -> torch.Tensor:
    """alpha per output channel: mean |W| over each filter, (N,)."""
    return w.abs().flatten(1).mean(1)


class ScaledSignWeight(WeightBinarizer):
    """alpha * sign(W), alpha = mean |W| per output channel (BWN and the XNOR-Net weights)."""

    def quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        return expand_scale(channel_alpha(w), w) * clipped_ste(w, sign_pm1(w), -1.0, 1.0)

    def codes_and_scales(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        w = w.detach()
        return sign_pm1(w), channel_alpha(w), None


class BWNConfig(BinaryMethodConfig):
    method: Literal["bwn"] = "bwn"


@QUANTIZE.register("bwn", BWNConfig, "Binary-Weight-Networks: W ~ alpha sign(W), alpha = mean |W| per filter")
def bwn(model: nn.Module, config: BWNConfig, ctx: TransformContext) -> nn.Module:
    """Binary-Weight-Networks (Rastegari et al. 2016)."""
    return binarize(model, config, ctx, "bwn", lambda m: ScaledSignWeight(), default_keep_fp=("first", "last"))
