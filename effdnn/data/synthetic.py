"""A small learnable image data set for tests: class prototypes plus Gaussian noise, fixed by a seed."""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from .bundle import DataBundle


def load(
    n_train: int = 512,
    n_test: int = 256,
    num_classes: int = 4,
    channels: int = 1,
    size: int = 8,
    noise: float = 0.5,
    seed: int = 0,
) -> DataBundle:
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(num_classes, channels, size, size, generator=g)

    def make(n: int) -> TensorDataset:
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = protos[y] + noise * torch.randn(n, channels, size, size, generator=g)
        return TensorDataset(x, y)

    return DataBundle("synthetic", make(n_train), make(n_test), channels, num_classes, (size, size))
