"""LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, sized for any input from 8x8 up.

On 28x28 (Fashion-MNIST) the first convolution pads by 2, giving the classic 32x32 geometry:
conv 6@5x5 -> pool -> conv 16@5x5 -> pool -> fc 400-120-84-classes (61,706 parameters, 416,520 MACs).

``variant="caffe"`` is the larger "LeNet-5" of Caffe's MNIST example (examples/mnist/lenet.prototxt),
the network Han et al. prune and compress in "Learning both weights and connections" (2015) and
"Deep Compression" (2016, Table 1: 431K weights, 39x): conv 20@5x5 -> pool -> conv 50@5x5 -> pool ->
fc 800-500 -> ReLU -> fc 500-classes, no ReLU after the convolutions (431,080 parameters on 28x28).
"""
from __future__ import annotations

from typing import Literal

from torch import nn

from ..errors import EffdnnError
from .layers import conv_out


class LeNet5(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: tuple[int, int] = (28, 28),
                 variant: Literal["classic", "caffe"] = "classic") -> None:
        super().__init__()
        if variant not in ("classic", "caffe"):
            raise EffdnnError(f"lenet5: variant must be classic or caffe, got {variant!r}")
        caffe = variant == "caffe"
        s = min(input_size)
        pad1 = 0 if s >= (28 if caffe else 32) else 2
        s1 = conv_out(s, 5, padding=pad1) // 2
        pad2 = 0 if s1 >= 10 else 2
        h = conv_out(conv_out(input_size[0], 5, padding=pad1) // 2, 5, padding=pad2) // 2
        w = conv_out(conv_out(input_size[1], 5, padding=pad1) // 2, 5, padding=pad2) // 2
        if caffe:
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, 20, 5, padding=pad1), nn.MaxPool2d(2),
                nn.Conv2d(20, 50, 5, padding=pad2), nn.MaxPool2d(2),
            )
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(50 * h * w, 500), nn.ReLU(), nn.Linear(500, num_classes))
            return
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=pad1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * h * w, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):  # (B, C, H, W) -> (B, classes)
        return self.classifier(self.features(x))


def lenet5(in_channels: int, num_classes: int, input_size: tuple[int, int],
           variant: Literal["classic", "caffe"] = "classic") -> LeNet5:
    return LeNet5(in_channels, num_classes, input_size, variant)
