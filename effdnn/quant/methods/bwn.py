"""Binary-Weight-Networks (Rastegari, Ordonez, Redmon & Farhadi 2016, "XNOR-Net: ImageNet classification
using binary convolutional neural networks", section 3.1).

W ~ alpha * B with B = sign(W) (eq. 4: B* = sign(W)) and alpha = ||W||_l1 / n, the mean |W| of each
output channel (eq. 4: alpha* = (1/n) ||W||_l1, one alpha per filter). Backward (eq. 7): the gradient
flows through alpha = mean |W| (autograd, the full chain rule of eq. 7's 1/n term) and through sign with
the straight-through estimator gated at |W| <= 1 (dsign(r)/dr = 1_{|r| <= 1}, section 3.2).
eq. 4's alpha is per output filter: ``granularity: per_channel`` is the default; ``per_tensor`` takes
one alpha = mean |W| over the whole layer (the paper's eq. 4 applied to the layer's weights as one
vector). The paper keeps the first and last layers real-valued (``keep_fp: [first, last]`` by default);
depthwise convolutions keep 8-bit weights (``depthwise: keep_8bit``, ``binary.py``).

Recipe: ``quantize: {method: bwn, granularity: per_channel}`` + a ``finetune`` block.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ...transform import TransformContext
from ...formats.ste import clipped_ste
from ...registry import QUANTIZE
from .binary import BinaryMethodConfig, WeightBinarizer, binarize, expand_scale, sign_pm1


def channel_alpha(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """eq. 4's alpha = mean |W|: one per output channel, (N,), or one for the layer, (1,)."""
    return w.abs().flatten(1).mean(1) if per_channel else w.abs().mean().reshape(1)


class ScaledSignWeight(WeightBinarizer):
    """alpha * sign(W), alpha = mean |W| per output channel (default) or per layer (BWN and the XNOR-Net
    weights, eq. 4)."""

    def __init__(self, per_channel: bool = True) -> None:
        super().__init__()
        self.per_channel = per_channel

    def quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        return expand_scale(channel_alpha(w, self.per_channel), w) * clipped_ste(w, sign_pm1(w), -1.0, 1.0)

    def codes_and_scales(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        w = w.detach()
        return sign_pm1(w), channel_alpha(w, self.per_channel), None

    def extra_repr(self) -> str:
        return "alpha per channel" if self.per_channel else "alpha per tensor"


class BWNConfig(BinaryMethodConfig):
    method: Literal["bwn"] = "bwn"
    granularity: Literal["per_tensor", "per_channel"] = "per_channel"  # eq. 4: one alpha per filter


@QUANTIZE.register("bwn", BWNConfig, "Binary-Weight-Networks: W ~ alpha sign(W), alpha = mean |W| per filter")
def bwn(model: nn.Module, config: BWNConfig, ctx: TransformContext) -> nn.Module:
    """Binary-Weight-Networks (Rastegari et al. 2016)."""
    return binarize(model, config, ctx, "bwn", lambda m: ScaledSignWeight(config.granularity == "per_channel"),
                    default_keep_fp=("first", "last"))
