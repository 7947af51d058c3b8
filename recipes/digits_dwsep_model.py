"""A small depthwise-separable net (MobileNet-v1 style blocks) for 8 x 8 inputs: a user's own model,
built outside effdnn's zoo, to measure the depthwise precision policy (recipes/digits_depthwise.yaml)."""
from torch import nn


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    """3x3 depthwise -> BN -> ReLU -> 1x1 pointwise -> BN -> ReLU (Howard et al. 2017, Figure 3)."""
    return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def net(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        *_block(16, 32, 1), *_block(32, 64, 2), *_block(64, 64, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
