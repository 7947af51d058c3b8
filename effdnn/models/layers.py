"""Small building blocks that keep every operation a module, so quantizers and the cost model see it."""
from __future__ import annotations

import torch
from torch import nn


class Add(nn.Module):
    """Element-wise sum of two tensors (a residual join), a module so it can be observed or quantized."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1
