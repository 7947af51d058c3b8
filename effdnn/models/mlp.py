"""Multi-layer perceptron on flattened inputs."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import EffdnnError


def mlp(in_channels: int, num_classes: int, input_size: tuple[int, int], hidden: Sequence[int] = (256, 128)) -> nn.Sequential:
    if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
        raise EffdnnError(f"model.kwargs.hidden: layer widths must be positive integers, got {list(hidden)}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * input_size[0] * input_size[1]
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
