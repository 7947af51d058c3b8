"""XNOR-Networks (Rastegari, Ordonez, Redmon & Farhadi 2016, section 3.2).

Binary weights W ~ alpha B (as BWN) and binary inputs I ~ sign(I) scaled by K:
I * W ~ (sign(I) (*) sign(W)) . K alpha (eq. 11), where (*) is a convolution of +-1 tensors (XNOR +
popcount) and K = A * k: A = sum_c |I_c| / c, the mean absolute input over channels, and k a
(1 / (w h)) box filter over the kernel window (so K holds beta for every output position). For a fully
connected layer K is beta = mean |I| per example. The block is BN -> BinActiv -> BinConv -> pool
(Figure 3): the BatchNorm and sign sit in the layer's input binariser (``SignActivation``), the model's
pooling follows the convolution. Gradients: sign with the STE gated at |x| <= 1; K and alpha by autograd.
The weights' alpha is per output filter (eq. 4, ``granularity: per_channel``, the default;
``per_tensor``: one alpha per layer). The first and last layers stay real-valued (section 4,
``keep_fp: [first, last]`` by default); depthwise convolutions keep 8-bit weights and float inputs
(``depthwise: keep_8bit``, see ``binary.py``).

Recipe: ``quantize: {method: xnor}`` + a ``finetune`` block.
"""
from __future__ import annotations

from typing import Literal

from torch import nn

from ...transform import TransformContext
from ...registry import QUANTIZE
from .binary import BinaryInputConfig, binarize
from .bwn import ScaledSignWeight


class XNORConfig(BinaryInputConfig):
    method: Literal["xnor"] = "xnor"
    granularity: Literal["per_tensor", "per_channel"] = "per_channel"  # eq. 4: one alpha per filter


@QUANTIZE.register("xnor", XNORConfig, "XNOR-Net: alpha sign(W) weights, sign(BN(I)) inputs with the K scaling map")
def xnor(model: nn.Module, config: XNORConfig, ctx: TransformContext) -> nn.Module:
    """XNOR-Net (Rastegari et al. 2016)."""
    return binarize(model, config, ctx, "xnor", lambda m: ScaledSignWeight(config.granularity == "per_channel"),
                    binary_input=True, k_scaling=True, default_keep_fp=("first", "last"))
