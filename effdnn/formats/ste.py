"""Straight-through estimators, in one place (Bengio et al. 2013; Courbariaux et al. 2015).

``ste(x, q)``: forward returns ``q``, backward passes the gradient to ``x`` unchanged (dq/dx := 1).
``clipped_ste(x, q, lo, hi)``: the same, with the gradient gated to 0 outside [lo, hi].
"""
from __future__ import annotations

import torch


class _StraightThrough(torch.autograd.Function):
    """Returns ``q`` bit-exactly (``x + (q - x).detach()`` can be off by an ulp), gradient 1 to ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return q.detach().clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None

    @staticmethod
    def symbolic(g, x, q):  # ONNX export: the value of q
        return g.op("Identity", q)


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Value of ``q`` (exactly), gradient of the identity with respect to ``x``."""
    if not (x.requires_grad and torch.is_grad_enabled()):
        return q.detach()
    return _StraightThrough.apply(x, q)


def clipped_ste(x: torch.Tensor, q: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float) -> torch.Tensor:
    """Value of ``q``; gradient 1 where lo <= x <= hi, else 0 (the clip gate)."""
    inside = ((x >= lo) & (x <= hi)).to(x.dtype)
    return q.detach() + (x - x.detach()) * inside


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round-half-to-even in the forward pass, identity gradient."""
    return ste(x, torch.round(x))
