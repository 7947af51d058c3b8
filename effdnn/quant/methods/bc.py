"""BinaryConnect (Courbariaux, Bengio & David 2015, "BinaryConnect: Training deep neural networks with
binary weights during propagations").

Weights are binarised in the forward and backward passes, the real-valued weights are kept for the
update and clipped after it (Algorithm 1):

- deterministic, eq. (1): w_b = +H if w >= 0 else -H;
- stochastic, eq. (2)-(3): w_b = +H with probability p = sigma(w / H), else -H, where
  sigma(x) = clip((x + 1) / 2, 0, 1) is the hard sigmoid (so E[w_b] = H * clip(w / H, -1, 1));
- backward: dC/dw := dC/dw_b (straight through); after the step w <- clip(w, -H, H).

H is the layer's Glorot bound sqrt(1.5 / (fan_in + fan_out)) as in the authors' code (``h: glorot``),
or a given number (``h: 1`` is the paper's +-1). At inference the deterministic binarisation is used
(section 2.6 also allows the real weights; deployment needs the binary ones). All layers are binary
(the paper binarises every layer); ``keep_fp`` may keep some in float.

Recipe: ``quantize: {method: bc, mode: deterministic | stochastic, h: glorot}`` + a ``finetune`` block.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ...transform import TransformContext
from ...formats.ste import ste
from ...registry import QUANTIZE
from .binary import BinaryMethodConfig, WeightBinarizer, binarize, glorot_h, sign_pm1


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """BinaryConnect eq. (3): clip((x + 1) / 2, 0, 1)."""
    return ((x + 1) / 2).clamp(0, 1)


class BinaryConnectWeight(WeightBinarizer):
    def __init__(self, h: float, stochastic: bool = False) -> None:
        super().__init__()
        self.h, self.stochastic, self.clip = float(h), stochastic, float(h)

    def quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        if self.stochastic and self.training:
            p = hard_sigmoid(w / self.h)  # P(w_b = +H)
            b = torch.where(torch.rand_like(w) < p, torch.ones_like(w), -torch.ones_like(w))
        else:
            b = sign_pm1(w)
        return ste(w, b * self.h)

    def codes_and_scales(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return sign_pm1(w.detach()), torch.tensor([self.h], dtype=w.dtype, device=w.device), None

    def extra_repr(self) -> str:
        return f"H={self.h:.4g}, {'stochastic' if self.stochastic else 'deterministic'}"


class BCConfig(BinaryMethodConfig):
    method: Literal["bc"] = "bc"
    mode: Literal["deterministic", "stochastic"] = "deterministic"
    h: Literal["glorot"] | float = "glorot"


def bc_h(config: BCConfig | object, m: nn.Module) -> float:
    h = getattr(config, "h")
    return glorot_h(m.weight) if h == "glorot" else float(h)


@QUANTIZE.register("bc", BCConfig, "BinaryConnect: +-H weights (sign or stochastic hard-sigmoid), latent weights clipped")
def bc(model: nn.Module, config: BCConfig, ctx: TransformContext) -> nn.Module:
    """BinaryConnect (Courbariaux et al. 2015)."""
    return binarize(model, config, ctx, "bc", lambda m: BinaryConnectWeight(bc_h(config, m), config.mode == "stochastic"))
