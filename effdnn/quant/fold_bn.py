"""Fold BatchNorm into the preceding convolution / linear layer (Jacob et al. 2018, section 3.2;
Krishnamoorthi 2018, section 2.5): with sigma = sqrt(running_var + eps),

    w' = w * gamma / sigma   (per output channel)        b' = (b - mu) * gamma / sigma + beta

so the folded layer computes BN(conv(x)) exactly (in eval mode) and its weight is what gets quantized.

Pairs are found on the torch.fx graph (a Conv / Linear whose only user is a BatchNorm); a model that
fx cannot trace (e.g. Hugging Face models) falls back to adjacent pairs inside ``nn.Sequential``,
which are correct by construction. The folded BatchNorm becomes ``nn.Identity``.
"""
from __future__ import annotations

import torch
from torch import nn

BN = (nn.BatchNorm1d, nn.BatchNorm2d)
FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


@torch.no_grad()
def fold_pair(layer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` (eval statistics) into ``layer`` in place."""
    w = layer.weight  # (out, ...)
    sigma = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(sigma)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(sigma)
    factor = gamma / sigma  # (out,)
    w.mul_(factor.reshape(-1, *([1] * (w.dim() - 1))))
    b = layer.bias if layer.bias is not None else torch.zeros_like(sigma)
    new_bias = (b - bn.running_mean) * factor + beta
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]] | None:
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:
        return None
    mods = dict(model.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(mods.get(node.target), BN):
            src = node.args[0]
            if (isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(mods.get(src.target), FOLDABLE)
                    and len(src.users) == 1):
                pairs.append((src.target, node.target))
    return pairs


def _pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Sequential):
            kids = list(m.named_children())
            for (n1, a), (n2, b) in zip(kids, kids[1:]):
                if isinstance(a, FOLDABLE) and isinstance(b, BN):
                    pairs.append((f"{name}.{n1}" if name else n1, f"{name}.{n2}" if name else n2))
    return pairs


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, BatchNorm) name pairs where the BatchNorm reads only the layer's output: from the torch.fx
    graph, or from consecutive Sequential children when the model cannot be traced."""
    pairs = _pairs_fx(model)
    return _pairs_sequential(model) if pairs is None else pairs


def fold_batchnorm(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every (conv / linear, BatchNorm) pair of ``model`` in place; returns the folded pairs."""
    pairs = conv_bn_pairs(model)
    for layer_name, bn_name in pairs:
        bn = model.get_submodule(bn_name)
        if not bn.track_running_stats or bn.running_var is None:
            continue
        fold_pair(model.get_submodule(layer_name), bn)
        model.set_submodule(bn_name, nn.Identity())
    return pairs
