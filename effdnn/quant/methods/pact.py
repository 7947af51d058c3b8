"""PACT: Parameterized Clipping Activation (Choi et al. 2018, "PACT: Parameterized Clipping Activation
for Quantized Neural Networks"), eq. 1-3:

    y   = PACT(x) = 0.5 (|x| - |x - a| + a)  = clip(x, 0, a)                          (eq. 1)
    y_q = round(y (2^k - 1) / a) a / (2^k - 1)                                         (eq. 2)
    dy_q/da = dy_q/dy * dy/da = 1 if x >= a else 0      (straight-through dy_q/dy = 1)  (eq. 3)

``a`` is one learnable clip per layer, trained with an L2 penalty lambda_a * a^2 (section 3.1) added to
the loss through a callback. An activation that is signed at calibration (e.g. a residual operand, or
the normalised input image) gets the two-sided clip [-a, a] with 2^(k-1) - 1 levels per side (an
effdnn extension; dy/da = 1 above a, -1 below -a). ``a`` starts at the calibrated max |x|, or at
the clip of the act spec's calibrator (``calibrator: mse`` is a better start at 2-3 bits when
fine-tuning); ``alpha_init`` sets it (the paper trains from scratch with a = 10).

Weights: DoReFa (the paper's choice, ``weight_quantizer: dorefa``) or a uniform symmetric integer
quantizer with per-step max scaling (``uniform``). The first and last layers stay at higher precision
as in the paper: by default 8-bit (``keep_8bit: [first, last]``; ``keep_fp: [first, last]`` keeps them
in float as the paper's experiments do).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ...transform import TransformContext
from ...formats import IntFormat
from ...formats.integer import IntParams
from ...registry import QUANTIZE
from ...hooks import Callback
from ..config import TensorSpec
from ..fake_quant import Quantizer
from ..fused_fq import pact_quantize_fused
from ..observers import Observer
from ..qat import QATConfig, generic_weight, prepare_qat
from ..qat_quantizers import ActStatsMixin, QATQuantizer
from .dorefa import dorefa_or_generic


class PACTQuantize(torch.autograd.Function):
    """PACT eq. 1-3 in one autograd node: y = clip(x, lo, a) with lo = 0 (or -a when signed), then the
    k-bit grid round(y / s) * s, s = a / levels, rounding straight-through. Gradients: dy/dx = 1 inside
    (lo, a), else 0; dy/da = 1 where x >= a (and -1 where x <= -a when signed), else 0. Saves two
    boolean masks instead of x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, signed: bool, levels: int) -> torch.Tensor:  # type: ignore[override]
        lo = -alpha if signed else torch.zeros_like(alpha)
        y = torch.minimum(torch.maximum(x, lo), alpha)
        s = alpha / levels
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            ctx.save_for_backward(x >= alpha, x <= -alpha if signed else x < 0)
            ctx.signed, ctx.alpha_shape = signed, alpha.shape
        return torch.round(y / s) * s

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:  # type: ignore[override]
        above, below = ctx.saved_tensors
        gx = g * ~(above | below)
        ga = (g * above).sum()
        if ctx.signed:
            ga = ga - (g * below).sum()
        return gx, ga.reshape(ctx.alpha_shape), None, None


def pact_quantize(x: torch.Tensor, alpha: torch.Tensor, bits: int, signed: bool = False) -> torch.Tensor:
    """PACT eq. 1-2 with straight-through rounding: clip to [0, a] (or [-a, a]), k-bit uniform grid."""
    levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return PACTQuantize.apply(x, alpha, signed, levels)


class PACTActQuantizer(ActStatsMixin, QATQuantizer):
    def __init__(self, bits: int, auto_sign: bool = True, alpha_init: float | None = None,
                 calibrator: Observer | None = None) -> None:
        super().__init__(IntFormat(bits, signed=True, narrow_range=True), None, role="act")
        self.calibrator = calibrator  # e.g. MSE: a better starting clip than the max at 2-3 bits
        self.bits, self.auto_sign, self.alpha_init, self.signed = bits, auto_sign, alpha_init, True
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self._init_stats()

    def finish_calibration(self) -> None:
        self.signed = not (self.auto_sign and self.nonnegative)
        if not self.signed:
            self.fmt = dataclasses.replace(self.fmt, signed=False, narrow_range=False)
        amax = float(torch.maximum(self.obs_max.abs(), self.obs_min.abs()))
        if self.calibrator is not None and self.calibrator.count:
            amax = float(self.calibrator.compute_params(self.fmt).scale[0]) * self.fmt.qmax
            self.calibrator = None
        with torch.no_grad():
            self.alpha.fill_(self.alpha_init if self.alpha_init is not None else max(amax, 1e-3))
        self.mode = "quantize"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            self._observe(x)
            if self.calibrator is not None:
                self.calibrator.update(x)
            return x
        out = pact_quantize_fused(x, self.alpha, self.bits, self.signed)  # the same, in one compiled pass
        return out if out is not None else pact_quantize(x, self.alpha, self.bits, self.signed)

    def to_static(self, x: torch.Tensor | None = None) -> Quantizer:
        q = Quantizer(self.fmt, None, role="act")
        scale = self.alpha.detach().abs().reshape(1) / self.fmt.qmax
        q.set_params(IntParams(scale, torch.zeros(1)))
        return q

    @property
    def label(self) -> str:
        return f"pact{self.bits}"


class PACTRegulariser(Callback):
    """lambda_a * sum of a^2 over the PACT clips (Choi et al. 2018, section 3.1); reports the final clips."""

    def __init__(self, decay: float) -> None:
        self.decay, self.alphas = decay, {}

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        alphas = [m.alpha for m in model.modules() if isinstance(m, PACTActQuantizer)]
        if not alphas or self.decay == 0:
            return None
        return self.decay * torch.stack([a * a for a in alphas]).sum()

    def on_fit_end(self, model: nn.Module) -> None:
        self.alphas = {n: round(float(m.alpha.detach()), 4) for n, m in model.named_modules() if isinstance(m, PACTActQuantizer)}

    def report(self) -> dict[str, Any]:
        return {"pact_alpha": self.alphas}


class PACTConfig(QATConfig):
    method: Literal["pact"] = "pact"  # type: ignore[assignment]
    keep_8bit: list[str] = Field(default_factory=lambda: ["first", "last"])
    weight_quantizer: Literal["dorefa", "uniform"] = "dorefa"
    rescale: bool = True  # DoReFa weights times max|w| (nets without BN)
    alpha_decay: float = Field(2e-4, ge=0, description="L2 penalty on the clip a (lambda_alpha)")
    alpha_init: float | None = Field(None, gt=0)


@QUANTIZE.register("pact", PACTConfig, "PACT: learned activation clip (L2-regularised) + DoReFa / uniform weights")
def pact(model: nn.Module, config: PACTConfig, ctx: TransformContext) -> nn.Module:
    """PACT activations (Choi et al. 2018) with DoReFa or uniform weights, trained with the STE."""
    def act(spec: TensorSpec, name: str) -> QATQuantizer:
        calib = spec.build_observer("act", name) if spec.calibrator != "max" else None
        return PACTActQuantizer(spec.bits, auto_sign=spec.signed == "auto", alpha_init=config.alpha_init, calibrator=calib)

    weight = dorefa_or_generic(config.rescale) if config.weight_quantizer == "dorefa" else generic_weight
    model = prepare_qat(model, config, ctx, weight_q=weight, act_q=act, tag="pact")
    ctx.callbacks.append(PACTRegulariser(config.alpha_decay))
    return model
