"""VGG-Small (Zhang et al. 2018, LQ-Nets; the CIFAR VGG of the binary-network literature):
(2 x conv 128) - pool - (2 x conv 256) - pool - (2 x conv 512) - pool - fc, every conv 3x3 + BN + ReLU.
``width`` scales the channel counts (0.25 gives 32-64-128 for CPU work); pools stop at 1x1."""
from __future__ import annotations

from torch import nn


def vgg_small(in_channels: int, num_classes: int, input_size: tuple[int, int], width: float = 1.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin, h, w = in_channels, *input_size
    for base in (128, 256, 512):
        cout = max(1, int(round(base * width)))
        for _ in range(2):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        if min(h, w) >= 2:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(cin * h * w, num_classes)]
    return nn.Sequential(*layers)
