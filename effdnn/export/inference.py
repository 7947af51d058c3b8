"""The inference form of a model: the same function, with ops that run faster on the CPU.

``optimize_for_inference(model)`` returns a copy in which

* every ``nn.MaxPool2d`` whose stride equals its kernel (no padding, no dilation, floor mode; LeNet's
  2x2 / 2 pooling) becomes :class:`StridedMaxPool2d`: the elementwise maximum of the k_h + k_w - 2
  strided views of its input, first along the width, then along the height. torch's CPU max-pool kernel
  branches on the data and computes argmax indices; on LeNet-5's maps it takes 5-7x longer than
  these vectorised maxima, and was 43-44% of the network's time (BENCHMARKS.md, structured latency);
* a ``nn.ReLU`` directly before such a pooling in an ``nn.Sequential`` moves after it:
  max(relu(a), relu(b)) = relu(max(a, b)) because ReLU is monotone, so the ReLU runs on k_h * k_w
  times fewer values.

Outputs are identical (``torch.equal``) for finite inputs. The rewrite is for inference: the maxima's
gradient splits ties where max-pool's picks one input. Layers with hooks are left as they are, so
activation statistics keep their hooks. ``effdnn.prune`` with ``method: channel`` returns a model this
applies to, and ``benchmarks/structured_latency.py --inference-form`` times both forms.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def strided_max_pool2d(x: torch.Tensor, kernel: tuple[int, int], relu: bool = False) -> torch.Tensor:
    """Max pooling with stride == kernel, no padding, floor mode, as elementwise maxima of strided views."""
    kh, kw = kernel
    ho, wo = x.shape[-2] // kh, x.shape[-1] // kw
    x = x[..., : ho * kh, : wo * kw]
    y = x[..., 0::kw]
    for j in range(1, kw):
        y = torch.maximum(y, x[..., j::kw])
    z = y[..., 0::kh, :]
    for i in range(1, kh):
        z = torch.maximum(z, y[..., i::kh, :])
    if relu:
        z = z.clamp_min_(0) if kh * kw > 1 else z.clamp_min(0)  # a 1x1 pool returns a view of x
    return z


class StridedMaxPool2d(nn.Module):
    """``nn.MaxPool2d(kernel)`` (stride = kernel) as strided maxima, optionally followed by a ReLU."""

    def __init__(self, kernel: tuple[int, int], relu: bool = False) -> None:
        super().__init__()
        self.kernel, self.relu = kernel, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return strided_max_pool2d(x, self.kernel, self.relu)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, relu={self.relu}"


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _strided_kernel(m: nn.Module) -> tuple[int, int] | None:
    """The kernel of a max-pool this rewrite covers exactly, else None."""
    if type(m) is not nn.MaxPool2d or m.return_indices or m.ceil_mode or _has_hooks(m):
        return None
    k, s = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size)
    if k != s or _pair(m.padding) != (0, 0) or _pair(m.dilation) != (1, 1):
        return None
    return k


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with strided max-pools (and the ReLUs before them) rewritten; see the module doc."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        names = list(parent._modules)
        for i, name in enumerate(names):
            kernel = _strided_kernel(parent._modules[name])
            if kernel is None:
                continue
            prev = parent._modules[names[i - 1]] if i > 0 else None
            fuse = (isinstance(parent, nn.Sequential) and type(prev) is nn.ReLU and not _has_hooks(prev))
            if fuse:
                parent._modules[names[i - 1]] = nn.Identity()
            parent._modules[name] = StridedMaxPool2d(kernel, relu=fuse)
    return model
