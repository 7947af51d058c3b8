"""Physical removal of channels: slice the tensors of producers, their BatchNorms and consumers.

Each function edits one module in place, giving it new, smaller parameters (and keeping its name,
so the model stays an ordinary dense ``nn.Module`` that exports to ONNX as before)."""
from __future__ import annotations

import numpy as np
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


@torch.no_grad()
def remove_units(model: nn.Module, slot_nodes: dict, comp_removed: np.ndarray,
                 narrow: set[str] = frozenset()) -> list[str]:
    """Slice every parameter / buffer dim (slot) down to the nodes whose unit survives, then fix the
    size attributes of the modules touched (:func:`fix_attributes`; ``narrow``: grouped convolutions
    that keep their group count). Returns the modules changed."""
    mods = dict(model.named_modules())
    changed = []
    for mname, slots in slot_nodes.items():
        mod = mods[mname] if mname else model
        olds = {}
        for s, comps in slots:
            gone = comp_removed[comps]
            if not gone.any():
                continue
            t = getattr(mod, s.param)
            olds.setdefault(s.param, tuple(t.shape))
            idx = torch.as_tensor((~gone).nonzero()[0], dtype=torch.long, device=t.device)
            new = t.index_select(s.dim, idx)  # a new contiguous tensor
            if isinstance(t, nn.Parameter):
                mod._parameters[s.param] = nn.Parameter(new, requires_grad=t.requires_grad)
            else:
                mod._buffers[s.param] = new
        if olds:
            fix_attributes(mod, olds, mname in narrow)
            changed.append(mname)
    return changed


def fix_attributes(mod: nn.Module, olds: dict[str, tuple[int, ...]], keep_groups: bool = False) -> None:
    """The size attributes of a sliced module (in / out channels, groups, features, heads ...)."""
    w = getattr(mod, "weight", None)
    if isinstance(mod, nn.modules.conv._ConvNd):
        old_out = olds.get("weight", tuple(w.shape))[1 if mod.transposed else 0] * (mod.groups if mod.transposed else 1)
        if mod.groups > 1 and not mod.transposed and not keep_groups:
            mod.groups = mod.groups * w.shape[0] // old_out
        if mod.transposed:
            mod.in_channels, mod.out_channels = w.shape[0], w.shape[1] * mod.groups
        else:
            mod.out_channels, mod.in_channels = w.shape[0], w.shape[1] * mod.groups
    elif isinstance(mod, nn.Linear):
        mod.out_features, mod.in_features = w.shape
    elif isinstance(mod, nn.modules.batchnorm._NormBase):
        ref = w if w is not None else mod.running_mean
        mod.num_features = ref.shape[0]
    elif isinstance(mod, nn.LayerNorm) and w is not None:
        mod.normalized_shape = tuple(w.shape)
    elif isinstance(mod, nn.GroupNorm) and w is not None:
        old = olds.get("weight", (mod.num_channels,))[0]
        if mod.num_groups == old:
            mod.num_groups = w.shape[0]
        elif mod.num_groups > 1:
            mod.num_groups = mod.num_groups * w.shape[0] // old
        mod.num_channels = w.shape[0]
    elif isinstance(mod, nn.Embedding):
        mod.embedding_dim = w.shape[1]
    elif isinstance(mod, nn.MultiheadAttention):
        _fix_mha(mod)


def _fix_mha(mod: nn.MultiheadAttention) -> None:
    """nn.MultiheadAttention after whole heads (num_heads already lowered) or its embed dim went."""
    w = mod.in_proj_weight
    if w is not None:
        mod.head_dim = w.shape[0] // 3 // mod.num_heads
        mod.embed_dim = mod.kdim = mod.vdim = w.shape[1]
    mod.out_proj.in_features = mod.out_proj.weight.shape[1]
    mod.out_proj.out_features = mod.out_proj.weight.shape[0]
