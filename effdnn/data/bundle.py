"""What every data source returns: train / test datasets and the shape facts a model needs."""
from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset


@dataclass
class DataBundle:
    name: str
    train: Dataset
    test: Dataset
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]
    text: bool = False  # token examples (data.text.TokenDataset): dicts of tensors, num_classes 0 without labels
