"""LSQ: Learned Step Size Quantization (Esser et al. 2020, ICLR), eq. 1-5 and the paper's listing:

    v_bar = round(clip(v / s, -Q_N, Q_P))        v_hat = v_bar * s                      (eq. 1-2)
    dv_hat/ds = -v/s + round(v/s)  if -Q_N < v/s < Q_P;  -Q_N below;  Q_P above         (eq. 3)
    step gradient scaled by g = 1 / sqrt(N * Q_P)                                      (section 2.2)
    initial s = 2 <|v|> / sqrt(Q_P)  (on the initial weights / the first batch of activations)

N is the number of weights of the layer (per scale block for per-channel steps) or, for activations,
the number of features of the layer (elements per example). Q_N = 2^(b-1), Q_P = 2^(b-1) - 1 for
signed data; Q_N = 0, Q_P = 2^b - 1 for unsigned (post-ReLU) activations, decided at calibration.
The paper keeps the first and last layers at 8 bits (``keep_8bit: [first, last]``, the default).

The forward is the paper's listing (clip, then a straight-through round); its value equals
``IntFormat.fake_quantize`` with scale s, which the converted (static) model uses. (Clipping before
rounding matters for the gradient: rounding first would pass it up to half a step past the clip.)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ...transform import TransformContext
from ...errors import EffdnnError
from ...formats import IntFormat
from ...formats.integer import IntParams
from ...registry import QUANTIZE
from ..config import TensorSpec
from ..fake_quant import Quantizer
from ..fused_fq import lsq_quantize
from ..qat import QATConfig, generic_weight, prepare_qat
from ..qat_quantizers import ActStatsMixin, QATQuantizer


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Value of x, gradient times ``scale`` (the paper's gradscale)."""
    y = x * scale
    return (x - y).detach() + y


class _LSQFunction(torch.autograd.Function):
    """``round(clip(b / s, Q_min, Q_max)) * s`` with the paper's gradients in one node (eq. 1-3):
    d/db = 1 strictly inside the clip range, else 0; d/ds = round(v) - v inside, the clip bound outside
    (v = b / s). One saved tensor and no per-op autograd nodes: the step costs less than the same
    expression built from autograd ops (clamp, round_ste, mul, div), whose gradients are identical
    except exactly on the clip bounds (measure zero), where this follows eq. 3."""

    @staticmethod
    def forward(ctx, b: torch.Tensor, s: torch.Tensor, qmin: float, qmax: float) -> torch.Tensor:  # b (G, N), s (G, 1)
        v = b / s
        ctx.save_for_backward(v)
        ctx.bounds = (qmin, qmax)
        return torch.round(v.clamp(qmin, qmax)) * s

    @staticmethod
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        (v,) = ctx.saved_tensors
        qmin, qmax = ctx.bounds
        inside = (v > qmin) & (v < qmax)
        ds = torch.where(inside, torch.round(v) - v, v.clamp(qmin, qmax))  # eq. 3
        return gy * inside, (gy * ds).sum(1, keepdim=True), None, None


class LSQQuantizer(ActStatsMixin, QATQuantizer):
    """One learnable step per scale block (per tensor, or per channel for weights)."""

    def __init__(self, fmt: IntFormat, role: str, weight: torch.Tensor | None = None, auto_sign: bool = True) -> None:
        if not fmt.symmetric:
            raise EffdnnError("lsq: steps are symmetric (zero point 0); drop symmetric: false")
        super().__init__(fmt, None, role=role)  # type: ignore[arg-type]
        self.auto_sign = auto_sign
        if weight is not None:
            b = fmt.granularity.to_blocks(weight.detach())  # (G, N)
            self.step = nn.Parameter(2 * b.abs().mean(1) / math.sqrt(fmt.qmax))
            self.mode = "quantize"
        else:
            if fmt.granularity.kind != "per_tensor":
                raise EffdnnError("lsq: activation steps are per tensor")
            self.step = nn.Parameter(torch.ones(1))
            self._init_stats()
            self.first_mean_abs: float | None = None

    def _observe(self, x: torch.Tensor) -> None:
        if self.count == 0:
            self.first_mean_abs = float(x.detach().abs().mean())
        super()._observe(x)

    def finish_calibration(self) -> None:
        if self.auto_sign and self.nonnegative:
            self.fmt = dataclasses.replace(self.fmt, signed=False, narrow_range=False)
        with torch.no_grad():
            self.step.fill_(max(2 * (self.first_mean_abs or 0.0) / math.sqrt(self.fmt.qmax), 1e-8))
        self.mode = "quantize"

    @property
    def q_p(self) -> int:
        return self.fmt.qmax

    def grad_factor(self, x: torch.Tensor) -> float:
        """g = 1 / sqrt(N Q_P): N weights per block, or features per example for activations."""
        n = x.numel() // self.step.numel() if self.role == "weight" else x[0].numel()
        return 1.0 / math.sqrt(n * self.q_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            self._observe(x)
            return x
        gfac = self.grad_factor(x)
        if (fused := lsq_quantize(self.fmt, x, self.step, gfac)) is not None:  # type: ignore[arg-type]
            return fused  # the same values and gradients in one compiled pass each way
        return self.reference(x, gfac)

    def reference(self, x: torch.Tensor, gfac: float) -> torch.Tensor:
        """The paper's listing in autograd ops (the path when the fused kernel does not apply)."""
        s = grad_scale(self.step, gfac).abs().clamp_min(1e-8)  # (G,) |s|: no dead zone below 0
        g = self.fmt.granularity
        b = g.to_blocks(x)  # (G, N)
        out = _LSQFunction.apply(b, s.reshape(-1, 1), float(self.fmt.qmin), float(self.fmt.qmax))  # the paper's listing
        return g.from_blocks(out, x.shape)

    def to_static(self, x: torch.Tensor | None = None) -> Quantizer:
        q = Quantizer(self.fmt, None, role=self.role)  # type: ignore[arg-type]
        s = self.step.detach().abs().clamp_min(1e-8).clone()
        q.set_params(IntParams(s, torch.zeros_like(s)))
        return q

    @property
    def label(self) -> str:
        return f"lsq {getattr(self.fmt, 'label', '')}"


class LSQConfig(QATConfig):
    method: Literal["lsq"] = "lsq"  # type: ignore[assignment]
    keep_8bit: list[str] = Field(default_factory=lambda: ["first", "last"])


@QUANTIZE.register("lsq", LSQConfig, "LSQ: learned step size for weights and activations (scaled step gradient)")
def lsq(model: nn.Module, config: LSQConfig, ctx: TransformContext) -> nn.Module:
    """Learned step size quantization (Esser et al. 2020) of weights and activations."""

    def weight(spec: TensorSpec, name: str, layer: nn.Module) -> QATQuantizer:
        if spec.format != "int":
            return generic_weight(spec, name, layer)
        return LSQQuantizer(spec.build_format("weight"), "weight", layer.weight)  # type: ignore[arg-type]

    def act(spec: TensorSpec, name: str) -> QATQuantizer:
        if spec.format != "int":
            raise EffdnnError(f"lsq: {name}: activations support format int only, got {spec.format!r}")
        return LSQQuantizer(spec.build_format("act"), "act", auto_sign=spec.signed == "auto")  # type: ignore[arg-type]

    return prepare_qat(model, config, ctx, weight_q=weight, act_q=act, tag="lsq")
