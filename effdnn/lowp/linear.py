"""The emulated Linear layer: ``Y = X W^T`` and its two backward GEMMs with rounded operands."""
from __future__ import annotations

import torch
from torch import nn

from .policy import GemmPolicy, LowpMixin, LowpStats, exact_sum, fresh, gemm, round_errors, round_to


class _LowpLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, policy: GemmPolicy, stats: LowpStats | None):  # x (M, K), weight (N, K)
        xq, wq = round_to(x, policy.act), round_to(weight, policy.weight)
        y = gemm(xq, wq.t(), policy)  # (M, N)
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(xq, wq)
        ctx.policy, ctx.stats, ctx.has_bias = policy, stats, bias is not None
        return fresh(round_to(y, policy.out))

    @staticmethod
    def backward(ctx, gy):  # gy (M, N)
        xq, wq = ctx.saved_tensors
        p: GemmPolicy = ctx.policy
        g = round_errors(gy, p.grad, ctx.stats)
        gx = round_to(gemm(g, wq, p), p.out) if ctx.needs_input_grad[0] else None  # (M, K)
        gw = round_to(gemm(g.t().contiguous(), xq, p), p.out) if ctx.needs_input_grad[1] else None  # (N, K)
        gb = round_to(exact_sum(g, 0), p.out) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None


class LowpLinear(LowpMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        return emulated_linear(x, self.weight, self.bias, self)


def emulated_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, owner: LowpMixin) -> torch.Tensor:
    """``F.linear`` emulated with ``owner``'s policy and counters: (..., K) -> (..., N)."""
    owner.lowp_calls += 1
    lead = x.shape[:-1]
    y = _LowpLinearFn.apply(x.reshape(-1, x.shape[-1]), weight, bias, owner.lowp_policy, owner.lowp_stats)
    return y.reshape(*lead, y.shape[-1])
