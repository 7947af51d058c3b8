"""Fold what follows a packed binary convolution into its kernel epilogue, as BNN inference engines do
(FINN, Umuroglu et al. 2017, section 4.2.2; Larq Compute Engine, Bannink et al. 2021): a BatchNorm and a
ReLU that read only the convolution's output become a per-channel affine map and a max on the kernel's
float result,

    y = (V + 2 corr - 2 popcount) alpha_n K + b_n,    z = max(y g_n + h_n, 0),
    g_n = gamma_n / sqrt(var_n + eps),  h_n = beta_n - mu_n g_n                 (eval-mode BatchNorm)

so no float tensor is written and read again between them. The fold is exact in real arithmetic for any
sign of gamma, alpha or K (it is the same affine map, applied in the same order); in float32 it differs
from the separate modules by rounding only (one fused multiply-add instead of torch's BatchNorm).

Chains are found on the torch.fx graph (a packed layer whose only user is a BatchNorm2d / ReLU module,
each called once); a model fx cannot trace falls back to consecutive children of an ``nn.Sequential``.
The folded modules become ``nn.Identity``.
"""
from __future__ import annotations

import itertools
import logging
import operator
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class _PackedLeaves(torch.fx.Tracer):
    def __init__(self, leaf: type) -> None:
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaf) or super().is_leaf_module(m, qualname)


_TRACE_ERRORS = (torch.fx.proxy.TraceError, TypeError, ValueError, RuntimeError, AttributeError, KeyError,
                 IndexError, NotImplementedError)


def _trace(model: nn.Module, leaf: type) -> torch.fx.Graph | None:
    """The fx graph of ``model`` with ``leaf`` modules kept whole; None when fx cannot trace it."""
    try:
        return _PackedLeaves(leaf).trace(model)
    except _TRACE_ERRORS:
        return None


def _foldable(m: nn.Module | None, bn_seen: bool) -> bool:
    if isinstance(m, nn.BatchNorm2d):
        return not bn_seen and m.track_running_stats and m.running_var is not None
    return isinstance(m, nn.ReLU)


def _chains_fx(model: nn.Module, leaf: type) -> list[list[str]] | None:
    graph = _trace(model, leaf)
    if graph is None:
        return None
    mods = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    chains = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), leaf) or calls[node.target] != 1:
            continue
        chain, cur = [node.target], node
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            m = mods.get(nxt.target) if nxt.op == "call_module" else None
            bn_seen = any(isinstance(mods[c], nn.BatchNorm2d) for c in chain[1:])
            relu_seen = any(isinstance(mods[c], nn.ReLU) for c in chain[1:])
            if relu_seen or not _foldable(m, bn_seen) or calls[nxt.target] != 1 or nxt.args[0] is not cur:
                break
            chain.append(nxt.target)
            cur = nxt
        chains.append(chain)
    return chains


def _chains_sequential(model: nn.Module, leaf: type) -> list[list[str]]:
    chains = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.named_children())
        for i, (n0, m0) in enumerate(kids):
            if not isinstance(m0, leaf):
                continue
            chain = [n0]
            for n1, m1 in kids[i + 1:]:
                bn_seen = any(isinstance(seq.get_submodule(c), nn.BatchNorm2d) for c in chain[1:])
                if isinstance(seq.get_submodule(chain[-1]), nn.ReLU) or not _foldable(m1, bn_seen):
                    break
                chain.append(n1)
            chains.append([f"{name}.{c}" if name else c for c in chain])
    return chains


def fuse_epilogues(model: nn.Module, leaf: type) -> list[list[str]]:
    """Fold each [BatchNorm2d] [ReLU] that follows a ``leaf`` module (a PackedBinaryLayer that can take an
    epilogue: ``accepts_epilogue()`` and ``set_epilogue(bn, relu)``) into it, in place; returns the
    chains (layer name first) that were folded. A BatchNorm whose input has other users stays in float
    (one log line naming it)."""
    chains = _chains_fx(model, leaf)
    chains = _chains_sequential(model, leaf) if chains is None else chains
    folded = []
    for chain in chains:
        layer = model.get_submodule(chain[0])
        if len(chain) == 1 or not layer.accepts_epilogue():
            continue
        mods = [model.get_submodule(c) for c in chain[1:]]
        bn = next((m for m in mods if isinstance(m, nn.BatchNorm2d)), None)
        layer.set_epilogue(bn, any(isinstance(m, nn.ReLU) for m in mods))
        for c in chain[1:]:
            model.set_submodule(c, nn.Identity())
        folded.append(chain)
    for name, m in model.named_modules():
        if isinstance(m, leaf) and m.accepts_epilogue() and not any(c[0] == name for c in folded):
            log.info("packed layer %s: what follows it is not folded (its output has other users or no "
                     "BatchNorm / ReLU module reads it); it runs in float", name)
    return folded


def fold_input_relus(model: nn.Module, leaf: type) -> list[str]:
    """A ReLU module whose output only a binary convolution reads (e.g. after a real-valued first layer)
    is applied inside that layer's input packing, sign(BN(max(x, 0))): ``layer.set_input_relu()``, the
    ReLU becomes ``nn.Identity``. From the fx graph, else consecutive ``nn.Sequential`` children; returns
    the folded ReLUs' names."""
    graph = _trace(model, leaf)
    pairs = []
    if graph is not None:
        mods = dict(model.named_modules())
        calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
        for node in graph.nodes:
            if node.op != "call_module" or not isinstance(mods.get(node.target), nn.ReLU) or calls[node.target] != 1:
                continue
            user = next(iter(node.users)) if len(node.users) == 1 else None
            if user is not None and user.op == "call_module" and isinstance(mods.get(user.target), leaf) \
                    and user.args[0] is node and node not in user.args[1:] and not user.kwargs:
                pairs.append((node.target, user.target))
    else:
        for name, seq in model.named_modules():
            if isinstance(seq, nn.Sequential):
                kids = list(seq.named_children())
                pairs += [(f"{name}.{a}" if name else a, f"{name}.{b}" if name else b)
                          for (a, ma), (b, mb) in itertools.pairwise(kids) if isinstance(ma, nn.ReLU) and isinstance(mb, leaf)]
    folded = []
    for relu, layer in pairs:
        m = model.get_submodule(layer)
        if m.accepts_epilogue() and not m.pre_relu:
            m.set_input_relu()
            model.set_submodule(relu, nn.Identity())
            folded.append(relu)
    return folded


_ADDS = (operator.add, torch.add)
_RELUS = (F.relu, torch.relu)


def _is_add(node: torch.fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADDS and len(node.args) == 2 and not node.kwargs) or \
        (node.op == "call_method" and node.target == "add" and len(node.args) == 2 and not node.kwargs)


def _is_relu(node: torch.fx.Node, mods: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(mods.get(node.target), nn.ReLU)
    return node.op == "call_function" and node.target in _RELUS and len(node.args) == 1 and not node.kwargs.get("inplace")


def _ancestors(node: torch.fx.Node) -> set[torch.fx.Node]:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


def fuse_residuals(model: nn.Module, leaf: type) -> nn.Module:
    """Fold a residual join into the packed layer whose (folded) output it reads: ``layer -> add(., r) ->
    [ReLU]`` becomes ``layer(x, r)`` with the add and ReLU in the kernel epilogue (He et al. 2016's
    out = ReLU(BN(conv(x)) + shortcut)). The nodes computing r move before the layer when they do not
    depend on it. Returns a ``torch.fx.GraphModule`` when a join was folded, else ``model`` unchanged
    (also when fx cannot trace it)."""
    graph = _trace(model, leaf)
    if graph is None:
        return model
    gm = torch.fx.GraphModule(model, graph)
    mods = dict(gm.named_modules())
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    folded = 0
    for node in list(gm.graph.nodes):
        m = mods.get(node.target) if node.op == "call_module" else None
        if not isinstance(m, leaf) or not m.accepts_epilogue() or len(node.args) != 1 or node.kwargs:
            continue
        end = node
        while len(end.users) == 1 and isinstance(mods.get(next(iter(end.users)).target), nn.Identity):
            end = next(iter(end.users))
        add = next(iter(end.users)) if len(end.users) == 1 else None
        if add is None or not _is_add(add) or list(add.args).count(end) != 1:
            continue
        r = next(a for a in add.args if a is not end)
        if not isinstance(r, torch.fx.Node) or node in (up := _ancestors(r)):
            continue
        relu = next(iter(add.users)) if len(add.users) == 1 else None
        relu = relu if relu is not None and _is_relu(relu, mods) else None
        for n in sorted((n for n in up if order[n] > order[node]), key=order.__getitem__):
            node.prepend(n)  # the shortcut's nodes, in their order, before the layer
        node.args = (node.args[0], r)
        last = relu or add
        last.replace_all_uses_with(end)
        gm.graph.erase_node(last)
        if relu is not None:
            gm.graph.erase_node(add)
        m.set_residual(relu is not None)
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        folded += 1
    if not folded:
        return model
    gm.graph.lint()
    gm.recompile()
    return gm


def link_packed_inputs(model: nn.Module, leaf: type) -> list[tuple[str, str]]:
    """Where a binary convolution is the only reader of another's output (through folded, now Identity,
    modules), the first writes the second's input as packed bits, sign(BN'(y)), and its K map, not a float
    tensor (Larq Compute Engine's bitpacked activations; daBNN): ``producer.set_next(consumer)``.
    Returns the (producer, consumer) names (none when fx cannot trace the model)."""
    graph = _trace(model, leaf)
    if graph is None:
        return []
    mods = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    links = []
    for node in graph.nodes:
        m = mods.get(node.target) if node.op == "call_module" else None
        if not isinstance(m, leaf) or not m.accepts_epilogue() or m.residual_relu is not None or calls[node.target] != 1:
            continue
        end = node
        while len(end.users) == 1 and isinstance(mods.get(next(iter(end.users)).target), nn.Identity):
            end = next(iter(end.users))
        user = next(iter(end.users)) if len(end.users) == 1 else None
        c = mods.get(user.target) if user is not None and user.op == "call_module" else None
        if isinstance(c, leaf) and c.accepts_epilogue() and not c.pre_relu and calls[user.target] == 1 \
                and user.args[0] is end and end not in user.args[1:] and not user.kwargs:
            m.set_next(c)
            links.append((node.target, user.target))
    return links


__all__ = ["fold_input_relus", "fuse_epilogues", "fuse_residuals", "link_packed_inputs"]
