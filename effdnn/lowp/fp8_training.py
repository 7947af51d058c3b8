"""8-bit floating-point training (Wang, Choi et al. 2018) and its hybrid variant HFP8 (Sun et al. 2019).

Wang et al. 2018, "Training Deep Neural Networks with 8-bit Floating Point Numbers" (NeurIPS):
* weights, activations and errors (output gradients) are FP8 (1,5,2) operands of all three GEMMs;
* GEMMs accumulate in FP16 (1,6,9) with chunk-based accumulation, CL = 64 (section 3, lowp/accumulate.py);
* weight updates are FP16 (1,6,9) with stochastic rounding (section 4): the master weights are FP16,
  and ``w <- SR(w - lr * g)`` keeps small updates in expectation where round-to-nearest would swamp them;
* the first and last layers stay in FP16.
Sun et al. 2019, "Hybrid 8-bit Floating Point (HFP8) Training and Inference for Deep Neural Networks"
(NeurIPS): forward operands (weights, activations) in (1,4,3) for precision, backward errors in
(1,5,2) for range. Here (1,4,3) is torch's float8_e4m3fn (bias 7, saturating at 448); the paper's
exponent-bias choice is not reproduced.

Emulation notes: products of two FP8 numbers are exact (6 significant bits), so the accumulator adds
exact products (an FMA), ``prod_fmt`` is left unset. The edge layers run FP16 (1,6,9) operands with a
float32 GEMM (the accumulation of their im2col GEMM over 100k positions is the costliest to emulate).
The optimizer (Adam or SGD) keeps float32 state; the weights it produces are rounded to FP16 after
every step (:class:`RoundWeightsCallback`).

Native path (``backend: native``, on a CUDA GPU with fp8 tensor cores): lowp/fp8_native.py runs the
body layers' three GEMMs as real fp8 matrix products (torch._scaled_mm).
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..formats.float import FP8_E4M3, FP8_152, FP16_169, FloatFormat
from ..hooks import Callback
from .gemm import GemmPolicy, PolicyFn

Variant = Literal["fp8", "hfp8"]


def fp8_policies(variant: Variant, accumulate: FloatFormat | None, chunk: int | None,
                 edge_fp16: bool = True) -> PolicyFn:
    """Per-layer policy: 8-bit operands, ``accumulate`` (None: float32) with chunk ``chunk``; FP16 edges."""
    fwd = FP8_152 if variant == "fp8" else FP8_E4M3
    acc_label = accumulate.name if accumulate is not None else "fp32"
    body = GemmPolicy(weight=fwd, act=fwd, grad=FP8_152, out=FP16_169, acc=accumulate, chunk=chunk,
                      label=f"{variant} {fwd.name}/{FP8_152.name}, acc {acc_label}" + (f" CL={chunk}" if chunk else " sequential"))
    edge = GemmPolicy(weight=FP16_169, act=FP16_169, grad=FP16_169, out=FP16_169, label="fp16 (1,6,9) edge layer")

    def policy_for(name: str, module: nn.Module, index: int, count: int) -> GemmPolicy:
        return edge if edge_fp16 and index in (0, count - 1) else body

    return policy_for


class RoundWeightsCallback(Callback):
    """Master weights held in ``fmt``: every parameter rounded after each optimizer step (and at start),
    stochastically (Wang et al. 2018, section 4) or to nearest."""

    def __init__(self, fmt: FloatFormat = FP16_169, rounding: Literal["nearest", "stochastic"] = "stochastic") -> None:
        self.fmt, self.rounding = fmt, rounding
        self._unchanged: torch.Tensor | float = 0.0  # summed on the device: no sync per step
        self.steps = 0
        self._prev: list[torch.Tensor] = []

    @property
    def unchanged_sum(self) -> float:
        return float(self._unchanged)

    @torch.no_grad()
    def on_fit_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for p in model.parameters():
            p.copy_(self.fmt.round(p, rounding="nearest"))
        self._prev = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not self._prev:  # after a resume: compare against the reloaded weights
            self._prev = [p.detach().clone() for p in model.parameters()]
        same: list[torch.Tensor] = []
        total = 0
        for p, prev in zip(model.parameters(), self._prev):
            q = self.fmt.round(p, rounding=self.rounding)
            same.append((q == prev).sum())
            total += q.numel()
            p.copy_(q)
            prev.copy_(q)
        # share of weights this update left unchanged (swamped)
        self._unchanged = self._unchanged + torch.stack(same).sum() / max(total, 1)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"unchanged_sum": self.unchanged_sum, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # resumed: the weights were reloaded after on_fit_start
        self._unchanged, self.steps = float(state["unchanged_sum"]), state["steps"]
        self._prev = []

    def report(self) -> dict[str, Any]:
        return {"weight_format": self.fmt.name, "weight_update_rounding": self.rounding,
                "weight_unchanged_frac": self.unchanged_sum / self.steps if self.steps else None}
