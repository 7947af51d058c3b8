"""scikit-learn's 8x8 handwritten digits (1,797 images, ships inside scikit-learn): the embedded default."""
from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from .bundle import DataBundle

SPLIT_SEED = 0  # fixed, so every run and every user sees the same split


def load(test_fraction: float = 0.25) -> DataBundle:
    """1x8x8 images scaled to [0, 1] then standardised with the train split's mean and std."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    idx_tr, idx_te = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_fraction, random_state=SPLIT_SEED, stratify=y.numpy()
    )
    xtr, xte = x[idx_tr], x[idx_te]
    mean, std = xtr.mean(), xtr.std()
    return DataBundle(
        "digits",
        TensorDataset((xtr - mean) / std, y[idx_tr]),
        TensorDataset((xte - mean) / std, y[idx_te]),
        in_channels=1,
        num_classes=10,
        input_size=(8, 8),
    )
