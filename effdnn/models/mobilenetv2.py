"""MobileNetV2 (Sandler et al. 2018) for small images: inverted residual blocks (1x1 expansion, 3x3
depthwise convolution, linear 1x1 projection; a residual add where stride is 1 and the widths match),
ReLU6, global average pooling, dropout and one linear classifier.

The ImageNet network (Table 2) downsamples 32x; for 28x28 / 32x32 inputs the stem and the first
two downsampling stages keep stride 1 (the usual CIFAR adaptation), leaving 4x4 (28x28: 7x7 -> 4x4)
feature maps. ``width`` multiplies every channel count (rounded to a multiple of 8, as in the paper)."""
from __future__ import annotations

import torch
from torch import nn

# expansion t, output channels c, repeats n, stride s (Table 2; strides of the first stages set to 1)
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _divisible(v: float, d: int = 8) -> int:
    """Round to the nearest multiple of ``d``, never below 90% of ``v`` (torchvision's _make_divisible)."""
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        cin = _divisible(32 * width)
        layers: list[nn.Module] = [_conv_bn(in_channels, cin, 3, 1)]
        for t, c, n, s in _SETTINGS:
            cout = _divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = _divisible(1280 * max(1.0, width))
        layers.append(_conv_bn(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.classifier(self.pool(self.features(x)))


def mobilenetv2(in_channels: int, num_classes: int, input_size: tuple[int, int], width: float = 1.0,
                dropout: float = 0.2) -> MobileNetV2:
    return MobileNetV2(in_channels, num_classes, width, dropout)
