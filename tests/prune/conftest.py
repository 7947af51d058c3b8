import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """conv-bn-relu-conv-bn-relu-pool-flatten-linear: enough structure for every pruning path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(12)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(12 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))))))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    m = TinyNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


@pytest.fixture
def tiny_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 1, 8, 8, generator=g)
    y = torch.randint(0, 5, (48,), generator=g)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]
