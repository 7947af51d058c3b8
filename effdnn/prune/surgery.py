"""Physical removal of channels: slice the tensors of producers, their BatchNorms and consumers.

Each function edits one module in place, giving it new, smaller parameters (and keeping its name,
so the model stays an ordinary dense ``nn.Module`` that exports to ONNX as before)."""
from __future__ import annotations

import torch
from torch import nn


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=like.requires_grad)


def _slice_mask(mod: nn.Module, dim: int, idx: torch.Tensor) -> None:
    mask = getattr(mod, "weight_mask", None)
    if isinstance(mask, torch.Tensor) and "weight_mask" in mod._buffers:
        mod._buffers["weight_mask"] = mask.index_select(dim, idx).contiguous()


@torch.no_grad()
def keep_outputs(mod: nn.Module, idx: torch.Tensor) -> None:
    """Keep output channels ``idx`` of a Conv / Linear (weight dim 0, bias)."""
    idx = idx.to(mod.weight.device)
    mod.weight = _param(mod.weight.index_select(0, idx), mod.weight)
    if getattr(mod, "bias", None) is not None:
        mod.bias = _param(mod.bias.index_select(0, idx), mod.bias)
    _slice_mask(mod, 0, idx)
    if isinstance(mod, nn.Linear):
        mod.out_features = len(idx)
    else:
        mod.out_channels = len(idx)


@torch.no_grad()
def keep_norm(mod: nn.Module, idx: torch.Tensor) -> None:
    """Keep channels ``idx`` of a BatchNorm (affine parameters and running statistics)."""
    idx = idx.to(mod.running_mean.device if mod.running_mean is not None else idx.device)
    if mod.weight is not None:
        mod.weight = _param(mod.weight.index_select(0, idx), mod.weight)
        mod.bias = _param(mod.bias.index_select(0, idx), mod.bias)
    if mod.running_mean is not None:
        mod.running_mean = mod.running_mean.index_select(0, idx).clone()
        mod.running_var = mod.running_var.index_select(0, idx).clone()
    mod.num_features = len(idx)


@torch.no_grad()
def keep_inputs(mod: nn.Module, idx: torch.Tensor, spatial: int = 1) -> None:
    """Keep input channels ``idx`` of a Conv (weight dim 1) or Linear (columns; after a flatten each
    channel owns ``spatial`` consecutive columns)."""
    idx = idx.to(mod.weight.device)
    if spatial > 1:
        idx = (idx[:, None] * spatial + torch.arange(spatial, device=idx.device)[None, :]).reshape(-1)
    mod.weight = _param(mod.weight.index_select(1, idx), mod.weight)
    _slice_mask(mod, 1, idx)
    if isinstance(mod, nn.Linear):
        mod.in_features = len(idx)
    else:
        mod.in_channels = len(idx)
