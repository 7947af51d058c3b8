"""Binarized Neural Networks (Courbariaux, Hubara, Soudry, El-Yaniv & Bengio 2016, "Binarized Neural
Networks: Training deep neural networks with weights and activations constrained to +1 or -1").

- weights: w_b = sign(w) * H (eq. 1, H as BinaryConnect's, ``h: 1`` for the paper's +-1), latent weights
  clipped to [-H, H] after each step (Algorithm 1);
- activations: a_b = sign(BN(a)) with the straight-through estimator gated at |a| <= 1 (eq. 4:
  g_r = g_q 1_{|r| <= 1}), BatchNorm before the sign (Algorithm 1: BN, then binarise);
- the first layer's input is the real (8-bit) image and the last layer stays at higher precision
  (section 2.5 and 3): by default the first and last layers are kept in float (``keep_fp``).

The BatchNorm of each binary input is inserted by this method (``SignActivation``); its statistics are
set from ``bn_init_batches`` training batches before fine-tuning. Inner products of two +-1 vectors
deploy as XNOR + popcount (``effdnn.quant.packed``).

Recipe: ``quantize: {method: bnn}`` + a ``finetune`` block.
"""
from __future__ import annotations

from typing import Literal

from torch import nn

from ...transform import TransformContext
from ...registry import QUANTIZE
from .bc import BinaryConnectWeight, bc_h
from .binary import BinaryInputConfig, binarize


class BNNConfig(BinaryInputConfig):
    method: Literal["bnn"] = "bnn"
    h: Literal["glorot"] | float = "glorot"


@QUANTIZE.register("bnn", BNNConfig, "BNN: +-1 weights and activations (BN -> sign, STE gated at |x| <= 1)")
def bnn(model: nn.Module, config: BNNConfig, ctx: TransformContext) -> nn.Module:
    """Binarized Neural Networks (Courbariaux et al. 2016)."""
    return binarize(model, config, ctx, "bnn", lambda m: BinaryConnectWeight(bc_h(config, m)), binary_input=True,
                    default_keep_fp=("first", "last"))
