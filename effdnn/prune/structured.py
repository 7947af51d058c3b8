"""Structured pruning: remove whole channels and return a smaller dense model.

    prune: {method: channel, saliency: l1 | group_l1 | bn_gamma | taylor | magnitude | obd, sparsity: 0.5, round_to: 1,
            layer_sparsity: {"features.0": 0.5}, bn_recalibration: 16}

The model is traced once (torch.fx) to find *channel groups*: tensors whose channel dimension must be
cut together. A convolution / linear layer starts a group (its output channels); BatchNorm and
element-wise ops (ReLU, pooling, dropout, FATReLU) carry it on; an addition (a residual join such as
ResNet's ``Add``) merges the groups of its operands, so a block's output, its shortcut and the next
blocks lose the same channels; a flatten maps each channel to its H*W columns of the next linear layer.
A group that reaches the model output, the model input, or an op this analysis does not know is
kept whole (and listed in the report with the reason). Each prunable group loses the ``sparsity``
fraction (or its ``layer_sparsity`` entry's) of its channels with the lowest saliency (summed over
the group's producers; ``group_l1`` scores the whole group: producers, BatchNorms and consumers);
surgery.py then slices producers, BatchNorms and consumers. ``bn_recalibration: n`` then re-estimates
every BatchNorm's running statistics on n calibration batches (EagleEye's adaptive BN, Li et al.
2020): the statistics stored were measured on the unpruned network, whose next layers summed more
channels.
"""
from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import EffdnnError
from ..transform import TransformContext
from ..registry import PRUNE, StrictModel
from ..utils.batches import batch_input, model_device
from ..utils.batchnorm import BATCH_NORMS, recalibrate_batchnorm
from .masks import channel_keep
from .saliency import channel_saliency, group_l1
from .select import check_ratio_patterns, layer_ratio, select_layers
from .surgery import keep_inputs, keep_norm, keep_outputs

_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh,
                 nn.Hardswish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
                 nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.dropout,
                   F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.hardtanh}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone"}
_ADDS = {operator.add, operator.iadd, torch.add, operator.sub, torch.sub, operator.mul, torch.mul}


def is_channelwise(mod: nn.Module) -> bool:
    """Modules that act on each channel alone with no per-channel tensor (structured pruning passes them)."""
    return isinstance(mod, _PASS_MODULES) or bool(getattr(mod, "effdnn_channelwise", False))


@dataclass
class ChannelGroup:
    size: int
    producers: list[str] = field(default_factory=list)
    norms: list[tuple[str, str]] = field(default_factory=list)  # (norm module, the producer it follows or "")
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (module, columns per channel)
    blocked: list[str] = field(default_factory=list)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_channelwise(m) or super().is_leaf_module(m, qualname)


class _Groups:
    """Union-find over channel groups."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.groups: list[ChannelGroup] = []

    def new(self, size: int, blocked: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.groups.append(ChannelGroup(size, blocked=[blocked] if blocked else []))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def get(self, i: int) -> ChannelGroup:
        return self.groups[self.find(i)]

    def union(self, a: int, b: int, why: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        ga, gb = self.groups[ra], self.groups[rb]
        if ga.size != gb.size:
            ga.blocked.append(f"{why}: joins {ga.size} and {gb.size} channels")
        ga.producers += gb.producers
        ga.norms += gb.norms
        ga.consumers += gb.consumers
        ga.blocked += gb.blocked
        self.parent[rb] = ra

    def roots(self) -> list[ChannelGroup]:
        return [self.groups[i] for i in sorted({self.find(i) for i in range(len(self.parent))})]


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """The channel groups of ``model`` (traced with torch.fx on ``example_input``)."""
    try:
        graph = _Tracer().trace(model)
    except Exception as e:
        raise EffdnnError(f"structured pruning: cannot trace the model with torch.fx ({type(e).__name__}: {e})") from None
    gm = fx.GraphModule(model, graph)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    finally:
        model.train(was)
    mods = dict(model.named_modules())
    uf = _Groups()
    info: dict[fx.Node, tuple[int, int] | None] = {}  # node -> (group, columns per channel) for dim 1

    def shape(n: Any) -> tuple[int, ...] | None:
        meta = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def block_inputs(node: fx.Node, why: str) -> None:
        for a in node.all_input_nodes:
            if info.get(a) is not None:
                uf.get(info[a][0]).blocked.append(why)

    def fresh(node: fx.Node, why: str) -> None:
        s = shape(node)
        info[node] = (uf.new(s[1], why), 1) if s is not None and len(s) >= 2 else None

    for node in gm.graph.nodes:
        first = info.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        if node.op == "placeholder":
            fresh(node, "model input")
        elif node.op == "get_attr":
            fresh(node, f"tensor attribute {node.target}")
        elif node.op == "output":
            block_inputs(node, "model output")
        elif node.op == "call_module":
            mod = mods[node.target]
            name = str(node.target)
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and mod.groups == 1 and first is not None and first[1] == 1:
                uf.get(first[0]).consumers.append((name, 1))
                info[node] = (uf.new(mod.out_channels), 1)
                uf.get(info[node][0]).producers.append(name)
            elif isinstance(mod, nn.Linear) and first is not None and len(shape(node.args[0]) or ()) == 2:
                uf.get(first[0]).consumers.append((name, first[1]))
                info[node] = (uf.new(mod.out_features), 1)
                uf.get(info[node][0]).producers.append(name)
            elif isinstance(mod, BATCH_NORMS) and first is not None and first[1] == 1:
                prev = node.args[0]
                after = str(prev.target) if prev.op == "call_module" and str(prev.target) in uf.get(first[0]).producers else ""
                uf.get(first[0]).norms.append((name, after))
                info[node] = first
            elif is_channelwise(mod) and first is not None:
                info[node] = first
            elif isinstance(mod, nn.Flatten) and first is not None and mod.start_dim == 1:
                s = shape(node.args[0])
                spatial = 1
                for d in (s or ())[2:]:
                    spatial *= d
                info[node] = (first[0], first[1] * spatial)
            else:
                block_inputs(node, f"{type(mod).__name__} {name}")
                fresh(node, f"output of {type(mod).__name__} {name}")
        elif node.op in ("call_function", "call_method"):
            fn = node.target
            if (node.op == "call_function" and fn in _PASS_FUNCTIONS) or (node.op == "call_method" and fn in _PASS_METHODS):
                info[node] = first
            elif node.op == "call_function" and fn in _ADDS:
                tens = [a for a in node.args if isinstance(a, fx.Node)]
                shapes = {shape(a) for a in tens}
                if len(shapes) == 1 and all(info.get(a) is not None and info[a][1] == 1 for a in tens):
                    for a in tens[1:]:
                        uf.union(info[tens[0]][0], info[a][0], f"{fn.__name__} at {node.name}")
                    info[node] = info[tens[0]]
                else:
                    block_inputs(node, f"broadcasting {getattr(fn, '__name__', fn)} at {node.name}")
                    fresh(node, f"output of {node.name}")
            elif (node.op == "call_function" and fn is torch.flatten) or (node.op == "call_method" and fn == "flatten"):
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                s = shape(node.args[0])
                if first is not None and start == 1 and s is not None:
                    spatial = 1
                    for d in s[2:]:
                        spatial *= d
                    info[node] = (first[0], first[1] * spatial)
                else:
                    block_inputs(node, f"flatten at {node.name}")
                    fresh(node, f"output of {node.name}")
            elif node.op == "call_method" and fn in ("size", "dim"):
                info[node] = None
            else:
                block_inputs(node, f"{getattr(fn, '__name__', fn)} at {node.name}")
                fresh(node, f"output of {node.name}")
    return [g for g in uf.roots() if g.producers]


class StructuredConfig(StrictModel):
    """Channel (filter) pruning with physical removal."""

    method: Literal["channel"] = "channel"
    saliency: Literal["l1", "group_l1", "bn_gamma", "taylor", "magnitude", "taylor_weight", "obd"] = "l1"
    sparsity: float = Field(..., ge=0, lt=1, description="fraction of each group's channels removed")
    layer_sparsity: dict[str, float] = Field(default_factory=dict, description="pattern -> fraction of channels removed "
                                             "from the groups it matches a producer of (first match wins; the others "
                                             "get 'sparsity')")
    round_to: int = Field(1, ge=1, description="kept channels rounded up to a multiple of this")
    layers: list[str] | None = Field(None, description="patterns: a group is pruned only if all its producers match")
    exclude: list[str] = Field(default_factory=list)
    batches: int = Field(8, ge=1)
    hessian: Literal["fisher", "hutchinson"] = "fisher"
    samples: int = Field(8, ge=1)
    bn_recalibration: int = Field(0, ge=0, description="after the surgery, re-estimate every BatchNorm's running "
                                  "statistics on this many calibration batches (EagleEye's adaptive BN); 0: off")

    @field_validator("layer_sparsity")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        for pat, r in v.items():
            if not 0.0 <= r < 1.0:
                raise ValueError(f"[{pat!r}]: must be in [0, 1), got {r}")
        return v


def prune_channels(model: nn.Module, example_input: torch.Tensor, config: StructuredConfig, data: Any = None) -> dict[str, Any]:
    """Remove channels in place; returns what was done (groups, channels before / after, skipped groups)."""
    groups = channel_groups(model, example_input)
    selected = set(select_layers(model, config.layers, config.exclude, "prune"))
    mods = dict(model.named_modules())
    todo = [g for g in groups if not g.blocked and all(p in selected for p in g.producers)]
    skipped = [{"producers": g.producers, "channels": g.size, "why": g.blocked[0] if g.blocked else "not selected"}
               for g in groups if g not in todo]
    producers = {p: mods[p] for g in todo for p in g.producers}
    norms_after = {p: None for p in producers}
    for g in todo:
        for norm, after in g.norms:
            if after:
                norms_after[after] = mods[norm]
    per_group = config.saliency == "group_l1"
    scores = {} if per_group or not producers else channel_saliency(
        config.saliency, model, producers, norms_after, data, batches=config.batches, hessian=config.hessian,
        samples=config.samples)
    check_ratio_patterns(config.layer_sparsity, producers)
    done = []
    for g in todo:
        if per_group:
            score = group_l1([mods[p] for p in g.producers], [mods[n] for n, _ in g.norms],
                             [(mods[c], spatial) for c, spatial in g.consumers])
        else:
            score = sum(scores[p].float().cpu() for p in g.producers)
        keep = channel_keep(score, layer_ratio(config.layer_sparsity, g.producers, config.sparsity), config.round_to)
        done.append({"producers": g.producers, "channels": g.size, "kept": int(len(keep))})
        if len(keep) == g.size:
            continue
        for p in g.producers:
            keep_outputs(mods[p], keep)
        for norm, _ in g.norms:
            keep_norm(mods[norm], keep)
        for c, spatial in g.consumers:
            keep_inputs(mods[c], keep, spatial)
    return {"groups": done, "kept_whole": skipped}


def structured_transform(model: nn.Module, config: StructuredConfig, ctx: TransformContext) -> nn.Module:
    """Remove whole channels by a channel saliency; the result is a smaller dense model."""
    calib = None
    if ctx.has_data():
        example = ctx.example_input(8)
    else:
        calib = list(itertools.islice(iter(ctx.calib_loader(config.batches)), config.batches))
        example = batch_input(calib[0])[:8].to(model_device(model))
    if config.saliency not in ("l1", "group_l1", "bn_gamma") and calib is None:
        calib = list(itertools.islice(iter(ctx.calib_loader(config.batches)), config.batches))
    info = prune_channels(model, example, config, calib)
    if config.bn_recalibration:
        info["bn_recalibration_batches"] = recalibrate_batchnorm(model, ctx.calib_loader(config.bn_recalibration),
                                                                 config.bn_recalibration)
    ctx.extra["structured"] = info
    return model


PRUNE.register("channel", StructuredConfig, summary="structured pruning: remove channels (filters) physically")(structured_transform)
